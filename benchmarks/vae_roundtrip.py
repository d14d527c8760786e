"""The built-in model's VAE round trip on held-out world clips, per clip length and per object colour.

    python benchmarks/vae_roundtrip.py [--model pusa-tiny|DIR] [--clips 22] [--frames 17,33,49] [--json FILE]

Encodes and decodes each clip (`world.eval_specs`, the evaluation's held-out set 1) and prints, per length:
PSNR over whole clips, over the object's pixels alone, the worst clip and the last frame, and how often the
world's detector reads the object's colour and shape right on the reconstruction; then per object colour
(clips, colour read right, clip PSNR, object PSNR). `DIR` may be a model folder or a recipe run folder (its
VAE plus the decoder stage's checkpoint). No assertions: tables to read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pusa.train.data import video_pixels
from pusa.train.detector import analyze_clip
from pusa.train.stages_vae import object_mask, psnr
from pusa.train.world import eval_specs, render_clip


def load(model: str):
    from diffusers import AutoencoderKLWan

    from pusa.train.config import load_run_config
    from pusa.train.stages_vae import load_vae
    from pusa.weights.registry import PUSA_TINY_DIR

    folder = PUSA_TINY_DIR if model == "pusa-tiny" else Path(model)
    if (folder / "config.json").is_file() and (folder / "vae" / "checkpoint.pt").is_file():
        return load_vae(folder, load_run_config(folder))
    return AutoencoderKLWan.from_pretrained(str(folder / "vae"), local_files_only=True).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pusa-tiny")
    parser.add_argument("--clips", type=int, default=22)
    parser.add_argument("--frames", default="17,33,49")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae = load(args.model)
    out = {}
    print(f"{args.model}: {args.clips} held-out clips\n")
    print(
        "| frames | clip PSNR (dB) | object PSNR | worst clip | last frame | colour read right | shape read right |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for frames in (int(f) for f in args.frames.split(",")):
        specs = eval_specs(args.clips, 1, frames, 64, 64)
        videos = np.stack([render_clip(s) for s in specs])
        with torch.no_grad():
            pixels = video_pixels(videos)
            recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1).numpy()
        on = object_mask(pixels, grow=0)[:, 0].numpy() > 0
        analyses = [analyze_clip(r.astype(np.uint8)) for r in recon]
        colours: dict[str, dict] = {}
        for i, spec in enumerate(specs):
            row = colours.setdefault(spec.color, {"clips": 0, "read_right": 0, "psnr": [], "object_psnr": []})
            row["clips"] += 1
            row["read_right"] += int(analyses[i].color == spec.color)
            row["psnr"].append(psnr(recon[i], videos[i]))
            row["object_psnr"].append(psnr(recon[i][on[i]], videos[i][on[i]]))
        for row in colours.values():
            row["psnr"] = round(float(np.mean(row["psnr"])), 2)
            row["object_psnr"] = round(float(np.mean(row["object_psnr"])), 2)
        result = {
            "psnr_clip": round(psnr(recon, videos), 2),
            "psnr_object": round(psnr(recon[on], videos[on]), 2),
            "psnr_worst_clip": round(min(psnr(r, v) for r, v in zip(recon, videos, strict=True)), 2),
            "psnr_last_frame": round(psnr(recon[:, -1], videos[:, -1]), 2),
            "colour_read_right": float(
                np.mean([a.color == s.color for a, s in zip(analyses, specs, strict=True)])
            ),
            "shape_read_right": float(
                np.mean([a.shape == s.shape for a, s in zip(analyses, specs, strict=True)])
            ),
            "per_colour": colours,
        }
        out[frames] = result
        print(f"| {frames} | {result['psnr_clip']:.1f} | {result['psnr_object']:.1f} | {result['psnr_worst_clip']:.1f} "
              f"| {result['psnr_last_frame']:.1f} | {100 * result['colour_read_right']:.0f}% "
              f"| {100 * result['shape_read_right']:.0f}% |")  # fmt: skip
    print("\n| frames | object colour | clips | read right | clip PSNR | object PSNR |")
    print("|---:|---|---:|---:|---:|---:|")
    for frames, result in out.items():
        for colour, row in sorted(result["per_colour"].items()):
            print(f"| {frames} | {colour} | {row['clips']} | {row['read_right']}/{row['clips']} | {row['psnr']:.1f} "
                  f"| {row['object_psnr']:.1f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
