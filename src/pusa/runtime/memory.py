"""Memory tiers: where the weights live between uses, with diffusers' group offloading
(`apply_group_offloading` / `ModelMixin.enable_group_offload`, CUDA-stream prefetch when a CUDA device is
the target). `choose_memory_tier` picks one from free VRAM and the component sizes; `apply_memory_tier`
applies it to a pipeline (or anything with `transformer` / `text_encoder` / `vae`).

Importing this module is cheap (torch and diffusers are imported inside the functions that use them): the
CLI offers `MEMORY_TIER_CHOICES` in its `--help`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..params import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "BALANCED_RESIDENT_FRACTION",
    "HOST_MARGIN_BYTES",
    "MEMORY_TIERS",
    "MEMORY_TIER_BUDGETS",
    "MEMORY_TIER_CHOICES",
    "WORKING_BYTES",
    "ExpertMemoryPlan",
    "apply_memory_tier",
    "available_host_bytes",
    "choose_expert_tier",
    "choose_memory_tier",
    "component_bytes",
    "component_of",
    "free_device_bytes",
    "host_bytes_needed",
    "module_bytes",
    "plan_expert_memory",
    "remove_group_offloading",
    "resolve_memory_tier",
    "validate_memory_tier",
]

MEMORY_TIERS = ("full", "balanced", "low")
# Two-expert models only, "full" with one expert resident at a time: "swap" keeps the other in pinned CPU
# memory (`runtime.expert_swap`); "stream" keeps it nowhere, read from its files at the boundary
# (`runtime.expert_stream`; model folders only)
MEMORY_TIER_CHOICES = ("auto", *MEMORY_TIERS, "swap", "stream")

GiB = 2**30


# The card each tier is meant for (bytes of VRAM; None = as much as the models need). Documentation and
# the benchmark's targets; the decision itself is `choose_memory_tier`, from measured sizes.
MEMORY_TIER_BUDGETS: dict[str, int | None] = {
    # transformer and VAE resident; the text encoder streamed through the GPU for each encode
    "full": None,
    # on CUDA, transformer and text encoder streamed leaf by leaf from pinned CPU memory, the next layer
    # prefetched on a CUDA stream while the current one computes; VAE resident and untiled (a 480p decode
    # of 21 latent frames peaks near 9.3 GiB). Without streams (non-CUDA targets): groups of 4 blocks
    "balanced": 24 * 10**9,
    # as balanced, and the VAE tiled
    "low": 12 * 10**9,
}
# Activations of one forward at 720p (75,600 tokens, fused attention) or a VAE decode, with headroom.
WORKING_BYTES = 10 * GiB
# Share of the transformer resident under "balanced" (what `choose_memory_tier` budgets): streamed leaf by
# leaf, only the current and the prefetched layers are on the GPU; without streams, groups of 4 of
# Wan-14B's 40 blocks. 10% also leaves room for smaller models.
BALANCED_RESIDENT_FRACTION = 0.10
# Blocks per offload group when no stream can prefetch (non-CUDA targets); with streams diffusers
# needs exactly one.
BALANCED_BLOCKS_PER_GROUP = 4


def validate_memory_tier(tier: str, allow_auto: bool = False) -> str:
    """`tier` itself, or a ValueError naming the value and the allowed names."""
    allowed = MEMORY_TIER_CHOICES if allow_auto else MEMORY_TIERS
    if not isinstance(tier, str) or tier not in allowed:
        raise InputError("memory", tier, f"choose one of {', '.join(allowed)}", "is not a memory tier")
    return tier


def choose_memory_tier(
    free_bytes: int, model_bytes: Mapping[str, int], working_bytes: int = WORKING_BYTES
) -> str:
    """The tier to use with `free_bytes` of free VRAM, given the sizes (bytes, in the dtype they will run
    in) of `model_bytes["transformer"]`, `["text_encoder"]` and `["vae"]` (missing keys count as 0). Pure.

    - "full" if the transformer and the VAE stay resident and the larger of the text encoder (resident only
      while encoding) and the working memory fits beside them;
    - else "balanced" if a tenth of the transformer, the VAE and that same maximum fit;
    - else "low" (the smallest footprint there is; it may still not fit).
    """
    transformer = int(model_bytes.get("transformer", 0))
    text_encoder = int(model_bytes.get("text_encoder", 0))
    vae = int(model_bytes.get("vae", 0))
    transient = max(text_encoder, working_bytes)
    if transformer + vae + transient <= free_bytes:
        return "full"
    if math.ceil(BALANCED_RESIDENT_FRACTION * transformer) + vae + transient <= free_bytes:
        return "balanced"
    return "low"


def choose_expert_tier(
    free_bytes: int, model_bytes: dict[str, int], expert_bytes: int, working_bytes: int
) -> str:
    """`choose_memory_tier` for a two-expert model: "full" if both experts fit resident, "swap" if
    one does, else what one expert's streaming needs ("balanced" / "low"). Pure."""
    both = choose_memory_tier(free_bytes, {**model_bytes, "transformer": 2 * expert_bytes}, working_bytes)
    if both == "full":
        return "full"
    one = choose_memory_tier(free_bytes, {**model_bytes, "transformer": expert_bytes}, working_bytes)
    return "swap" if one == "full" else one


