"""Seconds per task in a running studio: every task of the built-in model at its default settings, sent
through the studio's own API (gradio_client, as a page or a script would), timed from submission to the
video coming back: queue, text encoding, input encoding, sampling with CFG, decoding, mp4 writing, reply.

    python benchmarks/studio_tasks.py [--model pusa-tiny] [--repeats 3] [--long-frames 41] [--frames N]

Starts `python -m pusa.app` on 127.0.0.1 (a free port, a temporary outputs folder), warms it with one
job, runs each task `--repeats` times and prints a table (median and min seconds, the settings each task
ran at). `--long-frames` is the long video's total (41 = 4 chunks of 17 frames with the default overlap of
3 latents). No assertions: a table to read. It ends the server it started and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_inputs(folder: Path, frames: int) -> tuple[str, str, str, str]:
    """A held-out world clip (mp4), its first and last frames (png) and its caption."""
    from PIL import Image

    from pusa.train.world import canonical_caption, eval_specs, render_clip
    from pusa.video import write_video

    spec = eval_specs(1, seed=0, num_frames=frames, width=64, height=64)[0]
    clip = render_clip(spec)
    first, last, video = folder / "first.png", folder / "last.png", folder / "clip.mp4"
    Image.fromarray(clip[0]).save(first)
    Image.fromarray(clip[-1]).save(last)
    write_video(video, clip, fps=8.0)
    return str(first), str(last), str(video), canonical_caption(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pusa-tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-frames", type=int, default=41)
    parser.add_argument("--frames", type=int, default=17, help="the clip length of the inputs (default: 17)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the raw times here")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    workdir = Path(tempfile.mkdtemp(prefix="pusa-studio-bench-"))
    first, last, video, prompt = world_inputs(workdir, args.frames)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pusa.app", "--model", args.model, "--port", str(port), "--outputs",
         str(workdir / "outputs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the studio did not come up within 180 s") from None
                time.sleep(1)
        tasks = {
            "text-to-video": lambda: client.predict(prompt, seed=0, api_name="/text_to_video"),
            "image-to-video": lambda: client.predict(
                handle_file(first), prompt, seed=0, api_name="/image_to_video"
            ),
            "start-end frames": lambda: client.predict(
                [handle_file(first), handle_file(last)], prompt, seed=0, api_name="/frames_to_video"
            ),
            "video extension": lambda: client.predict(
                handle_file(video),
                prompt,
                positions="",
                noise_multipliers="",
                recipe="extension",
                seed=0,
                api_name="/video_to_video",
            ),
            "transition": lambda: client.predict(
                handle_file(video),
                prompt,
                positions="",
                noise_multipliers="",
                recipe="transition",
                end_video=handle_file(video),
                seed=0,
                api_name="/video_to_video",
            ),
            f"long video ({args.long_frames} frames)": lambda: client.predict(
                prompt, long_frames=args.long_frames, seed=0, api_name="/text_to_video"
            ),
        }
        tasks["text-to-video"]()  # warm-up: the model loads on the first job
        rows, raw = [], {}
        for name, run in tasks.items():
            run()  # first call of each task: its own allocations
            times, settings = [], {}
            for _ in range(args.repeats):
                started = time.perf_counter()
                _, settings_text, _ = run()
                times.append(time.perf_counter() - started)
                settings = json.loads(settings_text)
            raw[name] = times
            shape = f"{settings.get('num_frames')}x{settings.get('width')}x{settings.get('height')}"
            chunks = f", {len(settings['chunks'])} chunks" if settings.get("chunks") else ""
            rows.append((name, statistics.median(times), min(times),
                         f"{shape}, {settings.get('num_inference_steps')} steps, cfg {settings.get('cfg')}{chunks}"))  # fmt: skip
        print(
            f"studio on {args.model}, {os.cpu_count()} CPU cores, {args.repeats} runs per task after a warm-up\n"
        )
        print("| task | median s | min s | settings |")
        print("|---|---:|---:|---|")
        for name, median, low, info in rows:
            print(f"| {name} | {median:.2f} | {low:.2f} | {info} |")
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1) + "\n")
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
