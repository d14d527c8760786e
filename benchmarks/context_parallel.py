"""Context parallel: per-step time 1 vs 2 and 4 ranks on CPU (pusa-tiny; Ulysses, ring attention,
CFG-parallel, and 4 ranks as 2 CFG groups x 2 context-parallel ranks), and the bytes a rank sends per
step at Wan2.1-14B sizes (computed from shapes). Prints tables.

    PYTHONPATH=src python benchmarks/context_parallel.py [--ranks 2 4] [--steps 6]

On CPU the parallel runs are expected to be slower: the tiny model's attention is cheap and every layer pays
its collectives over loopback TCP (gloo); 4 ranks on a 2-core machine also share the cores. The numbers say
what the parallel path costs, not what GPUs gain.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from pusa.parallel.context import communicated_bytes
from pusa.parallel.launch import LoadSpec, ParallelRunner
from pusa.pipeline import GenerationRequest, PusaPipeline

WAN_14B = dict(layers=40, dim=5120, heads=40)
# 81 frames -> 21 latent frames; 8x VAE, patch 2x2: 480p 832x480 -> 30x52 tokens/frame, 720p 1280x720 -> 45x80
WAN_SIZES = {"480p (832x480, 81 frames)": 21 * 30 * 52, "720p (1280x720, 81 frames)": 21 * 45 * 80}


def step_times(pipe: PusaPipeline, request: GenerationRequest) -> float:
    """Median seconds per sampling step (callback to callback)."""
    stamps = []
    pipe.generate(request, lambda info: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in itertools.pairwise(stamps))


def measure(sizes: list[tuple[int, int, int]], steps: int, ranks: list[int]) -> list[tuple[str, str, float]]:
    torch.set_num_threads(1)  # one core per rank, the same for the 1-rank baseline
    rows = []
    requests = {
        f"{w}x{h}, {f} frames": GenerationRequest(task="t2v", prompt="a red circle slides to the left", seed=1,
                                                   num_frames=f, width=w, height=h, num_inference_steps=steps)
        for w, h, f in sizes
    }  # fmt: skip
    single = PusaPipeline.from_model("pusa-tiny")
    for name, request in requests.items():
        step_times(single, request)  # warm-up
        rows.append((name, "1 rank", step_times(single, request)))
    for world in ranks:
        layouts = [("context", "ulysses"), ("context", "ring"), ("cfg", "auto")]
        with ParallelRunner(world, "context", LoadSpec("pusa-tiny", threads=1)) as runner:
            for mode, strategy in layouts:
                runner.set_mode(mode, strategy)
                label = LABELS[(mode, strategy)].format(n=world, half=world // 2)
                for name, request in requests.items():
                    step_times(runner.pipe, request)
                    rows.append((name, label, step_times(runner.pipe, request)))
    return rows


LABELS = {
    ("context", "ulysses"): "{n} ranks, context parallel (Ulysses)",
    ("context", "ring"): "{n} ranks, context parallel (ring attention)",
    ("cfg", "auto"): "{n} ranks, CFG-parallel (2 groups of {half})",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    rows = measure([(64, 64, 17), (128, 128, 33)], args.steps, args.ranks)
    print(
        "\npusa-tiny t2v (cfg 3.0: two DiT passes per step), CPU, one torch thread per rank, gloo on loopback\n"
    )
    print("| clip | ranks | ms per step |\n|---|---|---:|")
    for name, label, seconds in rows:
        print(f"| {name} | {label} | {seconds * 1000:.1f} |")

    print("\nWan2.1-14B (40 layers, dim 5120, 40 heads), bf16, per sampling step with CFG (2 DiT passes).")
    print("Ulysses per pass and rank: 40 x 4 (L/n) D (n-1)/n (q,k,v and output all-to-alls) + (L/n) D (n-1)")
    print(
        "(the final all-gather) elements; ring attention (where n does not divide the 40 heads): 40 x 2 (L/n)"
    )
    print("D (n-1) (the key/value slices around the ring) + (L/n) D (n-1); 2 bytes each. CFG-parallel on N")
    print(
        "ranks: one pass per group of n = N/2 ranks (plus one latent-sized velocity to rank 0, negligible).\n"
    )
    print(
        "| size | tokens L | N ranks | layout | GB sent per rank per step | GB all ranks per step |"
        "\n|---|---:|---:|---|---:|---:|"
    )
    layouts = [(2, "context", 2), (4, "context", 4), (8, "context", 8), (3, "context", 3), (6, "context", 6),
               (4, "cfg", 2), (8, "cfg", 4)]  # fmt: skip
    for size, tokens in WAN_SIZES.items():
        for world, mode, n in layouts:
            strategy = "ulysses" if WAN_14B["heads"] % n == 0 else "ring"
            b = communicated_bytes(tokens, WAN_14B["dim"], WAN_14B["layers"], n, 2, strategy)
            passes = 2 if mode == "context" else 1  # per rank: both passes, or its group's one
            label = (
                f"context parallel, {strategy}" if mode == "context" else f"2 CFG groups x {n} ({strategy})"
            )
            print(
                f"| {size} | {tokens} | {world} | {label} | {passes * b['per_rank'] / 1e9:.2f} "
                f"| {passes * b['per_rank'] * world / 1e9:.2f} |"
            )


if __name__ == "__main__":
    main()
