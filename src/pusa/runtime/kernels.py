"""Speed and memory knobs for the Pusa DiT, all built on diffusers' own machinery.

- Memory tiers (`MEMORY_TIERS`): where the weights live between uses, with diffusers' group offloading
  (`apply_group_offloading` / `ModelMixin.enable_group_offload`, CUDA-stream prefetch when a CUDA device is
  the target). `choose_memory_tier` picks one from free VRAM and the component sizes; `apply_memory_tier`
  applies it to a pipeline (or anything with `transformer` / `text_encoder` / `vae`).
- Attention: diffusers' attention dispatcher, backends that ship with PyTorch (cuDNN / flash / efficient
  SDPA) or with an installed package; never one that downloads kernels at run time.
- `compile_blocks`: regional `torch.compile` of the repeated DiT blocks.
- `enable_fp8_weights`: float8 weight storage, upcast layer by layer for compute (diffusers' layerwise casting).
- `attach_lora_adapter`: the unfused PEFT adapter path, kept to compare with `loading.LoraFuser` (fused).
- `dit_forward_flops`: the analytic FLOP count of one DiT forward, for model FLOP utilisation.

Order when combining them (each step assumes the previous ones; `prepare_for_device` does it): build on the
CPU -> `LoraFuser` (pristine copies) -> `enable_fp8_weights` -> `apply_memory_tier` ->
`apply_attention_backend` -> `compile_blocks`. fp8 must precede offloading so that float8 bytes, not bf16
ones, cross the bus, and the layer is upcast on the GPU.
"""

from __future__ import annotations

import collections
import importlib.util
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.hooks import apply_group_offloading

# diffusers' own test for "is this module group-offloaded" (used by ModelMixin.to); no public name yet
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from torch import nn

from .loading import LoraWeights
from .presets import MEMORY_TIER_CHOICES, MEMORY_TIERS

__all__ = [
    "ATTENTION_CHOICES",
    "AUTO_ATTENTION_CANDIDATES",
    "BALANCED_RESIDENT_FRACTION",
    "MEMORY_TIERS",
    "MEMORY_TIER_BUDGETS",
    "MEMORY_TIER_CHOICES",
    "WORKING_BYTES",
    "apply_attention_backend",
    "apply_memory_tier",
    "attach_lora_adapter",
    "attention_backend_timings",
    "choose_memory_tier",
    "compile_blocks",
    "component_bytes",
    "dit_forward_flops",
    "enable_fp8_weights",
    "fastest_attention_backend",
    "free_device_bytes",
    "module_bytes",
    "prepare_for_device",
    "relative_error",
    "resolve_memory_tier",
    "select_attention_backend",
    "set_adapter_alpha",
    "validate_attention_backend",
    "validate_memory_tier",
]

GiB = 2**30

# ---------------------------------------------------------------------------------------------------
# Memory tiers
# ---------------------------------------------------------------------------------------------------

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
        raise ValueError(f"memory tier {tier!r} is not known; choose one of {', '.join(allowed)}")
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


def module_bytes(module: nn.Module | None) -> int:
    """Bytes of a module's parameters and buffers (0 for None)."""
    if module is None:
        return 0
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def _component(components: Any, name: str) -> nn.Module | None:
    if isinstance(components, Mapping):
        return components.get(name)
    return getattr(components, name, None)


def component_bytes(components: Any) -> dict[str, int]:
    """`{"transformer", "text_encoder", "vae"}` -> bytes, for a pipeline, `loading.Components` or a dict."""
    return {
        name: module_bytes(_component(components, name)) for name in ("transformer", "text_encoder", "vae")
    }


def free_device_bytes(device: str | torch.device) -> int | None:
    """Free memory of a CUDA device in bytes; None for other devices."""
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
        _bytes_on(_component(components, name), device) for name in ("transformer", "text_encoder", "vae")
    )
    return choose_memory_tier(free + resident, component_bytes(components), working_bytes)


def _streams_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


def apply_memory_tier(
    components: Any,
    tier: str,
    device: str | torch.device,
    offload_device: str | torch.device = "cpu",
) -> dict[str, str]:
    """Place `components` (a pipeline, `loading.Components` or a dict; missing parts are skipped) for
    `tier` on `device`, and return where each part went, in words.

    Apply once, preferably with the models still on the CPU (offloading moves them there anyway). On a
    CUDA device the offloaded tiers prefetch on a CUDA stream; elsewhere transfers are synchronous. With
    streams diffusers keeps a pinned CPU copy of every offloaded tensor and points the parameter at it
    while offloaded, so in-place weight updates (`LoraFuser.set_alpha`) between forwards still take effect.
    """
    tier = validate_memory_tier(tier)
    device = torch.device(device)
    offload_device = torch.device(offload_device)
    stream = _streams_available(device)
    transformer = _component(components, "transformer")
    text_encoder = _component(components, "text_encoder")
    vae = _component(components, "vae")
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


