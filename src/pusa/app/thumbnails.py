"""Small inline previews of uploaded images: the timelines (`app.timeline`) that `Studio`'s preview
handlers draw embed them as `data:` URIs, so the page fetches nothing to show them."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Any

from PIL import Image


@functools.lru_cache(maxsize=256)
def _thumbnail_cached(path: str, mtime_ns: int, size: int) -> str | None:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail(path: Any, size: int = 96) -> str | None:
    """A small `data:` URI of an image file (the timeline embeds it; nothing is fetched)."""
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    return _thumbnail_cached(str(path), Path(path).stat().st_mtime_ns, size)
