"""Placing a loaded model on its device: one DiT or two experts, and the text encoder and VAE apart.

`place_model` is what the pipeline's constructors call once the weights are loaded. It runs
`prepare.prepare_for_device` (fp8 -> memory tier -> attention -> compile -> CFG batch) on the model and,
for a two-expert model (Wan2.2), decides where the low-noise expert lives: beside the other ("full" and the
offloading tiers), in pinned host memory swapped at the boundary ("swap", `expert_swap.ExpertSwap`), or in
no memory, read again from its files at the boundary ("stream" and streamed offloading,
`expert_stream.ExpertStream`). `plan_folder_experts` makes that choice for a model folder from its files'
sizes before any weight is read.

The result is a `Placement`: `report`, a JSON-able record of what was done (the sidecar's `acceleration`),
and `expert_switch`, the live object that moves the experts at the boundary (None for one DiT or when
both stay resident). The two are kept apart so that the record can be written as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..experts import HIGH, LOW
from ..params import InputError
from ..weights.folders import folder_bytes
from .expert_stream import ExpertStream
from .expert_swap import ExpertSwap
from .kernels import apply_attention_backend, compile_blocks, enable_fp8_compute, enable_fp8_weights
from .memory import (
    WORKING_BYTES,
    ExpertMemoryPlan,
    apply_memory_tier,
    available_host_bytes,
    choose_expert_tier,
    component_bytes,
    free_device_bytes,
    module_bytes,
    plan_expert_memory,
)
from .prepare import prepare_for_device

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ExpertSwitch", "ModelParts", "Placement", "place_model", "plan_folder_experts"]


class ExpertSwitch(Protocol):
    """What moves a two-expert model's experts at the boundary (`ExpertSwap`, `ExpertStream`)."""

    swaps: int
    seconds: float

    def activate(self, name: str) -> float: ...


@dataclass
class ModelParts:
    """The modules a placement moves: the DiT (a two-expert model's high-noise expert), its low-noise
    expert (or None), the text encoder (None on a follower rank) and the VAE."""

    transformer: Any  # the modules: diffusers' config attributes are untyped
    vae: Any
    text_encoder: Any = None
    transformer_2: Any = None

    @classmethod
    def of(cls, components: Any) -> ModelParts:
        """From `weights.folders.Components`, a `weights.registry` builder's dict, or anything with those
        attributes."""
        get = components.get if isinstance(components, dict) else lambda name: getattr(components, name, None)
        return cls(get("transformer"), get("vae"), get("text_encoder"), get("transformer_2"))

    def dit_only(self) -> ModelParts:
        """The parts a memory tier places when the text encoder and VAE live on their own device."""
        return replace(self, text_encoder=None, vae=None)


@dataclass
class Placement:
    """What `place_model` did: `report` (JSON-able: memory tier, attention, placement of each part, ...)
    and the live `expert_switch` of a two-expert model whose experts move at the boundary."""

    report: dict[str, Any] = field(default_factory=dict)
    expert_switch: ExpertSwitch | None = None


def place_model(
    parts: ModelParts,
    device: str | torch.device,
    *,
    text_vae_device: torch.device | None = None,
    stream_inactive: bool = False,
    **options: Any,
) -> Placement:
    """Place `parts` on `device` with `options` (`prepare.prepare_for_device`'s keywords: memory,
    attention, fp8, compile, compute_dtype, compile_kwargs, attention_tokens, cfg_batch, fp8_compute).

    One DiT: the tiers as `prepare_for_device` does them. Two experts: "auto" counts both; "swap" (or
    "auto" on a card that holds one expert but not two) keeps the active expert resident and the other in
    pinned host memory; "stream" reads the inactive one from its files; `stream_inactive` with "balanced" /
    "low" offloads the active expert and reads the other from its files at the boundary; the other tiers
    place both experts alike. `text_vae_device`: the text encoder and VAE resident there, the tier placing
    the DiT alone."""
    placed = parts if text_vae_device is None else parts.dit_only()
    placement = _place_dits(placed, device, stream_inactive, options)
    if text_vae_device is not None:
        _place_text_vae(parts, text_vae_device, placement.report)
    return placement


def plan_folder_experts(
    model_dir: str | Path,
    memory: str,
    device: str | torch.device,
    dtype: torch.dtype,
    host_bytes: int | None,
    streamable: bool,
) -> ExpertMemoryPlan:
    """`memory.plan_expert_memory` for a two-expert folder, from its files' sizes, the device's free
    memory and the host RAM (`host_bytes`, else what is available now). Not `streamable` (fp8 weights):
    the experts cannot be read again from their files, so nothing is streamed."""
    sizes = folder_bytes(model_dir, dtype)
    host = available_host_bytes() if host_bytes is None else host_bytes
    plan = plan_expert_memory(
        memory, max(sizes["transformer"], sizes["transformer_2"]), sizes["text_encoder"], sizes["vae"],
        free_device_bytes(device), host,
    )  # fmt: skip
    if not streamable and plan.inactive_expert == "files" and memory in ("auto", "balanced", "low"):
        reason = plan.reason + "; fp8: the experts cannot be read again from their files, so both stay pinned"
        plan = replace(
            plan, tier={"stream": "swap"}.get(plan.tier, plan.tier), stream_inactive=False, reason=reason
        )
    return plan