# ---------------------------------------------------------------------------------------------------
# Attention backend
# ---------------------------------------------------------------------------------------------------

# Backends that fetch kernels from the Hub at run time are never offered.
ATTENTION_CHOICES = ("auto", *(b.value for b in AttentionBackendName if not b.value.endswith("_hub")))
# Tried in this order by "auto" on CUDA; the fastest that runs and agrees with plain SDPA wins.
# `_flash_3` and `flash` need the flash-attn packages installed and are skipped when they are not.
AUTO_ATTENTION_CANDIDATES = (
    "_flash_3",
    "flash",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "native",
)
# Relative error a backend may have against float32 SDPA on the same bf16 inputs (bf16 output rounding
# alone is ~0.3%).
_ATTENTION_TOLERANCE = 0.02
# What runs off CUDA; the others are CUDA kernels.
_PORTABLE_ATTENTION = ("native", "_native_math", "flex")


def validate_attention_backend(name: str) -> str:
    """`name` itself, or a ValueError naming the value and the allowed names (no Hub-kernel backends)."""
    if not isinstance(name, str) or name not in ATTENTION_CHOICES:
        raise ValueError(
            f"attention backend {name!r} is not allowed; choose one of {', '.join(ATTENTION_CHOICES)}"
        )
    return name


def attention_package(backend: str) -> str | None:
    """The Python package an attention backend needs beyond PyTorch (None: PyTorch's own kernels). Without
    it diffusers fails with a bare TypeError, so the timings report this name instead."""
    if "flash" in backend and not backend.startswith("_native"):
        return "flash_attn_interface" if "_3" in backend else "flash_attn"
    if "sage" in backend:
        return "sageattention"
    return "xformers" if backend == "xformers" else None


def attention_backend_timings(
    device: str | torch.device,
    candidates: Sequence[str] = AUTO_ATTENTION_CANDIDATES,
    *,
    seq_len: int = 4096,
    num_heads: int = 40,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 5,
) -> dict[str, float | str]:
    """Median milliseconds of one self-attention `[1, seq_len, num_heads, head_dim]` per backend, or why it
    could not be used ("unavailable: ..." or "wrong result: ..."). CUDA only; other devices get {}."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    generator = torch.Generator(device).manual_seed(0)
    query, key, value = (
        torch.randn(1, seq_len, num_heads, head_dim, generator=generator, device=device, dtype=dtype)
        for _ in range(3)
    )
    reference = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2).float() for x in (query, key, value))
    ).transpose(1, 2)  # [1, L, H, D]
    results: dict[str, float | str] = {}
    for name in candidates:
        validate_attention_backend(name)
        backend = AttentionBackendName(name)
        package = attention_package(name)
        if package is not None and importlib.util.find_spec(package) is None:
            results[name] = f"unavailable: needs the {package} package, which is not installed"
            continue
        try:
            with torch.inference_mode():
                output = dispatch_attention_fn(query, key, value, backend=backend)
                error = relative_error(output, reference)
                if not error <= _ATTENTION_TOLERANCE:  # NaN fails too
                    results[name] = f"wrong result: relative error {error:.3g} vs float32 SDPA"
                    continue
                times = []
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    dispatch_attention_fn(query, key, value, backend=backend)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
            results[name] = statistics.median(times)
        except Exception as failure:  # a backend fails in many ways: missing package, arch, dtype
            results[name] = f"unavailable: {type(failure).__name__}: {failure}"[:300]
    return results


def fastest_attention_backend(timings: Mapping[str, float | str]) -> str:
    """The backend with the lowest time in `attention_backend_timings`' result; "native" if none ran."""
    usable = {name: ms for name, ms in timings.items() if isinstance(ms, float)}
    return min(usable, key=usable.__getitem__) if usable else "native"


def select_attention_backend(
    device: str | torch.device, candidates: Sequence[str] = AUTO_ATTENTION_CANDIDATES, **shape: Any
) -> str:
    """The fastest attention backend on `device` among `candidates` (timed by `attention_backend_timings`;
    `shape` overrides its sizes); "native" (PyTorch SDPA, whatever kernel it picks) off CUDA or if none ran."""
    return fastest_attention_backend(attention_backend_timings(device, candidates, **shape))


