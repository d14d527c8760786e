"""The DiT rows: ours fused, ours with an unfused adapter, stock diffusers, and ours compiled or with fp8
weights (--compile, --fp8), per size.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from pusa.model import PusaTransformer3DModel
from pusa.runtime.kernels import (
    apply_attention_backend,
    compile_blocks,
    dit_forward_flops,
    enable_fp8_weights,
    relative_error,
)
from pusa.runtime.memory import module_bytes
from pusa.weights.lora import LoraFuser, LoraWeights, attach_lora_adapter

from .models import attention_of, build_dit, cfg_step_fn, dit_inputs, forward_fn
from .results import Results
from .specs import LORA_ALPHA, PEAK_FLOPS, Size, Spec, dit_tokens
from .timing import free_memory, measure, peak_gib, reset_peak, synchronize


def dit_row(spec: Spec, size: Size, model: torch.nn.Module, per_token: bool) -> dict[str, Any]:
    x = dit_inputs(spec, size, per_token)
    reset_peak(spec.device)
    forward = measure(forward_fn(model, x), spec.device, spec.warmup, spec.repeats)
    cfg = measure(cfg_step_fn(model, x), spec.device, 0, spec.cfg_repeats)
    flops = dit_forward_flops(spec.dit, size.num_latent_frames, size.height, size.width, spec.text_len)
    tokens = dit_tokens(spec, size)
    achieved = flops / (forward["ms"] / 1e3)
    return {
        "tokens": tokens,
        "ms_forward": forward["ms"],
        "first_forward_ms": forward["first_ms"],
        "ms_cfg_step": cfg["ms"],
        "peak_gib": peak_gib(spec.device),
        "flops_forward": flops,
        "tflops_per_s": achieved / 1e12,
        "mfu": achieved / PEAK_FLOPS,
        "attention": attention_of(model),
        "weights_gib": module_bytes(model) / 2**30,
    }


def build_variant(
    variant: str,
    spec: Spec,
    lora: LoraWeights,
    attention: str,
    info: dict[str, Any],
    time_refuse: bool = False,
) -> tuple[torch.nn.Module, bool]:
    """The model of a DiT row with its LoRA applied; fills `info` with setup timings (and, with
    `time_refuse`, the time of one alpha change). Returns (model, whether it takes per-token timesteps)."""
    stock = variant == "diffusers-stock"
    model = build_dit(WanTransformer3DModel if stock else PusaTransformer3DModel, spec)
    started = time.perf_counter()
    if variant in ("ours-adapter", "diffusers-stock"):
        attach_lora_adapter(model, lora, LORA_ALPHA)
        synchronize(spec.device)
        info["lora_setup_s"] = time.perf_counter() - started
    else:
        fuser = LoraFuser(model, lora, pristine_device="cpu")
        fuser.set_alpha(LORA_ALPHA)
        synchronize(spec.device)
        info["lora_setup_s"] = time.perf_counter() - started
        if time_refuse:
            started = time.perf_counter()
            fuser.set_alpha(1.5)
            fuser.set_alpha(LORA_ALPHA)
            synchronize(spec.device)
            info["refuse_s"] = (time.perf_counter() - started) / 2
    apply_attention_backend(model, attention, spec.device)
    return model, stock


def dit_part(
    spec: Spec, variants: list[str], sizes: list[Size], lora: LoraWeights, attention: str, results: Results
) -> None:
    for variant in variants:
        dit_variant(spec, variant, sizes, lora, attention, results)
        free_memory(spec.device)


def dit_variant(
    spec: Spec, variant: str, sizes: list[Size], lora: LoraWeights, attention: str, results: Results
) -> None:
    """Build the model of `variant` once (a setup row), then time it at every size (a row each)."""
    part = {"ours-compile": "compile", "ours-fp8": "fp8"}.get(variant, "dit")
    state: dict[str, Any] = {}

    def setup() -> dict:
        info: dict[str, Any] = {}
        base = "ours-fused" if variant in ("ours-compile", "ours-fp8") else variant
        model, per_token = build_variant(
            base, spec, lora, attention, info, time_refuse=variant == "ours-fused"
        )
        if variant == "ours-fp8":
            # bf16 references first, at every size, from the very same weights
            state["references"] = {
                size.label: forward_fn(model, dit_inputs(spec, size, False))().clone() for size in sizes
            }
            bytes_before = module_bytes(model)
            enable_fp8_weights(model, compute_dtype=spec.dtype)
            info["weights_saved_gib"] = (bytes_before - module_bytes(model)) / 2**30
        if variant == "ours-compile":
            compile_blocks(model, backend=spec.compile_backend, dynamic=False)
        state.update(model=model, per_token=per_token)
        return info

    if results.run(part, f"{variant} (setup)", None, spec.device, setup)["status"] != "ok":
        return
    for size in sizes:

        def timed(size: Size = size) -> dict:
            row = dit_row(spec, size, state["model"], state["per_token"])
            if variant == "ours-fp8":
                output = forward_fn(state["model"], dit_inputs(spec, size, False))()
                row["rel_error_vs_bf16"] = relative_error(output, state["references"][size.label])
            if variant == "ours-compile":
                row["compile_backend"] = spec.compile_backend
            return row

        results.run(part, variant, size, spec.device, timed)
