"""What the context-parallel code path costs on one device (N = 1): the Pusa DiT's forward with the
context-parallel hooks on a 1-rank process group (Ulysses, ring attention, all-gather) against the plain
forward, same weights and inputs; plus the largest difference of the outputs (it should be rounding).

With one rank nothing is sent, so the difference is the hooks' own work: the token-split bookkeeping, the
modulation cut to the rank's slice, the collectives' calls on a group of one, and, for the ring, the
attention computed through the log-sum-exp kernel instead of the fused one. On a GPU this is the single-GPU
overhead the issue asks for; on a CPU at the tiny size it is mostly Python.

    PYTHONPATH=src python benchmarks/parallel_overhead.py --tiny                 # CPU, tiny DiT (gloo)
    PYTHONPATH=src python benchmarks/parallel_overhead.py --layers 4 --json o.json   # CUDA, Wan-14B widths (nccl)

On CUDA the DiT has Wan2.1-14B's widths and `--layers` of its 40 blocks (the per-block cost is what
compares; 40 blocks need ~30 GB in bf16 and run too long for a short device call), at 480p and 720p.
Prints a table; `--json` writes the raw rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench_parts.models import build_dit, dit_inputs, forward_fn
from gpu_bench_parts.specs import real_spec, tiny_spec
from gpu_bench_parts.timing import measure, peak_gib, reset_peak
from pusa.model import PusaTransformer3DModel
from pusa.parallel.context import enable_context_parallel
from pusa.parallel.launch import free_port

STRATEGIES = ("ulysses", "ring", "allgather")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny DiT on the CPU (default: CUDA, real widths)"
    )
    parser.add_argument("--layers", type=int, default=4, help="blocks of the real-width DiT (default: 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="480p,720p")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --tiny for the CPU")
    spec = (tiny_spec if args.tiny else real_spec)(device, args.repeats, None)
    if not args.tiny:
        spec = replace(spec, dit={**spec.dit, "num_layers": args.layers})
    if args.tiny:
        spec = replace(spec, dtype=torch.float32)  # the CPU's own precision
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = build_dit(PusaTransformer3DModel, spec)
        rows = []
        for key in args.sizes.split(","):
            size = spec.sizes[key]
            x = dit_inputs(spec, size, per_token=False)
            reset_peak(device)
            plain_out = forward_fn(model, x)()
            plain = measure(forward_fn(model, x), device, spec.warmup, spec.repeats)
            rows.append({"size": size.label, "path": "plain (today's)", **plain, "peak_gib": peak_gib(device),
                         "max_abs_diff": 0.0})  # fmt: skip
            for strategy in STRATEGIES:
                handle = enable_context_parallel(model, None, strategy)
                try:
                    reset_peak(device)
                    out = forward_fn(model, x)()
                    timing = measure(forward_fn(model, x), device, spec.warmup, spec.repeats)
                    diff = (out.float() - plain_out.float()).abs().max().item()
                finally:
                    handle.remove()
                rows.append({"size": size.label, "path": f"context parallel, 1 rank ({strategy})", **timing,
                             "peak_gib": peak_gib(device), "max_abs_diff": diff,
                             "overhead_pct": 100 * (timing["ms"] / plain["ms"] - 1)})  # fmt: skip
                print(rows[-1], flush=True)
    finally:
        dist.destroy_process_group()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    layers = spec.dit["num_layers"]
    print(f"\nPusa DiT forward, {name}, {spec.dtype}, {layers} blocks, {backend} group of 1 rank\n")
    print(
        "| size | path | ms / forward | overhead | peak GiB | max abs diff |\n|---|---|---:|---:|---:|---:|"
    )
    for row in rows:
        overhead = f"{row['overhead_pct']:+.1f}%" if "overhead_pct" in row else ""
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else ""
        print(
            f"| {row['size']} | {row['path']} | {row['ms']:.1f} | {overhead} | {peak} | {row['max_abs_diff']:.2e} |"
        )
    if args.json:
        meta = {"device": name, "dtype": str(spec.dtype), "layers": layers, "backend": backend,
                "torch": torch.__version__, "command": " ".join(sys.argv)}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
