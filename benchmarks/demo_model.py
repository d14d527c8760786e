"""Time every task of the shipped pusa-tiny demo model at its default demo settings, on this machine.

    python benchmarks/demo_model.py [--repeats 3] [--threads N]

Prints the load time and, per task, the end-to-end seconds of `PusaPipeline` (text encoding, VAE encoding of
the inputs, sampling with CFG, VAE decoding) after one warm-up call. No assertions: a table to read.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pusa.params import PARAMS
from pusa.pipeline import PusaPipeline
from pusa.train.world import canonical_caption, eval_specs, render_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pusa-tiny", help="built-in model or folder (default: pusa-tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    pipe = PusaPipeline.from_model(args.model)
    load_s = time.perf_counter() - started
    d = pipe.defaults
    spec = eval_specs(1, seed=0, num_frames=d.num_frames, width=d.width, height=d.height)[0]
    clip, prompt = render_clip(spec), canonical_caption(spec)
    last = pipe.num_latent_frames() - 1
    tasks = {
        "text-to-video": lambda: pipe.text_to_video(prompt, seed=0),
        "image-to-video": lambda: pipe.image_to_video(clip[0], prompt, seed=0),
        "start-end frames": lambda: pipe.frames_to_video([clip[0], clip[-1]], prompt, seed=0),
        "keyframes (3)": lambda: pipe.frames_to_video(
            [clip[0], clip[4 * (last // 2)], clip[-1]], prompt, seed=0
        ),
        "video extension": lambda: pipe.extend_video(clip, prompt, seed=0),
    }
    print(f"{pipe.identity} ({args.model})")
    print(
        f"defaults: {d.num_frames} frames {d.width}x{d.height}, {d.num_inference_steps} steps, cfg {PARAMS['cfg'].default}, "
        f"LoRA alpha {d.lora_alpha}; torch threads {torch.get_num_threads()}"
    )
    print(f"load (components + LoRA): {load_s:.2f} s\n")
    print("| task | median s | min s |")
    print("|---|---:|---:|")
    for name, run in tasks.items():
        run()  # warm-up: first-call allocations, the LoRA fuse at the model's alpha
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