def _place_dits(parts: ModelParts, device: Any, stream_inactive: bool, options: dict[str, Any]) -> Placement:
    """The DiT(s) and, unless placed apart, the text encoder and VAE."""
    memory = options.get("memory", "auto")
    second = parts.transformer_2
    if second is None:
        if memory in ("swap", "stream"):
            raise InputError(
                "memory",
                memory,
                "the swap and stream tiers are for two-expert models; this model has one DiT",
            )
        return Placement(prepare_for_device(parts, device, **options))
    if memory == "auto":
        memory = _expert_tier(parts, device)
    options = {**options, "memory": memory}
    if memory == "stream":
        return _stream(parts, device, options)
    if stream_inactive:
        return _offloaded_stream(parts, device, options)
    if memory == "swap":
        return _swap(parts, device, options)
    report = prepare_for_device(parts, device, **options)
    expert = prepare_for_device(ModelParts(second, None), device, **options)
    report["transformer_2"] = expert["placement"].get("transformer")
    return Placement(report)


def _swap(parts: ModelParts, device: Any, options: dict[str, Any]) -> Placement:
    """The "swap" tier: the high-noise expert resident, the low-noise one in pinned host memory."""
    second = parts.transformer_2
    if options.get("fp8"):  # before the host copies, so that float8 bytes cross the bus
        enable_fp8_weights(second, compute_dtype=options.get("compute_dtype") or second.dtype)
    swap = ExpertSwap({LOW: second}, device)  # the low-noise expert to pinned host memory first
    report = prepare_for_device(parts, device, **{**options, "memory": "full"})
    _attention_and_compile(second, report, device, options, fp8_compute=options.get("fp8_compute", "off"))
    swap.adopt(HIGH, parts.transformer)  # resident now; swapped out when the sampler crosses the boundary
    report["memory_tier"] = "swap"
    report["transformer_2"] = "in pinned CPU memory, swapped with the high-noise expert at the boundary"
    return Placement(report, swap)


def _stream(parts: ModelParts, device: Any, options: dict[str, Any]) -> Placement:
    """The "stream" tier: the high-noise expert resident ("full"), the low-noise one not in memory."""
    if options.get("fp8"):
        raise InputError(
            "memory",
            "stream",
            "give one of the two: the stream tier reads each expert again from its files",
            "cannot be used with fp8",
        )
    experts = {HIGH: parts.transformer, LOW: parts.transformer_2}
    stream = ExpertStream(experts, device, active=HIGH)  # frees the low-noise one
    report = prepare_for_device(parts, device, **{**options, "memory": "full"})
    _attention_and_compile(parts.transformer_2, report, device, options)
    report["memory_tier"] = "stream"
    report["transformer_2"] = (
        "not in memory: read from its safetensors files at the boundary, the other freed"
    )
    return Placement(report, stream)


def _offloaded_stream(parts: ModelParts, device: Any, options: dict[str, Any]) -> Placement:
    """ "balanced" / "low" with the inactive expert in no memory: the active expert offloaded as the tier
    does it; at the boundary it is freed (its offloading hooks removed) and the other read from its files,
    its LoRA stack fused, then offloaded the same way (`ExpertStream` with `place`)."""
    if options.get("fp8"):
        raise InputError(
            "memory",
            options["memory"],
            "give one of the two: a streamed inactive expert is read again from its files",
            "cannot be used with fp8",
        )
    tier = options["memory"]
    report = prepare_for_device(parts, device, **options)  # the high-noise expert offloaded, as the tier says

    def place(module: nn.Module) -> None:
        apply_memory_tier(ModelParts(module, None), tier, device)

    experts = {HIGH: parts.transformer, LOW: parts.transformer_2}
    stream = ExpertStream(experts, device, active=HIGH, place=place)
    _attention_and_compile(parts.transformer_2, report, device, options)
    report["transformer_2"] = (
        f"not in memory: read from its safetensors files at the boundary and offloaded as {tier} does, the "
        "other freed"
    )
    return Placement(report, stream)


def _attention_and_compile(
    module: nn.Module, report: dict[str, Any], device: Any, options: dict[str, Any], fp8_compute: str = "off"
) -> None:
    """The second expert gets the attention backend the first got (and its float8 matrix products), and
    is compiled like it."""
    apply_attention_backend(module, report["attention"], device, seq_len=options.get("attention_tokens"))
    if fp8_compute != "off":
        enable_fp8_compute(module, fp8_compute)
    if options.get("compile"):
        compile_blocks(module, **(options.get("compile_kwargs") or {}))


def _expert_tier(parts: ModelParts, device: Any) -> str:
    """The tier "auto" means for a two-expert model on `device` (both experts counted)."""
    free = free_device_bytes(device)
    if free is None:
        return "full"
    return choose_expert_tier(free, component_bytes(parts), module_bytes(parts.transformer), WORKING_BYTES)


def _place_text_vae(parts: ModelParts, device: torch.device, report: dict[str, Any]) -> None:
    """`--text-vae-device`: the text encoder and VAE resident on `device` (the DiT's tier leaves them be)."""
    placement = report.setdefault("placement", {})
    for name, module in (("text_encoder", parts.text_encoder), ("vae", parts.vae)):
        if module is not None:
            module.to(device)
            placement[name] = f"resident on {device} (text_vae_device)"
    report["text_vae_device"] = str(device)
