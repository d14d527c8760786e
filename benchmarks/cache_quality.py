"""Quality guard of the step cache (`pusa.caching`): `pusa eval demo`'s evaluation (train/evaluate.py) of the
VTA model at its own LoRA alpha with the cache off and on at a few thresholds, on the same clips and seeds.

Prints a table of every metric with its change against "off", the DiT forwards run and skipped, and which
settings pass the safety rule: within 1 dB on every PSNR at conditioned frames and within 5 points on every
accuracy metric. Forwards are counted on the transformer itself (a forward hook on it and on its first block:
a skipped forward runs the model but not its blocks).

  python benchmarks/cache_quality.py                                  # 22 clips, thresholds 0.15,0.25,0.4
  python benchmarks/cache_quality.py --num-clips 6 --json out.json    # a quicker subset
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from pusa.pipeline import PusaPipeline
from pusa.train import EVAL_TASKS
from pusa.train.evaluate import METRICS, EvalSettings, evaluate_pipeline

PSNR_KEYS = ("i2v_psnr0", "se_psnr_start", "se_psnr_end", "kf_psnr")  # conditioned frames
ACCURACY_KEYS = tuple(key for key, _, unit in METRICS if unit == "pct")
MAX_PSNR_DROP_DB = 1.0
MAX_ACCURACY_DROP = 5.0


class ForwardCounter:
    """DiT forwards (calls of the transformer) and block-stack runs (calls of its first block)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.forwards = self.computed = 0
        self._hooks = [
            transformer.register_forward_pre_hook(lambda *_: self._count("forwards")),
            transformer.blocks[0].register_forward_pre_hook(lambda *_: self._count("computed")),
        ]

    def _count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)

    def take(self) -> tuple[int, int]:
        counts = (self.forwards, self.forwards - self.computed)
        self.forwards = self.computed = 0
        return counts


def verdict(off: dict[str, float], on: dict[str, float]) -> tuple[bool, list[str]]:
    """Whether `on` passes the rule against `off`, and what fails it."""
    failures = []
    for key in PSNR_KEYS:
        drop = off[key] - on[key]
        if not math.isnan(drop) and drop > MAX_PSNR_DROP_DB:
            failures.append(f"{key} -{drop:.2f} dB")
    for key in ACCURACY_KEYS:
        drop = off[key] - on[key]
        if not math.isnan(drop) and drop > MAX_ACCURACY_DROP:
            failures.append(f"{key} -{drop:.1f} points")
    return not failures, failures


def format_table(columns: dict[str, dict[str, Any]]) -> str:
    names = list(columns)
    off = columns[names[0]]["metrics"]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, unit in METRICS:
        cells = []
        for index, name in enumerate(names):
            value = columns[name]["metrics"].get(key, math.nan)
            if value is None or math.isnan(value):
                cells.append("-")
                continue
            text = {"pct": f"{value:.0f}%", "db": f"{value:.2f}"}.get(unit, f"{value:.2f}")
            if index > 0 and key != "seconds_per_video":
                delta = value - off[key]
                text += f" ({delta:+.0f})" if unit == "pct" else f" ({delta:+.2f})"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| DiT forwards run / skipped | "
        + " | ".join(f"{c['forwards'] - c['skipped']} / {c['skipped']}" for c in columns.values())
        + " |"
    )
    lines.append(
        "| skipped share | "
        + " | ".join(f"{100 * c['skipped'] / c['forwards']:.0f}%" for c in columns.values())
        + " |"
    )
    verdicts = [
        "-" if i == 0 else ("yes" if c["safe"] else "no: " + "; ".join(c["failures"]))
        for i, c in enumerate(columns.values())
    ]
    lines.append("| safe (<= 1 dB, <= 5 points) | " + " | ".join(verdicts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pusa-tiny")
    parser.add_argument("--num-clips", type=int, default=22, help="held-out clips (default: 22, the eval's)")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--thresholds", default="0.15,0.25,0.4", help="cache thresholds to score")
    parser.add_argument("--tasks", default=",".join(EVAL_TASKS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    tasks = tuple(t for t in args.tasks.split(",") if t)
    torch.set_grad_enabled(False)
    pipe = PusaPipeline.from_model(args.model)
    counter = ForwardCounter(pipe.transformer)
    columns: dict[str, dict[str, Any]] = {}
    for threshold in [None, *thresholds]:
        name = "off" if threshold is None else f"pusa {threshold:g}"
        settings = EvalSettings(
            num_clips=args.num_clips,
            eval_seed=args.eval_seed,
            tasks=tasks,
            cache="off" if threshold is None else "pusa",
            cache_threshold=threshold,
        )
        started = time.perf_counter()
        result = evaluate_pipeline(pipe, settings)
        forwards, skipped = counter.take()
        columns[name] = {
            "metrics": result["metrics"],
            "forwards": forwards,
            "skipped": skipped,
            "videos": result["videos"],
            "seconds": time.perf_counter() - started,
            "settings": result["settings"],
        }
        print(f"{name}: {result['videos']} videos, {skipped}/{forwards} forwards skipped, "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    off = columns["off"]["metrics"]
    for name, column in columns.items():
        column["safe"], column["failures"] = verdict(off, column["metrics"]) if name != "off" else (True, [])
    table = format_table(columns)
    print(table)
    payload = {
        "command": "python benchmarks/cache_quality.py " + " ".join(argv if argv is not None else []),
        "model": pipe.identity,
        "lora_alpha": pipe.defaults.lora_alpha,
        "num_clips": args.num_clips,
        "eval_seed": args.eval_seed,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "rule": {"max_psnr_drop_db": MAX_PSNR_DROP_DB, "max_accuracy_drop_points": MAX_ACCURACY_DROP},
        "columns": columns,
        "table": table,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return payload


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
