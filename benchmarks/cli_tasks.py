"""Wall time of every task end to end through the CLI (default: the built-in pusa-tiny, its default steps).

Each row is a fresh `pusa generate ...` process: interpreter start, imports, model build, input
encoding, sampling, decoding and mp4 writing. `generate` is the pipeline's own time for the request
(from the JSON sidecar). Run: `python benchmarks/cli_tasks.py [--model pusa-tiny] [--steps N] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(folder: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("a", "b"):
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
        paths[name] = str(path)
    return paths


def run(args: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pusa.cli", *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"pusa {' '.join(args)} failed:\n{result.stderr}")
    output = Path(args[args.index("--output") + 1])
    return wall, json.loads(output.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="pusa-tiny")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pusa-bench-"))
    inputs = make_inputs(folder)
    common = ["--model", options.model, "--seed", "0", "-q"]
    if options.steps:
        common += ["--steps", str(options.steps)]
    source = str(folder / "source.mp4")
    run(["generate", "t2v", "-p", "a red circle slides left", *common, "--frames", "25", "--output", source])
    tasks = {
        "t2v": ["generate", "t2v", "-p", "a red circle slides left"],
        "i2v": ["generate", "i2v", "--image", inputs["a"], "-p", "a red circle"],
        "frames (start-end)": ["generate", "frames", "--images", inputs["a"], inputs["b"], "-p", "x"],
        "v2v (positions 0,1)": ["generate", "v2v", "--video", source, "--positions", "0,1", "-p", "x"],
        "v2v extension": ["generate", "v2v", "--video", source, "--recipe", "extension", "-p", "x"],
        "v2v completion": ["generate", "v2v", "--video", source, "--recipe", "completion", "-p", "x"],
        "v2v transition (25 fr)": ["generate", "v2v", "--video", source, "--end-video", source,
                                   "--recipe", "transition", "--frames", "25", "-p", "x"],
    }  # fmt: skip
    print(f"pusa CLI, model {options.model}, {options.steps or 'default'} steps, cfg 3.0, {os.cpu_count()} CPU cores, "
          f"median of {options.repeats}")  # fmt: skip
    print(f"{'task':<24}{'frames':>7}{'size':>9}{'steps':>6}{'wall s':>9}{'generate s':>12}")
    for name, task_args in tasks.items():
        walls, gens = [], []
        for repeat in range(options.repeats):
            out = str(folder / f"{name.split()[0]}-{repeat}.mp4")
            wall, settings = run([*task_args, *common, "--output", out])
            walls.append(wall)
            gens.append(settings["elapsed_s"])
        size = f"{settings['width']}x{settings['height']}"
        print(f"{name:<24}{settings['num_frames']:>7}{size:>9}{settings['num_inference_steps']:>6}"
              f"{statistics.median(walls):>9.2f}"
              f"{statistics.median(gens):>12.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