def apply_attention_backend(
    transformer: nn.Module, backend: str, device: str | torch.device, seq_len: int | None = None
) -> str:
    """Set `backend` ("auto" = `select_attention_backend`) on every attention of `transformer` and return
    its name. A named backend is tried first on CUDA; one that cannot run on `device` (a missing package,
    a CUDA kernel off CUDA) raises ValueError naming it and why. `seq_len`: the token count "auto" times
    the kernels at (the model's native clip; the winner changes with length), default 4096."""
    backend = validate_attention_backend(backend)
    device = torch.device(device)
    config = getattr(transformer, "config", None)
    shape: dict[str, int] = {} if seq_len is None else {"seq_len": int(seq_len)}
    if config is not None and hasattr(config, "num_attention_heads"):
        shape.update(num_heads=config.num_attention_heads, head_dim=config.attention_head_dim)
    if backend == "auto":
        backend = select_attention_backend(device, **shape)
    elif device.type != "cuda" and backend not in _PORTABLE_ATTENTION:
        raise ValueError(
            f"attention backend {backend!r} needs a CUDA device; on {device} use one of "
            f"{', '.join(_PORTABLE_ATTENTION)} or auto"
        )
    elif device.type == "cuda":
        outcome = attention_backend_timings(device, [backend], repeats=1, **shape).get(backend)
        if isinstance(outcome, str):
            raise ValueError(f"attention backend {backend!r} cannot be used on {device}: {outcome}")
    already_default = all(
        getattr(getattr(module, "processor", None), "_attention_backend", None) is None
        for module in transformer.modules()
    )
    if backend == "native" and already_default:
        return backend  # diffusers' default dispatch is native SDPA: nothing to set (and no warning)
    try:
        transformer.set_attention_backend(backend)
    except (RuntimeError, ImportError) as error:
        raise ValueError(f"attention backend {backend!r} cannot be used here: {error}") from error
    return backend


# ---------------------------------------------------------------------------------------------------
# torch.compile and fp8
# ---------------------------------------------------------------------------------------------------


