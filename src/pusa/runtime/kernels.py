"""Speed knobs for the Pusa DiT, all built on diffusers' own machinery.

- Attention: diffusers' attention dispatcher, backends that ship with PyTorch (cuDNN / flash / efficient
  SDPA) or with an installed package; never one that downloads kernels at run time.
- `compile_blocks`: regional `torch.compile` of the repeated DiT blocks.
- `enable_fp8_weights`: float8 weight storage, upcast layer by layer for compute (diffusers' layerwise casting).
- `dit_forward_flops`: the analytic FLOP count of one DiT forward, for model FLOP utilisation.

`runtime.prepare.prepare_for_device` combines them with the memory tiers in the order that works.
"""

from __future__ import annotations

import importlib
import importlib.util
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# diffusers' own test for "is this module group-offloaded" (used by ModelMixin.to); no public name yet
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from torch import nn

from ..params import InputError

__all__ = [
    "ATTENTION_CHOICES",
    "AUTO_ATTENTION_CANDIDATES",
    "EXTRA_ATTENTION",
    "FP8_COMPUTE_CHOICES",
    "Fp8ComputeLinear",
    "KernelAttnProcessor",
    "apply_attention_backend",
    "attention_backend_timings",
    "attention_function",
    "check_attention_installed",
    "compile_blocks",
    "disable_fp8_compute",
    "dit_forward_flops",
    "enable_fp8_compute",
    "enable_fp8_weights",
    "fastest_attention_backend",
    "relative_error",
    "select_attention_backend",
    "validate_attention_backend",
]

# ---------------------------------------------------------------------------------------------------
# Attention backend
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraKernel:
    """An attention kernel from a PyPI package that diffusers has no local backend for (diffusers 0.42 offers
    FlashAttention 4 only from the Hub, and its `sage` backend needs sageattention>=2.1.1, which PyPI does not
    have: PyPI's `sageattention` is 1.0.6). It runs the DiT's self-attention (`KernelAttnProcessor`);
    cross-attention keeps diffusers' backend. Installed with `pip install 'pusa[EXTRA]'`."""

    module: str  # what is imported
    package: str  # the PyPI distribution
    extra: str  # pusa's optional-dependency group
    min_capability: tuple[int, int]  # CUDA compute capability
    what: str

    @property
    def install(self) -> str:
        return f"pip install 'pusa[{self.extra}]'"


EXTRA_ATTENTION: dict[str, ExtraKernel] = {
    "flash4": ExtraKernel("flash_attn.cute", "flash-attn-4", "flash4", (9, 0), "FlashAttention 4 (Hopper, Blackwell)"),
    "sageattn": ExtraKernel("sageattention", "sageattention", "sage", (8, 0), "SageAttention, 8-bit QK (Triton)"),
}  # fmt: skip

