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

This script reads the flags and runs the parts; the rows are built in `benchmarks/gpu_bench_parts/`, one
module per kind of row (`dit_rows`, `speed_rows`, `tier_rows`, `encoder_rows`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import diffusers
import torch
from diffusers.utils import logging as diffusers_logging

from pusa.runtime.kernels import (
    AUTO_ATTENTION_CANDIDATES,
    attention_backend_timings,
    fastest_attention_backend,
)

# Its parts sit beside it: importable when run as a script and when loaded by path (the tests).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench_parts.dit_rows import dit_part
from gpu_bench_parts.encoder_rows import text_part, vae_part
from gpu_bench_parts.models import random_lora
from gpu_bench_parts.report import end_to_end, merge, print_table
from gpu_bench_parts.results import Results
from gpu_bench_parts.specs import (
    CACHE_SKIPS,
    DEFAULT_PARTS,
    DIT_VARIANTS,
    LORA_ALPHA,
    PARTS,
    PEAK_FLOPS,
    dit_tokens,
    real_spec,
    tiny_spec,
)
from gpu_bench_parts.speed_rows import attention_errors, speed_part
from gpu_bench_parts.tier_rows import tiers_part

__all__ = ["end_to_end", "main", "parse_args"]  # end_to_end: the tests check the estimate


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
