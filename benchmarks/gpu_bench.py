"""Speed and memory of the Pusa DiT at real size against stock diffusers, plus text encoder, VAE and an
end-to-end estimate. Random weights: the numbers are timings, not pictures.

Rows, per size (480x832x81 = 32,760 tokens; 1280x720x81 = 75,600 tokens), one model per row:
  ours-fused       PusaTransformer3DModel, per-frame timesteps [B, F] (an I2V vector: frame 0 at 0.2 t),
                   a rank-512 LoRA on Pusa's targets fused at alpha 1.4 (weights.lora.LoraFuser)
  ours-adapter     the same, the LoRA as an unfused PEFT adapter through diffusers at alpha 1.4
  diffusers-stock  WanTransformer3DModel, per-token timesteps [B, L], the same LoRA through diffusers' PEFT
  ours-compile     ours-fused with torch.compile of the repeated blocks                      (--compile)
  ours-fp8         ours-fused with float8 weights; relative error of the output vs bf16      (--fp8)
  tier-<name>      ours (no LoRA) under memory tier full / balanced / low (first size only)
  speed-*          (--parts speed) one Pusa DiT without LoRA: base, CFG batch, fp8 compute rowwise / tensor,
                   each installed attention extra, the combination (fp8 rowwise + the fastest attention +
                   CFG batch) eager and compiled; error vs the base bf16 forward; base and combination also
                   time a CFG step through the step cache computed and skipped (the 10-step estimates with
                   --cache-skips of 10 steps skipped). --parts attention adds each kernel's error vs cuDNN.
then umT5-XXL encoding of 512 tokens (resident, and as the "full" tier runs it: onload, encode, offload),
Wan VAE encode of one 480p image and decode of 21 latent frames, and a 10-step I2V estimate at 480p:
2 text encodes (prompt, negative) + VAE encode + 10 CFG steps (2 forwards each) + VAE decode.
Per DiT row: ms per forward and per CFG step (median), peak GPU memory, and model FLOP utilisation
against 989 TFLOP/s (H100 SXM dense bf16), FLOPs from `pusa.runtime.kernels.dit_forward_flops`.

  python benchmarks/gpu_bench.py --json bench.json     # real Wan2.1-14B shapes on CUDA (~80 GB GPU)
  python benchmarks/gpu_bench.py --tiny                 # the same code paths at tiny size on the CPU
  python benchmarks/gpu_bench.py --layers 2 --repeats 1    # real widths, 2 of 40 blocks: a quick check
A full real run with --compile --fp8 takes more than 10 minutes; split it and merge the results:
  python benchmarks/gpu_bench.py --parts dit,text,vae --json a.json
  python benchmarks/gpu_bench.py --parts tiers,compile,fp8 --sizes 480p --json b.json
  python benchmarks/gpu_bench.py --merge a.json b.json --json all.json
The issue-19 speed rows in one go per size: `bash benchmarks/gpu_speed_run.sh 480p|720p OUT_DIR`.
The JSON is rewritten after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.utils import logging as diffusers_logging
from transformers import UMT5Config, UMT5EncoderModel

from pusa.caching import StepCache
from pusa.model import PusaTransformer3DModel
from pusa.runtime.kernels import (
    AUTO_ATTENTION_CANDIDATES,
    EXTRA_ATTENTION,
    apply_attention_backend,
    attention_backend_timings,
    attention_function,
    compile_blocks,
    disable_fp8_compute,
    dit_forward_flops,
    enable_fp8_compute,
    enable_fp8_weights,
    fastest_attention_backend,
    relative_error,
)
from pusa.runtime.memory import MEMORY_TIERS, apply_memory_tier, module_bytes
from pusa.sampling import cfg_text_batch, guided_velocity
from pusa.schedule import flow_sigmas
from pusa.weights.lora import PUSA_LORA_TARGETS, LoraFuser, LoraWeights, attach_lora_adapter
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


# ---------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call in ms: CUDA events on a GPU, perf_counter elsewhere."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """The median ms of `repeats` calls after `warmup` calls, and `first_ms`, the first call of all (which
    pays for compilation and autotuning)."""
    first = time_ms(fn, device) if warmup > 0 else None
    for _ in range(warmup - 1):
        fn()
    times = [time_ms(fn, device) for _ in range(repeats)]
    return {"first_ms": times[0] if first is None else first, "ms": statistics.median(times)}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---------------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------------


def build_dit(cls: type, spec: Spec, seed: int = 0) -> torch.nn.Module:
    """A random DiT created directly on the device in the run dtype, with the modules diffusers keeps in
    float32 (`_keep_in_fp32_modules`) in float32, as `from_pretrained` and `weights.checkpoints` leave them."""
    torch.manual_seed(seed)
    with torch.device(spec.device), default_dtype(spec.dtype):
        model = cls(**spec.dit)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        if keep.intersection(name.split(".")):
            param.data = param.data.float()
    return model.eval().requires_grad_(False)


def random_lora(spec: Spec, seed: int = 1) -> LoraWeights:
    """A LoRA of `spec.lora_rank` on Pusa's targets in every block, drawn on the device, kept on the CPU
    (where `load_lora` leaves a real one)."""
    dim = spec.dit["num_attention_heads"] * spec.dit["attention_head_dim"]
    shapes = {target: (dim, dim) for target in LORA_TARGETS}  # (in, out)
    shapes["ffn.net.0.proj"] = (dim, spec.dit["ffn_dim"])
    shapes["ffn.net.2"] = (spec.dit["ffn_dim"], dim)
    generator = torch.Generator(spec.device).manual_seed(seed)
    rank = spec.lora_rank
    modules = {}
    for block in range(spec.dit["num_layers"]):
        for target, (fan_in, fan_out) in shapes.items():
            options = dict(generator=generator, device=spec.device, dtype=spec.dtype)
            down = torch.randn(rank, fan_in, **options) / math.sqrt(fan_in)
            up = torch.randn(fan_out, rank, **options) * (0.02 / math.sqrt(rank))
            modules[f"blocks.{block}.{target}"] = (down.cpu(), up.cpu())
    return LoraWeights(modules=modules, source=f"random rank-{rank} LoRA")


@dataclass
class DitInputs:
    latents: torch.Tensor  # [1, 16, F, h, w]
    timestep: torch.Tensor  # [1, F] (ours) or [1, L] (stock, per token)
    text: torch.Tensor  # [1, text_len, text_dim]
    negative_text: torch.Tensor
    sigma: torch.Tensor  # [F] this step's per-frame sigma
    sigma_next: torch.Tensor  # [F]


def dit_inputs(spec: Spec, size: Size, per_token: bool) -> DitInputs:
    generator = torch.Generator().manual_seed(2)
    sigmas = flow_sigmas(NUM_STEPS, 5.0)
    scale = torch.ones(size.num_latent_frames)
    scale[0] = I2V_NOISE_MULTIPLIER
    sigma, sigma_next = scale * float(sigmas[1]), scale * float(sigmas[2])
    timestep = (1000.0 * sigma).unsqueeze(0)  # [1, F]
    if per_token:
        _, p_h, p_w = spec.dit["patch_size"]
        tokens_per_frame = (size.height // p_h) * (size.width // p_w)
        timestep = timestep.repeat_interleave(tokens_per_frame, dim=1)  # [1, L]
    shape = (1, spec.dit["in_channels"], size.num_latent_frames, size.height, size.width)
    text_shape = (1, spec.text_len, spec.dit["text_dim"])

    def draw(*dims: int) -> torch.Tensor:
        return torch.randn(*dims, generator=generator).to(spec.device, spec.dtype)

    return DitInputs(
        latents=draw(*shape),
        timestep=timestep.to(spec.device),
        text=draw(*text_shape),
        negative_text=draw(*text_shape),
        sigma=sigma.to(spec.device),
        sigma_next=sigma_next.to(spec.device),
    )


def forward_fn(model: torch.nn.Module, x: DitInputs) -> Callable[[], torch.Tensor]:
    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x.latents, x.timestep, x.text, return_dict=False)[0]

    return forward


def cfg_step_fn(
    model: torch.nn.Module, x: DitInputs, batched: bool = False, cache: StepCache | None = None
) -> Callable[[], torch.Tensor]:
    """One sampler step as `pusa.sampling.sample` takes it: two forwards (or one of batch 2: `batched`), the
    CFG mix, the Euler update; through `cache` (the model's block runner) if given."""
    batched_text = cfg_text_batch(x.text, x.negative_text) if batched else None

    def velocity(latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return model(latents, timestep, text, return_dict=False)[0]

    if cache is not None:
        velocity = cache.wrap(velocity)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            v = guided_velocity(velocity, x.latents, x.timestep, x.text, x.negative_text, CFG, batched_text)
            dt = (x.sigma_next - x.sigma).view(1, 1, -1, 1, 1)
            return (x.latents.float() + v.float() * dt).to(x.latents.dtype)

    return step


def attention_of(model: torch.nn.Module) -> str:
    backend = getattr(model.blocks[0].attn1.processor, "_attention_backend", None)
    return getattr(backend, "value", backend) or "default"


# ---------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------


@dataclass
class Results:
    meta: dict[str, Any]
    json_path: Path | None
    strict: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.log(f"{row['part']:<5} {row['name']:<22} {row.get('size', ''):<14} {row['status']}")
        self.save()

    def save(self) -> None:
        if self.json_path is not None:
            estimates = end_to_end(self.rows, self.meta.get("cache_skips", CACHE_SKIPS))
            payload = {**self.meta, "rows": self.rows, "end_to_end": estimates}
            self.json_path.write_text(json.dumps(payload, indent=2) + "\n")

    def run(self, part: str, name: str, size: Size | None, device: torch.device, body: Callable[[], dict]):
        """Run one row; an OOM (or, unless strict, any error) is recorded and the run goes on."""
        row: dict[str, Any] = {"part": part, "name": name, "size": size.label if size else ""}
        reset_peak(device)
        try:
            row.update(body())
            row["status"] = "ok"
        except Exception as error:
            if not is_oom(error) and self.strict:
                raise
            row["status"] = "OOM" if is_oom(error) else f"error: {type(error).__name__}: {error}"[:400]
        free_memory(device)
        self.add(row)
        return row


def dit_tokens(spec: Spec, size: Size) -> int:
    p_t, p_h, p_w = spec.dit["patch_size"]
    return (size.num_latent_frames // p_t) * (size.height // p_h) * (size.width // p_w)


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


def tiers_part(spec: Spec, size: Size, attention: str, results: Results) -> None:
    """Each tier on the same seeded weights and inputs; the output of every tier after the first is
    compared with the first's (offloading must not change a bit)."""
    reference: dict[str, torch.Tensor] = {}
    for tier in MEMORY_TIERS:

        def body(tier: str = tier) -> dict:
            # No LoRA here: a fused LoRA changes the weights' values, not the cost of moving or using them,
            # and fusing 14B weights (~47 s, mostly pinning the pristine copies) would triple this part.
            model = build_dit(PusaTransformer3DModel, spec)
            apply_attention_backend(model, attention, spec.device)
            model.to("cpu")  # where a real load leaves it before the tier places it
            free_memory(spec.device)
            started = time.perf_counter()
            placement = apply_memory_tier({"transformer": model}, tier, spec.device)
            setup_s = time.perf_counter() - started
            row = dit_row(spec, size, model, per_token=False)
            output = forward_fn(model, dit_inputs(spec, size, False))().float().cpu()
            if reference:
                row["rel_error_vs_first_tier"] = relative_error(output, reference["output"])
            else:
                reference["output"] = output
            return {**row, "tier_setup_s": setup_s, "placement": placement["transformer"]}

        results.run("tiers", f"tier-{tier}", size, spec.device, body)


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


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _find(rows: list[dict], name: str, size_prefix: str | None = None) -> dict | None:
    for row in rows:
        size_ok = size_prefix is None or str(row.get("size", "")).startswith(size_prefix)
        if row["name"] == name and size_ok and row.get("status") == "ok":
            return row
    return None


def end_to_end(rows: list[dict], cache_skips: int = CACHE_SKIPS) -> dict[str, Any]:
    """10-step I2V at the first size: 2 text encodes + VAE encode + 10 CFG steps + VAE decode, per DiT
    variant measured there. Text encoding as the "full" tier runs it (onload, encode, offload). Rows with
    cache timings get a second estimate with `cache_skips` of the 10 steps skipped."""
    text = _find(rows, "umt5 encode (full tier)") or _find(rows, "umt5 encode (resident)")
    vae_encode = _find(rows, "wan vae encode")
    vae_decode = _find(rows, "wan vae decode")
    if not (text and vae_encode and vae_decode):
        return {}
    decode_size = vae_decode["size"]
    estimates = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("size") != decode_size or "ms_cfg_step" not in row:
            continue
        total = 2 * text["ms"] + vae_encode["ms"] + NUM_STEPS * row["ms_cfg_step"] + vae_decode["ms"]
        estimates[row["name"]] = {
            "size": decode_size,
            "total_s": total / 1e3,
            "text_s": 2 * text["ms"] / 1e3,
            "vae_encode_s": vae_encode["ms"] / 1e3,
            "denoise_s": NUM_STEPS * row["ms_cfg_step"] / 1e3,
            "vae_decode_s": vae_decode["ms"] / 1e3,
        }
        if "ms_cfg_step_cache_skipped" in row and cache_skips:
            # computed steps pay the cache's criterion too; skipped ones only embeddings, criterion and head
            denoise = (NUM_STEPS - cache_skips) * row["ms_cfg_step_cache_computed"]
            denoise += cache_skips * row["ms_cfg_step_cache_skipped"]
            total = 2 * text["ms"] + vae_encode["ms"] + denoise + vae_decode["ms"]
            estimates[f"{row['name']} + cache ({cache_skips} of {NUM_STEPS} steps skipped)"] = {
                **estimates[row["name"]],
                "total_s": total / 1e3,
                "denoise_s": denoise / 1e3,
                "cache_skips": cache_skips,
            }
    return estimates


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(meta: dict[str, Any], rows: list[dict]) -> None:
    print(f"\n{meta.get('mode', '?')} mode on {meta.get('device_name', '?')}; torch {meta.get('torch')}, "
          f"diffusers {meta.get('diffusers')}")  # fmt: skip
    attention = meta.get("attention", {})
    print(f"attention backend: {attention.get('selected')}")
    for label, timings in (attention.get("timings") or {}).items():
        cells = [
            f"{name} {ms:.2f}" if isinstance(ms, float) else f"{name} {ms[:40]}"
            for name, ms in timings.items()
        ]
        print(f"  ms per self-attention at {label}: " + "; ".join(cells))
    for label, errors in (attention.get("errors") or {}).items():
        cells = [f"{name} {error:.2e}" for name, error in errors.items()]
        print(f"  relative error vs cuDNN attention at {label}: " + "; ".join(cells))
    header = (
        f"{'row':<26}{'size':<14}{'tokens':>7}{'ms/fwd':>10}{'ms/CFG':>10}{'peak GiB':>9}"
        f"{'TFLOP/s':>10}{'MFU':>7}  notes"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['name']:<26}{row.get('size', ''):<14}{'':>7}  {row['status']}")
            continue
        if row["name"].endswith("(setup)"):
            extras = {k: v for k, v in row.items() if k.endswith(("_s", "_gib")) and k not in ("status",)}
            notes = ", ".join(f"{k}={v:.2f}" for k, v in extras.items())
            print(f"{row['name']:<26}{'':<14}{'':>7}  {notes}")
            continue
        ms = row.get("ms_forward", row.get("ms"))
        notes = []
        for key in ("attention", "placement", "compile_backend", "pixels", "latent_frames"):
            if key in row:
                notes.append(f"{key}={row[key]}")
        if "rel_error_vs_bf16" in row:
            notes.append(f"rel.err vs bf16={row['rel_error_vs_bf16']:.2e}")
        if "rel_error_vs_first_tier" in row:
            notes.append(f"rel.err vs tier-full={row['rel_error_vs_first_tier']:.2e}")
        if row.get("tiled"):
            notes.append("tiled")
        for key in ("fp8_compute", "cfg_batch", "compiled"):
            if row.get(key):
                notes.append(f"{key}={row[key]}")
        if "ms_cfg_step_cache_skipped" in row:
            notes.append(
                f"cache: computed {row['ms_cfg_step_cache_computed']:.1f} / skipped "
                f"{row['ms_cfg_step_cache_skipped']:.1f} ms per CFG step"
            )
        mfu = row.get("mfu")
        print(
            f"{row['name']:<26}{row.get('size', ''):<14}{_fmt(row.get('tokens'), 'd'):>7}{_fmt(ms, '.1f'):>10}"
            f"{_fmt(row.get('ms_cfg_step'), '.1f'):>10}{_fmt(row.get('peak_gib'), '.2f'):>9}"
            f"{_fmt(row.get('tflops_per_s'), '.3g'):>10}{'-' if mfu is None else f'{100 * mfu:.1f}%':>7}"
            f"  {', '.join(notes)}"
        )
    estimates = end_to_end(rows, meta.get("cache_skips", CACHE_SKIPS))
    if estimates:
        print(
            f"\n{NUM_STEPS}-step I2V estimate (2 text encodes + VAE encode + {NUM_STEPS} CFG steps + VAE decode):"
        )
        for name, e in estimates.items():
            print(
                f"  {name:<24}{e['total_s']:8.2f} s  = text {e['text_s']:.2f} + encode {e['vae_encode_s']:.2f} "
                f"+ denoise {e['denoise_s']:.2f} + decode {e['vae_decode_s']:.2f}  ({e['size']})"
            )


def merge(paths: list[Path], json_path: Path | None) -> None:
    payloads = [json.loads(path.read_text()) for path in paths]
    devices = {p.get("device_name") for p in payloads}
    if len(devices) > 1:
        print(
            f"warning: merging results from different devices: {sorted(map(str, devices))}", file=sys.stderr
        )
    meta = {k: v for k, v in payloads[0].items() if k not in ("rows", "end_to_end")}
    meta["merged_from"] = [str(path) for path in paths]
    rows = [row for payload in payloads for row in payload["rows"]]
    print_table(meta, rows)
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {**meta, "rows": rows, "end_to_end": end_to_end(rows, meta.get("cache_skips", CACHE_SKIPS))},
                indent=2,
            )
            + "\n"
        )


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny dims on the CPU (or --device), every part")
    parser.add_argument("--device", default=None, help="default: cuda for real size, cpu for --tiny")
    parser.add_argument("--parts", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--sizes", default="480p,720p", help="comma-separated subset of 480p,720p")
    parser.add_argument("--compile", action="store_true", help="add the ours-compile rows")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    parser.add_argument("--fp8", action="store_true", help="add the ours-fp8 rows")
    parser.add_argument("--attention", default="auto", help="attention backend, or auto (fastest that runs)")
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per row (median)")
    parser.add_argument(
        "--layers", type=int, default=None, help="DiT blocks (default: the model's); fewer for a quick check"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                        help="raise on errors other than OOM (default: on with --tiny)")  # fmt: skip
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="print and merge result files")
    parser.add_argument(
        "--cache-skips", type=int, default=CACHE_SKIPS,
        help="steps of 10 the step cache skips, for the end-to-end estimate (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--speed-compile", action=argparse.BooleanOptionalAction, default=True,
        help="speed part: also the combination compiled (default: on)",
    )  # fmt: skip
    parser.add_argument(
        "--speed-all-sizes", action="store_true",
        help="speed part: every row at every size (default: fp8-tensor only at the first size)",
    )  # fmt: skip
    return parser.parse_args(argv)


@torch.no_grad()  # not set_grad_enabled(False): the caller (a test) keeps its grad mode
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge:
        merge(args.merge, args.json)
        return
    diffusers_logging.set_verbosity_error()  # "attention backends are experimental", per model
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny (CPU) or on a GPU machine")
    spec = (tiny_spec if args.tiny else real_spec)(device, args.repeats, args.compile_backend)
    if args.layers is not None:
        spec = replace(spec, dit={**spec.dit, "num_layers": args.layers})
    # --tiny: every part but the speed rows, which its own smoke test runs (tests/test_gpu_bench.py)
    tiny_parts = [p for p in PARTS if p != "speed"]
    parts = args.parts.split(",") if args.parts else list(tiny_parts if args.tiny else DEFAULT_PARTS)
    if args.compile and "compile" not in parts:
        parts.append("compile")
    if args.fp8 and "fp8" not in parts:
        parts.append("fp8")
    unknown = [p for p in parts if p not in PARTS]
    bad_sizes = [s for s in args.sizes.split(",") if s not in spec.sizes]
    if unknown or bad_sizes:
        sys.exit(f"--parts must be among {','.join(PARTS)} and --sizes among {','.join(spec.sizes)}; "
                 f"got {unknown or ''} {bad_sizes or ''}")  # fmt: skip
    sizes = [spec.sizes[key] for key in args.sizes.split(",")]
    # Each backend timed at every size's own sequence length (the winner changes with length); "auto"
    # picks the fastest at the first size.
    timings_by_size: dict[str, dict] = {}
    if device.type == "cuda":
        heads, head_dim = spec.dit["num_attention_heads"], spec.dit["attention_head_dim"]
        for size in sizes:
            timings_by_size[size.label] = attention_backend_timings(
                device, AUTO_ATTENTION_CANDIDATES, num_heads=heads, head_dim=head_dim,
                seq_len=dit_tokens(spec, size), repeats=3,
            )  # fmt: skip
    attention = args.attention
    if attention == "auto":
        attention = fastest_attention_backend(timings_by_size.get(sizes[0].label, {}))
    meta = {
        "mode": spec.mode,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "dtype": str(spec.dtype),
        "peak_flops": PEAK_FLOPS,
        "attention": {"requested": args.attention, "selected": attention, "timings": timings_by_size},
        "lora": {"rank": spec.lora_rank, "alpha": LORA_ALPHA},
        "dit_layers": spec.dit["num_layers"],
        "parts": parts,
        "cache_skips": args.cache_skips,
        "command": "python benchmarks/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if device.type == "cuda" and "attention" in parts:
        meta["attention"]["errors"] = {
            size.label: attention_errors(device, spec, size, timings_by_size[size.label]) for size in sizes
        }
    strict = args.tiny if args.strict is None else args.strict
    results = Results(meta=meta, json_path=args.json, strict=strict)
    results.log(f"{spec.mode} mode on {meta['device_name']}, parts {parts}, attention {attention}")

    dit_variants = [v for v in DIT_VARIANTS if "dit" in parts]
    dit_variants += [v for v, part in (("ours-compile", "compile"), ("ours-fp8", "fp8")) if part in parts]
    if dit_variants:
        started = time.perf_counter()
        lora = random_lora(spec)
        results.log(f"random rank-{spec.lora_rank} LoRA drawn in {time.perf_counter() - started:.1f}s")
        dit_part(spec, dit_variants, sizes, lora, attention, results)
        del lora
    if "speed" in parts:
        speed_part(spec, sizes, attention, results, args.speed_compile, args.speed_all_sizes)
    if "tiers" in parts:
        tiers_part(spec, sizes[0], attention, results)
    if "text" in parts:
        text_part(spec, results)
    if "vae" in parts:
        vae_part(spec, spec.sizes["480p"], results)
    results.save()
    print_table(meta, results.rows)


if __name__ == "__main__":
    main()
