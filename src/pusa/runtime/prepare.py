"""`prepare_for_device`: the speed and memory knobs of `runtime.memory` and `runtime.kernels`, combined.

Order when combining them (each step assumes the previous ones; `prepare_for_device` does it): build on the
CPU -> `LoraFuser` (pristine copies) -> `enable_fp8_weights` -> `apply_memory_tier` ->
`apply_attention_backend` -> `compile_blocks`. fp8 must precede offloading so that float8 bytes, not bf16
ones, cross the bus, and the layer is upcast on the GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..params import InputError
from .kernels import (
    FP8_COMPUTE_CHOICES,
    apply_attention_backend,
    compile_blocks,
    enable_fp8_compute,
    enable_fp8_weights,
    validate_attention_backend,
)
from .memory import apply_memory_tier, component_of, resolve_memory_tier, validate_memory_tier

__all__ = [
    "CFG_BATCH_CHOICES",
    "prepare_for_device",
    "resolve_cfg_batch",
    "validate_cfg_batch",
    "validate_fp8_compute",
]

CFG_BATCH_CHOICES = ("auto", "on", "off")


def validate_cfg_batch(value: str) -> str:
    """`value` itself, or a ValueError naming it and the allowed values."""
    if value not in CFG_BATCH_CHOICES:
        raise InputError("cfg_batch", value, f"choose one of {', '.join(CFG_BATCH_CHOICES)}")
    return value


def validate_fp8_compute(value: str) -> str:
    """`value` itself, or a ValueError naming it and the allowed values."""
    if value not in FP8_COMPUTE_CHOICES:
        raise InputError("fp8_compute", value, f"choose one of {', '.join(FP8_COMPUTE_CHOICES)}")
    return value


def resolve_cfg_batch(value: str, device: torch.device, memory_tier: str) -> bool:
    """Whether CFG's positive and negative passes run as one forward of batch 2 ("auto": on CUDA, except
    the "low" tier, whose 12 GB cards have no room for twice the activations; off elsewhere: on the CPU a
    batch of 2 is no faster and the default path stays bit-identical to the two-pass one)."""
    validate_cfg_batch(value)
    if value != "auto":
        return value == "on"
    return device.type == "cuda" and memory_tier != "low"


def prepare_for_device(
    components: Any,
    device: str | torch.device,
    *,
    memory: str = "auto",
    attention: str = "auto",
    fp8: bool = False,
    compile: bool = False,
    compute_dtype: torch.dtype | None = None,
    compile_kwargs: Mapping[str, Any] | None = None,
    attention_tokens: int | None = None,
    cfg_batch: str = "auto",
    fp8_compute: str = "off",
) -> dict[str, Any]:
    """The knobs of `runtime.kernels` and `runtime.memory`, in the order that works: fp8 weights -> memory
    tier -> attention backend -> compile. `components` is a pipeline, `weights.folders.Components` or a
    dict, best still on the CPU and with any `LoraFuser` already built (it keeps pristine copies of the
    weights fp8 would round). Names are checked before anything changes. `attention_tokens`: the sequence
    length "auto" attention is chosen at. `cfg_batch`: auto | on | off (`resolve_cfg_batch`). Returns what was done, for logs and the settings record."""
    device = torch.device(device)
    validate_memory_tier(memory, allow_auto=True)
    validate_attention_backend(attention)
    validate_cfg_batch(cfg_batch)
    validate_fp8_compute(fp8_compute)
    transformer = component_of(components, "transformer")
    if transformer is None:
        raise ValueError("components have no transformer")
    report: dict[str, Any] = {"fp8": fp8, "compiled": compile}
    if fp8_compute != "off":  # matrix products in float8 (the weights keep their dtype unless fp8 too)
        report["fp8_compute"] = fp8_compute
        report["fp8_compute_layers"] = enable_fp8_compute(transformer, fp8_compute)
    if fp8:
        # ModelMixin.dtype skips the modules kept in float32, so it is the dtype the blocks compute in
        enable_fp8_weights(transformer, compute_dtype=compute_dtype or transformer.dtype)
    report["memory_tier"] = resolve_memory_tier(memory, device, components)
    report["placement"] = apply_memory_tier(components, report["memory_tier"], device)
    report["attention"] = apply_attention_backend(transformer, attention, device, seq_len=attention_tokens)
    report["cfg_batch"] = resolve_cfg_batch(cfg_batch, device, report["memory_tier"])
    if compile:
        compile_blocks(transformer, **(compile_kwargs or {}))
    return report