# Host RAM beyond the weights: the process itself (torch and the imports), the LoRA files read, a tensor in
# transit. What a plan leaves free for it.
HOST_MARGIN_BYTES = 4 * GiB


@dataclass(frozen=True)
class ExpertMemoryPlan:
    """Where a two-expert model's weights go, decided before any weight is read (`plan_expert_memory`).

    tier:            the memory tier (full, swap, balanced, low, stream)
    stream_inactive: balanced / low only: the inactive expert is in no memory, read from its safetensors
                     files at the boundary (host RAM holds one expert's pinned copy, not both)
    reason:          why, in words, with the sizes it was decided from (the settings record keeps it)
    """

    tier: str
    stream_inactive: bool
    reason: str

    @property
    def inactive_expert(self) -> str:
        """Where the expert that is not running lives: "device", "pinned host memory" or "files"."""
        if self.tier == "full":
            return "device"
        if self.tier == "stream" or self.stream_inactive:
            return "files"
        return "pinned host memory"


def host_bytes_needed(
    tier: str, expert_bytes: int, text_bytes: int, on_device: bool, stream_inactive: bool = False
) -> int:
    """Host RAM a two-expert model's weights take in `tier` (the text encoder always lives on the host;
    `on_device` False: the "device" is the host itself, a CPU run). Pure.

    - full: both experts on the device (loaded straight to it);
    - swap: both experts' weights in (pinned) host memory, the active one on the device too;
    - balanced / low: both experts streamed from pinned host memory (one with `stream_inactive`);
    - stream: one expert on the device, the other in no memory."""
    if tier == "full":
        experts = 0 if on_device else 2
    elif tier == "stream":
        experts = 0 if on_device else 1
    elif tier in ("balanced", "low"):
        experts = 1 if stream_inactive else 2
    else:  # swap
        experts = 2
    return experts * expert_bytes + text_bytes


def _gb(value: int | None) -> str:
    if value is None:
        return "unknown"
    return f"{value / 1e9:.1f} GB" if abs(value) >= 1e8 else f"{value / 1e6:.2f} MB"


