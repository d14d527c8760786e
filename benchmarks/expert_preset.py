"""The 4-step preset vs 10 steps with CFG on the tiny two-expert model (`tiny-random-a14b`), every task.

    python benchmarks/expert_preset.py [--repeats 2] [--threads N]

Writes the model to a temporary folder in Wan2.2's original layout with a pusa_model.json naming Pusa-style
LoRAs per expert (high 1.5, low 1.4) and a kohya-style 4-step speed LoRA, loads it once, and prints per task
the median wall seconds (text encoding, VAE, sampling, decoding; after one warm-up) and the DiT forwards
of each mode. At this size the DiT is a small share of a video's time, so the wall-time ratio is far
below the forward ratio; on a 14B model the DiT is nearly all of it. No assertions: a table to read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pusa.pipeline import PusaPipeline
from pusa.weights.wan_original import write_two_expert_folder


def _lora(path: Path, seed: int, kohya: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block in range(2):
        down, up = torch.randn(4, 32, generator=generator) * 0.01, torch.randn(32, 4, generator=generator)
        if kohya:
            state[f"diffusion_model.blocks.{block}.self_attn.q.lora_down.weight"] = down
            state[f"diffusion_model.blocks.{block}.self_attn.q.lora_up.weight"] = up
            state[f"diffusion_model.blocks.{block}.self_attn.q.alpha"] = torch.tensor(4.0)
        else:
            state[f"blocks.{block}.self_attn.q.lora_A.default.weight"] = down
            state[f"blocks.{block}.self_attn.q.lora_B.default.weight"] = up
    save_file(state, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-a14b"
        folder.mkdir()
        _lora(folder / "high_noise_pusa.safetensors", 1, kohya=False)
        _lora(folder / "low_noise_pusa.safetensors", 2, kohya=False)
        _lora(folder / "lightx2v_4step.safetensors", 3, kohya=True)
        manifest = {
            "loras": [
                {"file": "high_noise_pusa.safetensors", "strength": 1.5, "expert": "high"},
                {"file": "low_noise_pusa.safetensors", "strength": 1.4, "expert": "low"},
            ],
            "presets": {"4-step": {"loras": [{"file": "lightx2v_4step.safetensors", "strength": 1.0}]}},
        }
        write_two_expert_folder(folder, "wan-original", manifest=manifest)
        started = time.perf_counter()
        pipe = PusaPipeline.from_model(folder)
        load_s = time.perf_counter() - started
        dit_s = [0.0]  # seconds inside the DiTs' forwards (hooks on both experts)
        for model in (pipe.transformer, pipe.transformer_2):
            model.register_forward_pre_hook(lambda *_: dit_s.append(time.perf_counter()))
            model.register_forward_hook(
                lambda *_: dit_s.__setitem__(0, dit_s[0] + time.perf_counter() - dit_s.pop())
            )
        d = pipe.defaults
        rng = np.random.default_rng(0)
        clip = rng.integers(0, 256, (d.num_frames, d.height, d.width, 3), dtype=np.uint8)
        image, other = clip[0], clip[-1]
        last = pipe.num_latent_frames() - 1
        tasks = {
            "text-to-video": lambda **m: pipe.text_to_video("a fox", seed=0, **m),
            "image-to-video": lambda **m: pipe.image_to_video(image, "a fox", seed=0, **m),
            "start-end frames": lambda **m: pipe.frames_to_video(
                [image, other], "a fox", [0, last], seed=0, **m
            ),
            "extension": lambda **m: pipe.extend_video(clip, "a fox", seed=0, **m),
            "completion": lambda **m: pipe.complete_video(clip, "a fox", seed=0, **m),
            "transition": lambda **m: pipe.transition(clip, clip[::-1], "a fox", seed=0, **m),
        }
        modes = {
            "10 steps, cfg 3.0": dict(num_inference_steps=10, cfg=3.0),
            "--preset 4-step": dict(preset="4-step"),
        }
        print(f"tiny-random-a14b folder: load {load_s:.2f} s; {d.num_frames} frames at {d.width}x{d.height}; "
              f"torch threads {torch.get_num_threads()}; median of {args.repeats} after a warm-up")  # fmt: skip
        print(
            "| task | 10 steps cfg 3.0: s (DiT s) | DiT forwards | preset: s (DiT s) | DiT forwards | DiT-time ratio | "
            "forward ratio |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, run in tasks.items():
            row = []
            for mode in modes.values():
                run(**mode)  # warm-up
                times, dits, forwards = [], [], 0
                for _ in range(args.repeats):
                    dit_s[0] = 0.0
                    started = time.perf_counter()
                    out = run(**mode)
                    times.append(time.perf_counter() - started)
                    dits.append(dit_s[0])
                    forwards = out.settings["dit_forwards"]
                row.append((statistics.median(times), statistics.median(dits), forwards))
            (slow_s, slow_d, slow_f), (fast_s, fast_d, fast_f) = row
            print(f"| {name} | {slow_s:.2f} ({slow_d:.2f}) | {slow_f} | {fast_s:.2f} ({fast_d:.2f}) | {fast_f} | "
                  f"{slow_d / fast_d:.1f}x | {slow_f / fast_f:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