def compile_blocks(transformer: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Regional `torch.compile` of the transformer's repeated blocks (`_repeated_blocks`), in place;
    `compile_kwargs` go to `torch.compile`. Defaults to `fullgraph=True`, so a graph break is an error
    rather than a silent slowdown, except under group offloading, whose onload/offload hooks are
    deliberate graph breaks (`torch.compiler.disable`)."""
    compile_kwargs.setdefault("fullgraph", not _is_group_offload_enabled(transformer))
    transformer.compile_repeated_blocks(**compile_kwargs)
    return transformer


def enable_fp8_weights(
    transformer: nn.Module, compute_dtype: torch.dtype, storage_dtype: torch.dtype = torch.float8_e4m3fn
) -> nn.Module:
    """Store the Linear layers (weights and biases) in float8, half the bytes of bf16, and upcast each
    layer to `compute_dtype` for its forward, in place. Embeddings, norms, modulation tables and the output head keep their dtype (the
    model's `_skip_layerwise_casting_patterns` and `_keep_in_fp32_modules`). Values are cast without a
    scale, so weights below float8's normal range (|w| < 2**-6) lose relative precision.

    A `LoraFuser` built before this keeps its pristine copies in the original dtype and re-fuses into the
    float8 weights exactly once per `set_alpha`. Call before `apply_memory_tier`.
    """
    if _is_group_offload_enabled(transformer):
        raise ValueError("enable fp8 weights before applying a memory tier (offloading), not after")
    transformer.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=compute_dtype)
    return transformer


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """`||output - reference|| / ||reference||` (Frobenius norms, computed in float32)."""
    reference = reference.float()
    return ((output.float() - reference).norm() / reference.norm()).item()


def dit_forward_flops(
    config: Any, num_latent_frames: int, height: int, width: int, text_len: int = 512, batch: int = 1
) -> int:
    """Model FLOPs (2 per multiply-add) of one DiT forward on latents `[batch, C, num_latent_frames, height,
    width]` with `text_len` text tokens and one timestep per latent frame; `config` is the transformer's
    config (a mapping or an object). Counts every matmul: patch embedding, text and time embedders, per
    block the self-attention projections and QK^T / PV, the cross-attention q/o over the video tokens and
    k/v over the text plus its QK^T / PV, the feed-forward; the output head. Norms, RoPE, softmax and
    elementwise work are left out, as is the CLIP image branch (Wan2.1 T2V has none).
    Wan2.1-14B at 480x832x81 (32,760 tokens) gives 1.68e15."""

    def get(name: str) -> Any:
        return config[name] if isinstance(config, Mapping) else getattr(config, name)

    p_t, p_h, p_w = get("patch_size")
    dim = get("num_attention_heads") * get("attention_head_dim")
    tokens = (num_latent_frames // p_t) * (height // p_h) * (width // p_w)
    patch_volume = p_t * p_h * p_w
    per_block = (
        4 * tokens * dim * dim  # self-attention q, k, v, o
        + 2 * tokens * tokens * dim  # self-attention QK^T and PV
        + 2 * tokens * dim * dim  # cross-attention q, o
        + 2 * text_len * dim * dim  # cross-attention k, v over the text
        + 2 * tokens * text_len * dim  # cross-attention QK^T and PV
        + 2 * tokens * dim * get("ffn_dim")  # feed-forward up and down
    )
    embeddings = (
        tokens * get("in_channels") * patch_volume * dim  # patch embedding
        + text_len * (get("text_dim") * dim + dim * dim)  # text embedder
        + num_latent_frames * (get("freq_dim") * dim + dim * dim + dim * 6 * dim)  # time MLP + projection
    )
    head = tokens * dim * get("out_channels") * patch_volume
    return 2 * batch * (get("num_layers") * per_block + embeddings + head)


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
) -> dict[str, Any]:
    """Everything above, in the order that works: fp8 weights -> memory tier -> attention backend ->
    compile. `components` is a pipeline, `loading.Components` or a dict, best still on the CPU and with
    any `LoraFuser` already built (it keeps pristine copies of the weights fp8 would round). Names are
    checked before anything changes. `attention_tokens`: the sequence length "auto" attention is chosen
    at. Returns what was done, for logs and the settings record."""
    device = torch.device(device)
    validate_memory_tier(memory, allow_auto=True)
    validate_attention_backend(attention)
    transformer = _component(components, "transformer")
    if transformer is None:
        raise ValueError("components have no transformer")
    report: dict[str, Any] = {"fp8": fp8, "compiled": compile}
    if fp8:
        # ModelMixin.dtype skips the modules kept in float32, so it is the dtype the blocks compute in
        enable_fp8_weights(transformer, compute_dtype=compute_dtype or transformer.dtype)
    report["memory_tier"] = resolve_memory_tier(memory, device, components)
    report["placement"] = apply_memory_tier(components, report["memory_tier"], device)
    report["attention"] = apply_attention_backend(transformer, attention, device, seq_len=attention_tokens)
    if compile:
        compile_blocks(transformer, **(compile_kwargs or {}))
    return report


# ---------------------------------------------------------------------------------------------------
# Unfused LoRA (PEFT adapter through diffusers)
# ---------------------------------------------------------------------------------------------------


def attach_lora_adapter(
    transformer: nn.Module, lora: LoraWeights, alpha: float, adapter_name: str = "pusa"
) -> str:
    """Load `lora` as an unfused PEFT adapter through diffusers (`load_lora_adapter`) and set its strength
    to `alpha`, so each targeted Linear computes `W x + alpha * up @ (down @ x)`: PEFT's scale is
    `weight * lora_alpha / r` and the adapter is created with `lora_alpha = r`, hence no division by rank.
    Returns the adapter name. Full-tensor `.diff` deltas have no adapter form and are refused.
    """
    if lora.diffs:
        names = ", ".join(list(lora.diffs)[:3])
        raise ValueError(
            f"LoRA {lora.source} has full-tensor .diff deltas ({names}, ...), which a PEFT adapter cannot "
            "hold; fuse it with loading.LoraFuser instead"
        )
    named = dict(transformer.named_modules())
    for name, (down, up) in lora.modules.items():
        module = named.get(name)
        if not isinstance(module, nn.Linear) or [up.shape[0], down.shape[1]] != list(module.weight.shape):
            have = (
                "nothing"
                if module is None
                else f"a {type(module).__name__} {list(getattr(module, 'weight', torch.empty(0)).shape)}"
            )
            raise ValueError(
                f"LoRA {lora.source}: {lora.file_key(name)} gives {name} a delta of shape "
                f"{[up.shape[0], down.shape[1]]}, but the model has {have} there"
            )
    state = {}
    ranks = {}
    for name, (down, up) in lora.modules.items():
        state[f"{name}.lora_A.weight"] = down
        state[f"{name}.lora_B.weight"] = up
        ranks[name] = down.shape[0]
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    # Same pattern keys as diffusers' own config inference (`^` anchors at the module name).
    others = {f"^{name}": r for name, r in ranks.items() if r != rank}
    config = {
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": others,
        "alpha_pattern": dict(others),
        "target_modules": sorted(ranks),
    }
    transformer.load_lora_adapter(
        state, adapter_name=adapter_name, prefix=None, metadata=config, low_cpu_mem_usage=True
    )
    set_adapter_alpha(transformer, alpha, adapter_name)
    return adapter_name


def set_adapter_alpha(transformer: nn.Module, alpha: float, adapter_name: str = "pusa") -> None:
    """Set the adapter's strength to `alpha` (recomputed, never accumulated: PEFT sets
    `scaling = alpha * lora_alpha / r`)."""
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha}")
    transformer.set_adapters([adapter_name], weights=[alpha])
