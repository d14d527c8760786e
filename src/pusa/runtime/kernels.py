"""Speed knobs for the Pusa DiT, all built on diffusers' own machinery.

- Attention: diffusers' attention dispatcher, backends that ship with PyTorch (cuDNN / flash / efficient
  SDPA) or with an installed package; never one that downloads kernels at run time.
- `compile_blocks`: regional `torch.compile` of the repeated DiT blocks.
- `enable_fp8_weights`: float8 weight storage, upcast layer by layer for compute (diffusers' layerwise casting).
- `dit_forward_flops`: the analytic FLOP count of one DiT forward, for model FLOP utilisation.

`runtime.prepare.prepare_for_device` combines them with the memory tiers in the order that works.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch

# diffusers' own test for "is this module group-offloaded" (used by ModelMixin.to); no public name yet
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from torch import nn

__all__ = [
    "ATTENTION_CHOICES",
    "AUTO_ATTENTION_CANDIDATES",
    "apply_attention_backend",
    "attention_backend_timings",
    "compile_blocks",
    "dit_forward_flops",
    "enable_fp8_weights",
    "fastest_attention_backend",
    "relative_error",
    "select_attention_backend",
    "validate_attention_backend",
]

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
    from diffusers.hooks.group_offloading import _is_group_offload_enabled  # pulls in peft: only when asked

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
    from diffusers.hooks.group_offloading import _is_group_offload_enabled  # pulls in peft: only when asked

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
