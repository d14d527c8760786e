"""A job's input files on their way to a Ray worker that may be on another machine: shipped by content
(`media_files`), written as the worker's own copies (`with_local_files`), and the worker's paths in the
settings it returns mapped back to the originals (`worker_paths`, `restore_paths`). Used by
`serving.remote_pipeline` (the studio's side) and `serving.cluster_worker` (the worker's side).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any


def media_files(request: Any) -> tuple[dict[str, bytes], dict[str, str]]:
    """The request's input files by content, keyed `images-0.png`, `video.mp4`...; and key -> original path."""
    files, originals = {}, {}

    def take(key: str, value: Any) -> None:
        if isinstance(value, (str, Path)) and Path(value).is_file():
            name = f"{key}{Path(value).suffix}"
            files[name] = Path(value).read_bytes()
            originals[name] = str(Path(value).resolve())

    for index, image in enumerate(request.images or ()):
        take(f"images-{index}", image)
    take("video", request.video)
    take("end_video", request.end_video)
    return files, originals


def with_local_files(request: Any, local: dict[str, str]) -> Any:
    """The request with each shipped file replaced by the worker's copy."""

    def swap(key: str, value: Any) -> Any:
        for name, path in local.items():
            if Path(name).stem == key:
                return path
        return value

    images = [swap(f"images-{i}", image) for i, image in enumerate(request.images or ())]
    return replace(
        request,
        images=images,
        video=swap("video", request.video),
        end_video=swap("end_video", request.end_video),
    )


def restore_paths(record: Any, paths: dict[str, str]) -> Any:
    """Settings as the studio's machine sees them: the worker's copies' paths back to the originals
    (their content hashes are the same)."""
    if isinstance(record, dict):
        return {k: restore_paths(v, paths) for k, v in record.items()}
    if isinstance(record, list):
        return [restore_paths(v, paths) for v in record]
    if isinstance(record, str):
        for worker_path, original in paths.items():
            if record == worker_path:
                return original
    return record


def worker_paths(settings: dict, originals: dict[str, str], token: str) -> dict[str, str]:
    """worker path -> original path, for every shipped file, found by the token folder and file name."""
    mapping = {}

    def visit(record: Any) -> None:
        if isinstance(record, dict):
            for value in record.values():
                visit(value)
        elif isinstance(record, list):
            for value in record:
                visit(value)
        elif isinstance(record, str):
            path = Path(record)
            if path.parent.name == token and path.name in originals:
                mapping[record] = originals[path.name]

    visit(settings)
    return mapping
