"""Long videos on pusa-tiny: how each way of chaining chunks holds up, measured from the pixels.

For each choice (chain: latent / pixel / pixel-matched; overlap latents; overlap noise multipliers), a
long video of `--chunks` chunks per held-out world clip (image-to-video from the clip's frame 0 and its
caption, as a user would start one), scored by `train.evaluate.long_video_metrics` with the world's
detector: position jump and velocity change at each chunk boundary (and, as the floor, in the middle of
each chunk), background and object colour drift from the first chunk to the last (mean absolute
difference per channel, 0..255), the share of chunks that keep the object with its colour, and seconds
per long video. Prints a markdown table.

    python benchmarks/long_video.py                      # the default sweep, 6 clips
    python benchmarks/long_video.py --clips 2 --choices latent:1:0
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from pusa import recipes
from pusa.pipeline import PusaPipeline
from pusa.train.evaluate import long_video_metrics
from pusa.train.world import canonical_caption, eval_specs, render_clip

DEFAULT_CHOICES = (
    "latent:1:0", "pixel:1:0", "pixel-matched:1:0",
    "latent:2:0,0", "pixel:2:0,0", "pixel-matched:2:0,0",
    "latent:2:0,0.3", "pixel:2:0,0.3",
    "latent:3:0,0,0", "pixel-matched:3:0,0,0",
)  # fmt: skip


def parse_choice(text: str) -> tuple[str, int, list[float]]:
    chain, context, multipliers = text.split(":")
    return chain, int(context), [float(m) for m in multipliers.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pusa-tiny")
    parser.add_argument("--clips", type=int, default=6, help="held-out world clips (default: %(default)s)")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=4, help="chunks per long video (default: %(default)s)")
    parser.add_argument(
        "--choices",
        default=",".join(DEFAULT_CHOICES).replace(",", ";"),
        help="';'-separated chain:overlap:multipliers (default: the sweep above)",
    )
    parser.add_argument("--json", default=None, help="also write every clip's numbers here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    pipe = PusaPipeline.from_model(args.model)
    d = pipe.defaults
    specs = [s for s in eval_specs(4 * args.clips, args.eval_seed, d.num_frames, d.width, d.height)]
    # Every motion but growing / shrinking (whose size, not position, changes); bounces are kept.
    specs = [s for s in specs if s.motion not in ("grows", "shrinks")][: args.clips]
    rows, per_clip = [], {}
    for text in args.choices.split(";"):  # every choice checked before any video is made
        chain, context, multipliers = parse_choice(text)
        step = recipes.num_latent_frames(d.num_frames) - context
        num_frames = 4 * (recipes.num_latent_frames(d.num_frames) + (args.chunks - 1) * step - 1) + 1
        recipes.long_video(num_frames, d.num_frames, context, multipliers, 0)
    for text in args.choices.split(";"):
        chain, context, multipliers = parse_choice(text)
        step = recipes.num_latent_frames(d.num_frames) - context
        num_frames = 4 * (recipes.num_latent_frames(d.num_frames) + (args.chunks - 1) * step - 1) + 1
        results, seconds = [], []
        for i, spec in enumerate(specs):
            truth = render_clip(spec)
            started = time.perf_counter()
            out = pipe.long_video(
                canonical_caption(spec), num_frames, image=truth[0], context_latents=context,
                chunk_multipliers=multipliers, chain=chain, seed=2000 + i,
            )  # fmt: skip
            seconds.append(time.perf_counter() - started)
            plan = recipes.long_video(num_frames, d.num_frames, context, multipliers, 2000 + i)
            results.append(long_video_metrics(out.frames, plan, spec.color))
        per_clip[text] = results

        def mean(key: str, results=results) -> float:
            values = [r[key] for r in results if not math.isnan(r[key])]
            return float(np.mean(values)) if values else math.nan

        boundaries = sum(r["boundaries"] for r in results)
        rows.append(
            (text, num_frames, mean("jump"), mean("velocity"), mean("inner_jump"), mean("inner_velocity"),
             f"{sum(r['lost'] for r in results)}/{boundaries}", mean("background_drift"),
             mean("object_drift"), 100 * mean("kept"), float(np.median(seconds)))
        )  # fmt: skip
        print(f"done {text}: {rows[-1]}", flush=True)
    print(
        f"\n{args.model}, {len(specs)} clips (image-to-video from frame 0), {args.chunks} chunks of "
        f"{d.num_frames} frames, {d.num_inference_steps} steps\n"
    )
    print(
        "| chain:overlap:multipliers | frames | jump at boundary (px) | velocity change (px/frame) | "
        "jump mid-chunk (px) | velocity mid-chunk | boundaries lost | background drift (/255) | "
        "object drift (/255) | chunks keeping the object | s per video (median) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        text, frames, *numbers = row
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in numbers]
        cells[7] = f"{numbers[7]:.0f}%"
        print(f"| {text} | {frames} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(per_clip, handle, indent=1, default=float)


if __name__ == "__main__":
    main()
