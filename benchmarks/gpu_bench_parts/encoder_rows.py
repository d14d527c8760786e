"""The text encoder and VAE rows: umT5-XXL encoding (resident, and as the full tier runs it), Wan VAE encode of
one image and decode of a clip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from transformers import UMT5Config, UMT5EncoderModel

from pusa.runtime.memory import apply_memory_tier, module_bytes

from .results import Results
from .specs import Size, Spec
from .timing import free_memory, is_oom, measure, peak_gib, reset_peak


def text_part(spec: Spec, results: Results) -> None:
    config = UMT5Config(**spec.text_encoder)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, config.vocab_size, (1, spec.text_len), generator=generator).to(spec.device)
    mask = torch.ones_like(ids)
    built: dict[str, Any] = {}

    def encode() -> torch.Tensor:
        with torch.inference_mode():
            return built["model"](input_ids=ids, attention_mask=mask).last_hidden_state

    def resident() -> dict:
        torch.manual_seed(0)
        with torch.device(spec.device):
            built["model"] = UMT5EncoderModel._from_config(config, dtype=spec.dtype).eval()
        reset_peak(spec.device)
        timing = measure(encode, spec.device, spec.warmup, spec.repeats)
        return {
            "ms": timing["ms"],
            "tokens": spec.text_len,
            "peak_gib": peak_gib(spec.device),
            "weights_gib": module_bytes(built["model"]) / 2**30,
        }

    def full_tier() -> dict:
        built["model"].to("cpu")
        free_memory(spec.device)
        placement = apply_memory_tier({"text_encoder": built["model"]}, "full", spec.device)
        reset_peak(spec.device)
        timing = measure(encode, spec.device, spec.warmup, spec.repeats)
        return {
            "ms": timing["ms"],
            "tokens": spec.text_len,
            "peak_gib": peak_gib(spec.device),
            "placement": placement["text_encoder"],
        }

    if results.run("text", "umt5 encode (resident)", None, spec.device, resident)["status"] == "ok":
        results.run("text", "umt5 encode (full tier)", None, spec.device, full_tier)
    built.clear()


def vae_part(spec: Spec, decode_size: Size, results: Results) -> None:
    built: dict[str, Any] = {}

    def build() -> dict:
        torch.manual_seed(0)
        with torch.device(spec.device):
            built["vae"] = AutoencoderKLWan(**spec.vae).to(spec.vae_dtype).eval()
        return {"weights_gib": module_bytes(built["vae"]) / 2**30}

    def run_tiled_if_needed(fn: Callable[[], Any]) -> dict:
        """Untiled first; on OOM once more with tiling."""
        try:
            reset_peak(spec.device)
            timing = measure(fn, spec.device, spec.warmup, 1)
            tiled = False
        except Exception as error:
            if not is_oom(error):
                raise
            free_memory(spec.device)
            built["vae"].enable_tiling()
            reset_peak(spec.device)
            timing = measure(fn, spec.device, spec.warmup, 1)
            tiled = True
        return {"ms": timing["ms"], "peak_gib": peak_gib(spec.device), "tiled": tiled}

    def encode() -> dict:
        generator = torch.Generator().manual_seed(4)
        image = torch.rand(1, 3, 1, *spec.image_size, generator=generator) * 2 - 1  # [B, 3, 1, H, W]
        image = image.to(spec.device, spec.vae_dtype)

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return built["vae"].encode(image).latent_dist.mode()

        return {**run_tiled_if_needed(call), "pixels": f"{spec.image_size[0]}x{spec.image_size[1]}x1"}

    def decode() -> dict:
        generator = torch.Generator().manual_seed(5)
        shape = (
            1,
            built["vae"].config.z_dim,
            decode_size.num_latent_frames,
            decode_size.height,
            decode_size.width,
        )
        latents = torch.randn(*shape, generator=generator).to(spec.device, spec.vae_dtype)

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return built["vae"].decode(latents).sample

        return {**run_tiled_if_needed(call), "latent_frames": decode_size.num_latent_frames}

    if results.run("vae", "wan vae (setup)", None, spec.device, build)["status"] == "ok":
        results.run("vae", "wan vae encode", None, spec.device, encode)
        results.run("vae", "wan vae decode", decode_size, spec.device, decode)
    built.clear()
