"""Where the time of one `pusa generate t2v` goes, phase by phase (default: the built-in pusa-tiny).

Two measurements, each in fresh processes (an interpreter that has imported torch once is no model of a
user's run):

- end to end: the wall time of `pusa generate t2v -p PROMPT -o FILE` (median of `--repeats`), what a
  user waits for;
- phases: one process that does what the command does, step by step, timing each: interpreter start to
  the CLI parsed (`pusa.main` imported, the argv parsed), the engine imported (torch, diffusers,
  transformers: `pusa.pipeline`), the model loaded (`PusaPipeline.from_model`), the LoRA stack fused
  and the prompt encoded, sampling, VAE decode, and the mp4 + sidecar written.

Run: `python benchmarks/cli_phases.py [--model pusa-tiny] [--repeats 5] [--json FILE]`. Prints a table;
`--json` writes the raw numbers. Compare two commits by running it on each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle slides to the left over a dark blue background"

# The command's work, split where the phases meet; prints one JSON line of seconds per phase.
PHASES = r"""
import gc, inspect, json, sys, time
marks = [("start", time.perf_counter())]
import pusa.cli
# the GC as the command of this commit runs it (`pusa.cli.run_generate`; older commits left it alone)
tuned = "whole_process" in inspect.signature(pusa.cli.run_generate).parameters
if tuned:
    gc.disable()
def mark(name):
    marks.append((name, time.perf_counter()))
try:
    from pusa.main import build_parser
except ImportError:  # before pusa.main existed
    from pusa.cli import build_parser
args = build_parser().parse_args(["generate", "t2v", "-p", PROMPT, "--model", MODEL, "-o", OUT, "--seed", "1"])
mark("cli parsed")
from pusa.pipeline import GenerationRequest, PusaPipeline
from pusa.request import validate
mark("engine imported")
pipe = PusaPipeline.from_model(MODEL)
if tuned:
    gc.freeze()
    gc.enable()
mark("model loaded")
request = validate(GenerationRequest(task="t2v", prompt=PROMPT, seed=1), pipe.limits)
before = pipe.snapshot() if hasattr(pipe, 'snapshot') else pipe._counters()  # (older commits)
pipe.apply_loras(pipe.lora_stack(request), request.lora_alpha)
pipe.encode_prompt(request.prompt)
pipe.encode_prompt(request.negative_prompt)
mark("LoRA fused, prompts encoded")
latents = pipe.sample_latents(request, pipe.conditioning_for(request))
mark("sampled")
frames = pipe.decode_latents(latents)
mark("decoded")
pipe.output_of(request, frames, marks[0][1], before).save(OUT)
mark("mp4 written")
if tuned:
    gc.freeze()
print(json.dumps({name: round(t - marks[i][1], 4) for i, (name, t) in enumerate(marks[1:])}))
"""


def run_phases(model: str, folder: Path) -> tuple[dict[str, float], float]:
    """One process through the phases: (seconds per phase, interpreter start to the first mark)."""
    code = PHASES.replace("PROMPT", repr(PROMPT)).replace("MODEL", repr(model))
    code = code.replace("OUT", repr(str(folder / "phases.mp4")))
    started = time.perf_counter()
    # `-X importtime` off, no profiler: the phases as a user's run has them; the start-up of the interpreter
    # itself is what is left of the wall time
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    phases = json.loads(result.stdout.strip().splitlines()[-1])
    return phases, wall - sum(phases.values())


def end_to_end(model: str, folder: Path, index: int) -> float:
    out = folder / f"e2e-{index}.mp4"
    main = "pusa.main" if importlib.util.find_spec("pusa.main") else "pusa.cli"  # (older commits)
    command = [sys.executable, "-m", main, "generate", "t2v", "-p", PROMPT, "--model", model, "-o", str(out),
               "-q"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pusa-tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        end_to_end(args.model, folder, -1)  # warm the page cache: every row then reads from memory
        e2e = [end_to_end(args.model, folder, i) for i in range(args.repeats)]
        runs = [run_phases(args.model, folder) for _ in range(args.repeats)]
    names = list(runs[0][0])
    table = {"interpreter start": statistics.median(start for _, start in runs)}
    table.update({name: statistics.median(phases[name] for phases, _ in runs) for name in names})
    print(f"pusa generate t2v on {args.model}, median of {args.repeats} fresh processes")
    print("| phase | seconds |\n|---|---|")
    for name, seconds in table.items():
        print(f"| {name} | {seconds:.3f} |")
    print(f"| **sum of phases** | **{sum(table.values()):.3f}** |")
    print(f"| **end to end (`pusa generate t2v`)** | **{statistics.median(e2e):.3f}** |")
    if args.json is not None:
        record = {"model": args.model, "repeats": args.repeats, "phases_median_s": table,
                  "end_to_end_s": e2e, "phases_runs": [phases for phases, _ in runs]}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
