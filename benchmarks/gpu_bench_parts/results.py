"""`Results`: the rows of one run, each run safely (an OOM is recorded and the run goes on) and the JSON
rewritten after every row.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .report import end_to_end
from .specs import CACHE_SKIPS, Size
from .timing import free_memory, is_oom, reset_peak


@dataclass
class Results:
    meta: dict[str, Any]
    json_path: Path | None
    strict: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.log(f"{row['part']:<5} {row['name']:<22} {row.get('size', ''):<14} {row['status']}")
        self.save()

    def save(self) -> None:
        if self.json_path is not None:
            estimates = end_to_end(self.rows, self.meta.get("cache_skips", CACHE_SKIPS))
            payload = {**self.meta, "rows": self.rows, "end_to_end": estimates}
            self.json_path.write_text(json.dumps(payload, indent=2) + "\n")

    def run(self, part: str, name: str, size: Size | None, device: torch.device, body: Callable[[], dict]):
        """Run one row; an OOM (or, unless strict, any error) is recorded and the run goes on."""
        row: dict[str, Any] = {"part": part, "name": name, "size": size.label if size else ""}
        reset_peak(device)
        try:
            row.update(body())
            row["status"] = "ok"
        except Exception as error:
            if not is_oom(error) and self.strict:
                raise
            row["status"] = "OOM" if is_oom(error) else f"error: {type(error).__name__}: {error}"[:400]
        free_memory(device)
        self.add(row)
        return row