# Backends that fetch kernels from the Hub at run time are never offered.
ATTENTION_CHOICES = (
    "auto",
    *(b.value for b in AttentionBackendName if not b.value.endswith("_hub")),
    *EXTRA_ATTENTION,
)
# Tried in this order by "auto" on CUDA; the fastest that runs and agrees with plain SDPA wins.
# The extras, `_flash_3` and `flash` need their packages installed and are skipped when they are not.
AUTO_ATTENTION_CANDIDATES = (
    "flash4",
    "sageattn",
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
        raise InputError(
            "attention", name, f"choose one of {', '.join(ATTENTION_CHOICES)}", "is not an attention backend"
        )
    return name


def attention_package(backend: str) -> str | None:
    """The Python package an attention backend needs beyond PyTorch (None: PyTorch's own kernels). Without
    it diffusers fails with a bare TypeError, so the timings report this name instead."""
    if backend in EXTRA_ATTENTION:
        return EXTRA_ATTENTION[backend].module
    if "flash" in backend and not backend.startswith("_native"):
        return "flash_attn_interface" if "_3" in backend else "flash_attn"
    if "sage" in backend:
        return "sageattention"
    return "xformers" if backend == "xformers" else None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False


def check_attention_installed(name: str) -> str:
    """`name` if its kernel's package is installed (or it needs none), else an `InputError` on `attention`
    naming the package and the command that installs it: said before any weights load."""
    from ..params import InputError

    validate_attention_backend(name)
    if name in EXTRA_ATTENTION:
        kernel = EXTRA_ATTENTION[name]
        if not _installed(kernel.module):
            raise InputError(
                "attention", name, f"install it with: {kernel.install}",
                f"needs the {kernel.package} package ({kernel.what}), which is not installed",
            )  # fmt: skip
        return name
    package = attention_package(name)
    if package is not None and not _installed(package):
        raise InputError(
            "attention", name, f"install the {package} package or choose auto",
            f"needs the {package} package, which is not installed",
        )  # fmt: skip
    return name


def attention_function(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`attend(query, key, value) -> out`, all `[B, L, heads, head_dim]`, for a diffusers backend or an extra."""
    if name in EXTRA_ATTENTION:
        return _extra_kernel(name)
    backend = AttentionBackendName(name)
    return lambda query, key, value: dispatch_attention_fn(query, key, value, backend=backend)


def _extra_kernel(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    check_attention_installed(name)
    module = importlib.import_module(EXTRA_ATTENTION[name].module)
    if name == "sageattn":

        def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return module.sageattn(query, key, value, tensor_layout="NHD", is_causal=False)

        return attend

    def attend_flash4(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = module.flash_attn_func(query, key, value, causal=False)
        return out[0] if isinstance(out, tuple) else out  # (out, lse) in some versions

    return attend_flash4


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs (as diffusers' `WanAttnProcessor` applies it)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class KernelAttnProcessor:
    """Self-attention of a Wan block through an `attend(q, k, v)` kernel (`attention_function`): diffusers'
    projections and norms, Wan's rotary embedding, the kernel, the output projection. Only for attn1 (no
    image keys, no mask); cross-attention keeps diffusers' processor."""

    def __init__(self, name: str, attend: Callable | None = None) -> None:
        self.name = name
        self.attend = attend or attention_function(name)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None:
            raise ValueError(
                f"attention kernel {self.name!r} runs self-attention only (no mask, no image keys)"
            )
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        out = self.attend(query, key, value).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _set_extra_attention(transformer: nn.Module, name: str) -> None:
    attend = attention_function(name)
    for block in transformer.blocks:
        block.attn1.set_processor(KernelAttnProcessor(name, attend))


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
        package = attention_package(name)
        if package is not None and not _installed(package):
            install = f" ({EXTRA_ATTENTION[name].install})" if name in EXTRA_ATTENTION else ""
            results[name] = f"unavailable: needs the {package} package, which is not installed{install}"
            continue
        if (
            name in EXTRA_ATTENTION
            and torch.cuda.get_device_capability(device) < EXTRA_ATTENTION[name].min_capability
        ):
            results[name] = f"unavailable: needs compute capability {EXTRA_ATTENTION[name].min_capability}"
            continue
        try:
            attend = attention_function(name)
            with torch.inference_mode():
                output = attend(query, key, value)
                error = relative_error(output, reference)
                if not error <= _ATTENTION_TOLERANCE:  # NaN fails too
                    results[name] = f"wrong result: relative error {error:.3g} vs float32 SDPA"
                    continue
                times = []
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    attend(query, key, value)
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
    if backend != "auto":
        check_attention_installed(backend)
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
    if backend in EXTRA_ATTENTION:  # self-attention through the kernel; cross-attention stays native
        _set_extra_attention(transformer, backend)
        return backend
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


FP8_COMPUTE_CHOICES = ("off", "rowwise", "tensor")
_FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(_FP8).max  # 448


def _fp8_quantize(x: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` `[M, K]` as float8 e4m3 and its float32 scale (`[M, 1]` per row, or `[]` per tensor), so that
    `fp8 * scale ~ x`: each row (or the whole tensor) spans float8's range."""
    amax = x.abs().amax(dim=-1, keepdim=True) if rowwise else x.abs().amax()
    scale = (amax.float() / _FP8_MAX).clamp_min(1e-12)
    return (x.float() / scale).clamp(-_FP8_MAX, _FP8_MAX).to(_FP8), scale


class Fp8ComputeLinear(nn.Linear):
    """A Linear whose matrix product runs in float8 (`torch._scaled_mm`): the input is quantized per token
    (rowwise) or per tensor, the weight per output row (rowwise) or per tensor, on every call (no stored
    copy: a LoRA re-fused into `weight`, offloading and fp8 storage all keep working; quantizing the
    weight costs one pass over it, small next to the product at video token counts). The output is in the
    input's dtype. Made by `enable_fp8_compute` by switching a Linear's class: parameters are untouched."""

    fp8_rowwise: bool = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        shape = input.shape
        x = input.reshape(-1, shape[-1])
        x8, x_scale = _fp8_quantize(x, self.fp8_rowwise)
        w8, w_scale = _fp8_quantize(self.weight, self.fp8_rowwise)  # [N, K], [N, 1] or []
        out_dtype = (
            input.dtype if input.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.float32
        )
        if self.fp8_rowwise:
            scale_a, scale_b = x_scale, w_scale.reshape(1, -1)
        else:
            scale_a, scale_b = x_scale.reshape(()), w_scale.reshape(())
        if input.is_cuda and self.fp8_rowwise:
            out_dtype = torch.bfloat16  # CUDA's rowwise kernel writes bf16
        out = torch._scaled_mm(x8, w8.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(input.dtype).reshape(*shape[:-1], -1)


def enable_fp8_compute(transformer: nn.Module, scaling: str = "rowwise") -> int:
    """Run the matrix products of every Linear inside the DiT blocks (attention projections, feed-forward) in
    float8 with `scaling` "rowwise" (per token x per output channel) or "tensor" scales, in place; the
    embedders, norms and output head stay as they are. Layers whose sizes float8 kernels cannot take (in or
    out features not a multiple of 16) are left alone. Returns how many layers were switched."""
    if scaling not in FP8_COMPUTE_CHOICES[1:]:
        raise ValueError(
            f"fp8 compute scaling {scaling!r}: choose one of {', '.join(FP8_COMPUTE_CHOICES[1:])}"
        )
    switched = 0
    for block in transformer.blocks:
        for module in block.modules():
            if type(module) in (nn.Linear, Fp8ComputeLinear) and not (
                module.in_features % 16 or module.out_features % 16
            ):
                module.__class__ = Fp8ComputeLinear
                module.fp8_rowwise = scaling == "rowwise"
                switched += 1
    return switched


def disable_fp8_compute(transformer: nn.Module) -> int:
    """Undo `enable_fp8_compute` (the layers become plain Linears again); returns how many."""
    switched = 0
    for module in transformer.modules():
        if type(module) is Fp8ComputeLinear:
            module.__class__ = nn.Linear
            switched += 1
    return switched


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
