"""Sizes, model configs and the two modes (real Wan2.1-14B shapes on CUDA, tiny on the CPU) the GPU benchmark
runs, with its constants (peak FLOP/s, LoRA alpha, CFG, the step cache's skips).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pusa.weights.lora import PUSA_LORA_TARGETS
from pusa.weights.registry import (
    TINY_TEXT_ENCODER_CONFIG,
    TINY_TRANSFORMER_CONFIG,
    TINY_VAE_CONFIG,
    WAN_14B_TRANSFORMER_CONFIG,
)

PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
LORA_ALPHA = 1.4
CFG = 3.0
I2V_NOISE_MULTIPLIER = 0.2  # frame 0's timestep is this share of the others'
NUM_STEPS = 10
LORA_TARGETS = PUSA_LORA_TARGETS  # as in pusa_v1.pt
DIT_VARIANTS = ("ours-fused", "ours-adapter", "diffusers-stock")
PARTS = ("dit", "compile", "fp8", "tiers", "text", "vae", "speed", "attention")
DEFAULT_PARTS = ("dit", "tiers", "text", "vae")
# The step cache's skips in a 10-step run, for the end-to-end estimate: about what `pusa.caching` skips on
# pusa-tiny at its default threshold 0.2 (3.2 of 10 on average in benchmarks/cache_quality.py; its rule
# allows at most 5 at 10 steps: steps 0-1 warm up, step 9 always runs, at most 2 in a row).
# Random 14B weights cannot say how often real ones would skip, so this is an input of the estimate, not a
# measurement (--cache-skips).
CACHE_SKIPS = 3

WAN_14B = WAN_14B_TRANSFORMER_CONFIG
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)


@dataclass(frozen=True)
class Size:
    label: str
    num_latent_frames: int
    height: int  # latent
    width: int  # latent


@dataclass(frozen=True)
class Spec:
    """What a mode runs: model configs, sizes, device and precision. Only these differ between modes."""

    mode: str
    device: torch.device
    dtype: torch.dtype  # DiT and text encoder
    vae_dtype: torch.dtype  # the pipeline keeps the VAE in float32
    dit: dict
    sizes: dict[str, Size]
    text_len: int
    text_encoder: dict
    vae: dict
    image_size: tuple[int, int]  # pixels (H, W) of the image the VAE encodes
    lora_rank: int
    compile_backend: str
    warmup: int = 1
    repeats: int = 2
    cfg_repeats: int = 1


def real_spec(device: torch.device, repeats: int, compile_backend: str | None) -> Spec:
    return Spec(
        mode="real",
        device=device,
        dtype=torch.bfloat16,
        vae_dtype=torch.float32,
        dit=WAN_14B,
        sizes={"480p": Size("480x832x81", 21, 60, 104), "720p": Size("1280x720x81", 21, 90, 160)},
        text_len=512,
        text_encoder=UMT5_XXL,
        vae={},  # AutoencoderKLWan's defaults are Wan2.1's VAE
        image_size=(480, 832),
        lora_rank=512,
        compile_backend=compile_backend or "inductor",
        repeats=repeats,
    )


def tiny_spec(device: torch.device, repeats: int, compile_backend: str | None) -> Spec:
    return Spec(
        mode="tiny",
        device=device,
        dtype=torch.bfloat16,
        vae_dtype=torch.float32,
        dit=dict(TINY_TRANSFORMER_CONFIG),
        sizes={"480p": Size("tiny 3x8x12", 3, 8, 12), "720p": Size("tiny 3x12x16", 3, 12, 16)},
        text_len=16,
        text_encoder=dict(TINY_TEXT_ENCODER_CONFIG, dropout_rate=0.0),
        vae=dict(TINY_VAE_CONFIG),
        image_size=(64, 96),
        lora_rank=4,
        # inductor needs minutes of C++ compilation on a small CPU; "eager" still traces every block with
        # fullgraph=True, which is what can break
        compile_backend=compile_backend or ("inductor" if device.type == "cuda" else "eager"),
        repeats=repeats,
    )


def dit_tokens(spec: Spec, size: Size) -> int:
    p_t, p_h, p_w = spec.dit["patch_size"]
    return (size.num_latent_frames // p_t) * (size.height // p_h) * (size.width // p_w)
