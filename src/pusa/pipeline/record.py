"""What a generation leaves behind: the frames and their settings record (`PusaOutput`, written as the mp4
and its JSON sidecar), the record of a request's inputs, and the counters that say what one request
cost (DiT forwards, expert swaps, the sampling runs' step-cache and CFG-batch reports).

The record holds enough to reproduce the video: every resolved request field, each input file's path and
content hash, the model, the LoRA stack with its files' hashes and strengths, and what the placement did
(`runtime.placement`'s report) when it changes the numbers (fp8, the attention kernel).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..request import GenerationRequest, Media
from ..video import write_video

__all__ = ["CounterSnapshot", "PusaOutput", "SamplingRun", "describe_source", "request_record"]


@dataclass
class PusaOutput:
    """A finished video: `frames` `[F, H, W, 3]` uint8 and `settings`, its JSON record."""

    frames: np.ndarray  # [F, H, W, 3] uint8
    settings: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        """Write `path` (H.264 mp4, settings in its metadata) and `path` with `.json` (the sidecar)."""
        path = Path(path)
        write_video(path, self.frames, self.settings["fps"], metadata=self.settings)
        path.with_suffix(".json").write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
        return path


@dataclass(frozen=True)
class SamplingRun:
    """What one sampling run did (a long video makes one per chunk): whether CFG's two passes ran as one
    batch, and the step cache's report (None when off)."""

    cfg_batch: bool
    step_cache: dict[str, Any] | None


@dataclass(frozen=True)
class CounterSnapshot:
    """The pipeline's running totals when a request began (`PusaPipeline.snapshot`): DiT forwards, the
    index of its next sampling run, and the expert switch's swaps and seconds (None without one); the
    record says what the request added to each."""

    dit_forwards: int
    runs: int
    swaps: tuple[int, float] | None


def describe_source(source: Media) -> Any:
    """A JSON-able record of an input: the path and content hash of a file, else its shape."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return {"path": str(path.resolve()), "sha256": digest}
    if isinstance(source, np.ndarray):
        return {"array_shape": list(source.shape), "sha256": hashlib.sha256(source.tobytes()).hexdigest()}
    if hasattr(source, "size") and hasattr(source, "tobytes"):  # PIL image
        return {"image_size": list(source.size), "sha256": hashlib.sha256(source.tobytes()).hexdigest()}
    return repr(type(source))


def request_record(request: GenerationRequest) -> dict[str, Any]:
    """The JSON record of a resolved request's own fields: its inputs described (`describe_source`), not
    held."""
    record = asdict(replace(request, images=(), video=None, end_video=None, sources={}))
    record["positions"] = list(request.positions)
    record["noise_multipliers"] = [float(m) for m in request.noise_multipliers]
    record["chunk_multipliers"] = [float(m) for m in request.chunk_multipliers]
    record["images"] = []
    if request.task in ("i2v", "frames", "long"):
        record["images"] = [describe_source(image) for image in request.images]
    sources = dict(request.sources)
    if request.task in ("v2v", "long"):
        for name in ("video", "end_video"):
            value = getattr(request, name)
            if value is not None and name not in sources:
                sources[name] = describe_source(value)
    record["sources"] = sources
    return record