def plan_expert_memory(
    requested: str,
    expert_bytes: int,
    text_bytes: int,
    vae_bytes: int,
    free_bytes: int | None,
    host_bytes: int | None,
    working_bytes: int = WORKING_BYTES,
    margin_bytes: int = HOST_MARGIN_BYTES,
) -> ExpertMemoryPlan:
    """The memory plan of a two-expert model folder whose experts can be read again from their files.
    `free_bytes`: free device memory (None: a CPU run, where the device is host RAM); `host_bytes`: the
    host RAM available (None: unknown, nothing is refused for it). Pure.

    "auto": the device decides first (`choose_expert_tier`: both experts resident, one, or
    layer streaming); then host RAM, with `margin_bytes` kept free: where pinning both experts would not
    fit, "swap" becomes "stream" (the inactive expert read from its files at the boundary) and
    "balanced" / "low" stream the inactive expert the same way; on a CPU run "full" (both experts in RAM)
    becomes "stream". An explicit "balanced" / "low" streams its inactive expert only when host RAM cannot
    pin both; other explicit tiers are taken as asked."""
    requested = validate_memory_tier(requested, allow_auto=True)
    on_device = free_bytes is not None
    room = None if host_bytes is None else host_bytes - margin_bytes

    def fits(tier: str, stream_inactive: bool = False) -> bool:
        needed = host_bytes_needed(tier, expert_bytes, text_bytes, on_device, stream_inactive)
        return room is None or needed <= room

    def both(tier: str) -> str:
        needed = host_bytes_needed(tier, expert_bytes, text_bytes, on_device)
        return f"{_gb(needed)} of host RAM for {tier} ({_gb(expert_bytes)} an expert), {_gb(host_bytes)} available"

    if requested in ("balanced", "low"):
        if fits(requested):
            return ExpertMemoryPlan(requested, False, f"asked for; {both(requested)}: both experts pinned")
        return ExpertMemoryPlan(
            requested, True, f"asked for; {both(requested)} with both pinned: the inactive expert is read "
            "from its files at the boundary",
        )  # fmt: skip
    if requested != "auto":
        return ExpertMemoryPlan(requested, False, "asked for")
    if not on_device:
        if fits("full"):
            return ExpertMemoryPlan("full", False, f"auto on the CPU: {both('full')}")
        return ExpertMemoryPlan(
            "stream", False, f"auto on the CPU: {both('full')}: one expert in RAM at a time"
        )
    device_tier = choose_expert_tier(
        free_bytes, {"text_encoder": text_bytes, "vae": vae_bytes}, expert_bytes, working_bytes
    )
    device = f"{_gb(free_bytes)} free on the device"
    if device_tier == "full":
        return ExpertMemoryPlan(
            "full", False, f"auto: {device} holds both experts ({_gb(expert_bytes)} each)"
        )
    if device_tier == "swap":
        if fits("swap"):
            return ExpertMemoryPlan(
                "swap", False, f"auto: {device} holds one expert, not two; {both('swap')}"
            )
        return ExpertMemoryPlan(
            "stream", False, f"auto: {device} holds one expert, not two; {both('swap')}: the inactive expert "
            "is read from its files at the boundary",
        )  # fmt: skip
    if fits(device_tier):
        return ExpertMemoryPlan(
            device_tier, False, f"auto: {device} holds no whole expert; {both(device_tier)}"
        )
    return ExpertMemoryPlan(
        device_tier, True, f"auto: {device} holds no whole expert; {both(device_tier)} with both pinned: the "
        "inactive expert is read from its files at the boundary",
    )  # fmt: skip


def available_host_bytes() -> int | None:
    """Host RAM available to this process now (psutil's, else /proc/meminfo's MemAvailable; None when
    neither can say)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def remove_group_offloading(module: nn.Module) -> None:
    """Take diffusers' group offloading off `module` (the hooks diffusers' own re-apply removes), so its
    weights can be freed and offloading applied again after they are read back."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import (
        _GROUP_OFFLOADING,
        _LAYER_EXECUTION_TRACKER,
        _LAZY_PREFETCH_GROUP_OFFLOADING,
    )

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
        registry.remove_hook(name, recurse=True)


def module_bytes(module: nn.Module | None) -> int:
    """Bytes of a module's parameters and buffers (0 for None)."""
    if module is None:
        return 0
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def component_of(components: Any, name: str) -> nn.Module | None:
    if isinstance(components, Mapping):
        return components.get(name)
    return getattr(components, name, None)


def component_bytes(components: Any) -> dict[str, int]:
    """`{"transformer", "text_encoder", "vae"}` -> bytes, for a pipeline, `weights.folders.Components` or
    a dict."""
    return {
        name: module_bytes(component_of(components, name)) for name in ("transformer", "text_encoder", "vae")
    }


