"""The speed rows (--parts speed): one Pusa DiT without LoRA under each speed option, and their combination
eager and compiled, with the step cache's computed and skipped CFG steps; and each attention kernel's error
vs cuDNN (--parts attention).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from pusa.caching import StepCache
from pusa.model import PusaTransformer3DModel
from pusa.runtime.kernels import (
    EXTRA_ATTENTION,
    apply_attention_backend,
    attention_function,
    compile_blocks,
    disable_fp8_compute,
    dit_forward_flops,
    enable_fp8_compute,
    relative_error,
)

from .models import DitInputs, attention_of, build_dit, cfg_step_fn, dit_inputs, forward_fn
from .results import Results
from .specs import PEAK_FLOPS, Size, Spec, dit_tokens
from .timing import free_memory, peak_gib, reset_peak, time_ms


def speed_part(
    spec: Spec, sizes: list[Size], attention: str, results: Results, compile_too: bool, big_sizes: bool
) -> None:
    """One Pusa DiT (no LoRA: a fused LoRA changes the weights' values, not the cost), each speed option
    alone and combined, at every size (`big_sizes` False: the rows after the first two only at the first
    size). Each row: ms per forward and per CFG step, and the output's relative error against the plain
    bf16 forward of the same weights. The cache rows time a CFG step whose blocks are skipped (embeddings,
    the cache's criterion and the head) and a computed one through the cache (its overhead)."""
    state: dict[str, Any] = {}

    def setup() -> dict:
        started = time.perf_counter()
        model = build_dit(PusaTransformer3DModel, spec)
        apply_attention_backend(model, attention, spec.device)
        state["model"] = model
        state["processors"] = [block.attn1.processor for block in model.blocks]
        state["references"] = {
            size.label: forward_fn(model, dit_inputs(spec, size, False))().clone() for size in sizes
        }
        return {"build_s": time.perf_counter() - started, "attention": attention_of(model)}

    if results.run("speed", "speed (setup)", None, spec.device, setup)["status"] != "ok":
        return
    model = state["model"]

    def restore_attention() -> None:
        for block, processor in zip(model.blocks, state["processors"], strict=True):
            block.attn1.set_processor(processor)

    def row(size: Size, batched: bool = False, cache: bool = False, **notes: Any) -> Callable[[], dict]:
        def body() -> dict:
            x = dit_inputs(spec, size, False)
            reset_peak(spec.device)
            call = forward_fn(model, x)
            first_ms = time_ms(call, spec.device)  # warm-up (compilation, autotuning)
            output = call()
            times = [time_ms(call, spec.device) for _ in range(max(spec.repeats - 1, 1))]
            forward_ms = statistics.median(times)
            cfg_ms = time_ms(cfg_step_fn(model, x, batched), spec.device)
            flops = dit_forward_flops(
                spec.dit, size.num_latent_frames, size.height, size.width, spec.text_len
            )
            out = {
                "tokens": dit_tokens(spec, size),
                "ms_forward": forward_ms,
                "first_forward_ms": first_ms,
                "ms_cfg_step": cfg_ms,
                "cfg_batch": batched,
                "peak_gib": peak_gib(spec.device),
                "flops_forward": flops,
                "tflops_per_s": flops / (forward_ms / 1e3) / 1e12,
                "mfu": flops / (forward_ms / 1e3) / PEAK_FLOPS,
                "attention": attention_of(model),
                "rel_error_vs_bf16": relative_error(output, state["references"][size.label]),
                **notes,
            }
            if cache and size == sizes[0]:  # the end-to-end estimate is at the first size
                out.update(cache_timings(model, x, batched, spec))
            return out

        return body

    def rows(name: str, all_sizes: bool, **options: Any) -> None:
        for size in sizes if (all_sizes or big_sizes) else sizes[:1]:
            results.run("speed", name, size, spec.device, row(size, **options))

    rows("speed-base", True, cache=True)
    rows("speed-cfg-batch", True, batched=True)
    for scaling in ("rowwise", "tensor"):
        enable_fp8_compute(model, scaling)
        rows(f"speed-fp8-{scaling}", scaling == "rowwise", fp8_compute=scaling)
        disable_fp8_compute(model)
    for name in EXTRA_ATTENTION:
        timings = results.meta["attention"]["timings"].get(sizes[0].label, {})
        if not isinstance(timings.get(name), float):
            continue  # not installed or not usable here: the attention timings say why
        apply_attention_backend(model, name, spec.device)
        rows(f"speed-attn-{name}", True)
        restore_attention()
    # The combination: float8 products + the fastest attention ("auto" includes the extras) + CFG batch.
    enable_fp8_compute(model, "rowwise")
    rows("speed-combo", True, batched=True, cache=True, fp8_compute="rowwise")
    if compile_too:
        compile_blocks(model, backend=spec.compile_backend, dynamic=False)
        rows("speed-combo-compile", True, batched=True, cache=True, fp8_compute="rowwise", compiled=True)
    state.clear()
    free_memory(spec.device)


def cache_timings(model: torch.nn.Module, x: DitInputs, batched: bool, spec: Spec) -> dict[str, float]:
    """ms of a CFG step through `pusa.caching.StepCache` computed (threshold 0: its criterion's overhead)
    and skipped (the blocks' residual reused: embeddings, criterion, head)."""
    out = {}
    for label, threshold in (("computed", 0.0), ("skipped", math.inf)):
        cache = StepCache(threshold=threshold, num_steps=10**6, warmup_steps=0, max_skips=10**6)
        model.block_runner = cache
        try:
            step = cfg_step_fn(model, x, batched, cache)
            if label == "skipped":
                step()  # computes and keeps the residual; with threshold inf every later step skips
            out[f"ms_cfg_step_cache_{label}"] = time_ms(step, spec.device)
            out[f"cache_skipped_forwards_{label}"] = cache.skipped
        finally:
            model.block_runner = None
    return out


def attention_errors(
    device: torch.device, spec: Spec, size: Size, timings: dict[str, float | str]
) -> dict[str, float]:
    """Relative error of each attention kernel that ran against PyTorch's cuDNN attention on the same bf16
    inputs `[1, tokens, heads, head_dim]` (and cuDNN's own against float32 SDPA, under "_native_cudnn")."""
    generator = torch.Generator(device).manual_seed(0)
    shape = (1, dit_tokens(spec, size), spec.dit["num_attention_heads"], spec.dit["attention_head_dim"])
    q, k, v = (torch.randn(*shape, generator=generator, device=device, dtype=spec.dtype) for _ in range(3))
    with torch.inference_mode():
        fp32 = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2).float() for t in (q, k, v))
        )
        fp32 = fp32.transpose(1, 2)
        cudnn = attention_function("_native_cudnn")(q, k, v)
        errors = {"_native_cudnn": relative_error(cudnn, fp32)}
        for name, ms in timings.items():
            if isinstance(ms, float) and name != "_native_cudnn":
                errors[name] = relative_error(attention_function(name)(q, k, v), cudnn)
    return errors
