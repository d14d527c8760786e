"""Context parallel: per-step time 1 vs 2 ranks on CPU (pusa-tiny), and the bytes a rank sends per step at
Wan2.1-14B sizes (computed from shapes). Prints tables.

    PYTHONPATH=src python benchmarks/context_parallel.py

On CPU the 2-rank runs are expected to be slower: the tiny model's attention is cheap and every layer pays
two all-to-alls over loopback TCP (gloo). The numbers say what the parallel path costs, not what GPUs gain.
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


def measure(sizes: list[tuple[int, int, int]], steps: int) -> list[tuple[str, str, float]]:
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
    with ParallelRunner(2, "context", LoadSpec("pusa-tiny", threads=1)) as runner:
        for mode in ("context", "cfg"):
            runner.set_mode(mode)
            for name, request in requests.items():
                step_times(runner.pipe, request)
                label = (
                    "2 ranks, context parallel (Ulysses)" if mode == "context" else "2 ranks, CFG-parallel"
                )
                rows.append((name, label, step_times(runner.pipe, request)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    rows = measure([(64, 64, 17), (128, 128, 33)], args.steps)
    print(
        "\npusa-tiny t2v (cfg 3.0: two DiT passes per step), CPU, one torch thread per rank, gloo on loopback\n"
    )
    print("| clip | ranks | ms per step |\n|---|---|---:|")
    for name, label, seconds in rows:
        print(f"| {name} | {label} | {seconds * 1000:.1f} |")

    print(
        "\nWan2.1-14B (40 layers, dim 5120, 40 heads), bf16, context parallel (Ulysses), per sampling step with"
    )
    print("CFG (2 DiT passes). Per pass and rank: 40 x 4 (L/N) D (N-1)/N (q,k,v and output all-to-alls) +")
    print("(L/N) D (N-1) (the final all-gather) elements, 2 bytes each.\n")
    print(
        "| size | tokens L | N | GB sent per rank per step | GB all ranks per step |\n|---|---:|---:|---:|---:|"
    )
    for size, tokens in WAN_SIZES.items():
        for n in (2, 4, 8):
            b = communicated_bytes(tokens, WAN_14B["dim"], WAN_14B["layers"], n, 2, "ulysses")
            print(
                f"| {size} | {tokens} | {n} | {2 * b['per_rank'] / 1e9:.2f} | {2 * b['all_ranks'] / 1e9:.2f} |"
            )


if __name__ == "__main__":
    main()