def free_device_bytes(device: str | torch.device) -> int | None:
    """Free memory of a CUDA device in bytes; None for other devices."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def _bytes_on(module: nn.Module | None, device: torch.device) -> int:
    if module is None:
        return 0
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors if t.device == device)


def resolve_memory_tier(
    requested: str, device: str | torch.device, components: Any, working_bytes: int = WORKING_BYTES
) -> str:
    """`requested` if it names a tier; for "auto", the tier `choose_memory_tier` picks from the device's
    free memory ("full" on a non-CUDA device, where nothing is gained by offloading). Bytes of the
    components already on the device count as free, since the tier decides where they go."""
    import torch

    requested = validate_memory_tier(requested, allow_auto=True)
    if requested != "auto":
        return requested
    device = torch.device(device)
    free = free_device_bytes(device)
    if free is None:
        return "full"
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    resident = sum(
        _bytes_on(component_of(components, name), device) for name in ("transformer", "text_encoder", "vae")
    )
    return choose_memory_tier(free + resident, component_bytes(components), working_bytes)


def _streams_available(device: torch.device) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_available()


def apply_memory_tier(
    components: Any,
    tier: str,
    device: str | torch.device,
    offload_device: str | torch.device = "cpu",
) -> dict[str, str]:
    """Place `components` (a pipeline, `weights.folders.Components` or a dict; missing parts are
    skipped) for `tier` on `device`, and return where each part went, in words.

    Apply once, preferably with the models still on the CPU (offloading moves them there anyway). On a
    CUDA device the offloaded tiers prefetch on a CUDA stream; elsewhere transfers are synchronous. With
    streams diffusers keeps a pinned CPU copy of every offloaded tensor and points the parameter at it
    while offloaded, so in-place weight updates (`LoraFuser.set_alpha`) between forwards still take effect.
    """
    import torch
    from diffusers.hooks import apply_group_offloading

    # diffusers' own test for "is this module group-offloaded" (used by ModelMixin.to); no public name yet
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    tier = validate_memory_tier(tier)
    device = torch.device(device)
    offload_device = torch.device(offload_device)
    stream = _streams_available(device)
    transformer = component_of(components, "transformer")
    text_encoder = component_of(components, "text_encoder")
    vae = component_of(components, "vae")
    for name, module in (("transformer", transformer), ("text_encoder", text_encoder)):
        if module is not None and _is_group_offload_enabled(module):
            raise ValueError(f"{name} is already group-offloaded; apply a memory tier only once")

    placement = {"tier": tier}

    def offload(module: nn.Module, offload_type: str, **options: Any) -> None:
        apply_group_offloading(
            module, onload_device=device, offload_device=offload_device, offload_type=offload_type, **options
        )

    if transformer is not None:
        if tier == "full":
            transformer.to(device)
            placement["transformer"] = f"resident on {device}"
        elif stream:
            # Leaf-level, not block-level: diffusers' block-level offload puts every module outside the
            # block list (patch/text/time embedders, head; 235M parameters at 14B) into one group that is
            # moved synchronously from pageable memory and back on every forward (measured on an H100 at
            # 2 of 40 blocks: 725 ms per forward vs 171 resident), while leaf-level groups are all pinned
            # and prefetched on the stream (187 ms).
            offload(transformer, "leaf_level", use_stream=True)
            placement["transformer"] = "leaf-level offload, CUDA-stream prefetch"
        elif tier == "balanced":
            offload(transformer, "block_level", num_blocks_per_group=BALANCED_BLOCKS_PER_GROUP)
            placement["transformer"] = f"block-level offload, {BALANCED_BLOCKS_PER_GROUP} block(s) per group"
        else:
            offload(transformer, "leaf_level")
            placement["transformer"] = "leaf-level offload"
    if text_encoder is not None:
        if stream:
            # Every tier streams the encoder leaf by leaf from pinned memory: whole-model moves go through
            # pageable memory (umT5-XXL, 10.8 GiB: 10.7 s per encode measured on an H100) and the encoder
            # does little compute per byte, so streaming costs about one pass over the bus.
            offload(text_encoder, "leaf_level", use_stream=True)
            placement["text_encoder"] = "leaf-level offload, CUDA-stream prefetch, onloaded for each encode"
        elif tier in ("full", "balanced"):
            # umT5 has no top-level ModuleList, so block-level offloading makes the whole encoder one group:
            # onloaded when an encode starts, offloaded when it ends.
            offload(text_encoder, "block_level", num_blocks_per_group=1)
            placement["text_encoder"] = f"onloaded to {device} for each encode, offloaded after"
        else:
            offload(text_encoder, "leaf_level")
            placement["text_encoder"] = "leaf-level offload"
    if vae is not None:
        vae.to(device)
        placement["vae"] = f"resident on {device}"
        if tier == "low":
            vae.enable_tiling()
            placement["vae"] += ", tiled"
    return placement
