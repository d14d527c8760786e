"""Uploaded files on the studio's forms: what an image or a video may be (`UploadLimits`: bytes, pixels,
seconds) and the checks that refuse one before anything decodes it, naming the field. `app.forms` checks a
job's uploads with them; `app.studio` says what a file is as soon as it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..video import IMAGE_FORMATS, VIDEO_SUFFIXES, MediaError, VideoInfo, probe_video
from .form_fields import FormError


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be. Large files are refused before anything decodes them."""

    image_mb: float = 20.0
    image_side: int = 8192  # pixels, each side
    images: int = 32  # images in one Multi-Frames request
    video_mb: float = 500.0
    video_seconds: float = 120.0
    video_side: int = 3840  # pixels, each side (4K)


DEFAULT_LIMITS = UploadLimits()


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _uploaded(param: str, path: Any) -> Path:
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise FormError(param, str(path), "upload the file again", "was not received")
    return Path(path)


def check_image(path: Any, param: str = "image", limits: UploadLimits = DEFAULT_LIMITS) -> None:
    """An uploaded image: a real PNG/JPEG/WebP/BMP/GIF, not too large in bytes or pixels."""
    path = _uploaded(param, path)
    name = path.name
    allowed = "allowed: " + ", ".join(IMAGE_FORMATS.values())
    if _size_mb(path) > limits.image_mb:
        raise FormError(param, name, f"the limit is {limits.image_mb:g} MB", f"is {_size_mb(path):.1f} MB")
    side = f"the limit is {limits.image_side} pixels on each side"
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:  # Pillow will not open it: the header claims too many pixels
        raise FormError(param, name, side, "has too many pixels to open") from None
    except (UnidentifiedImageError, OSError):
        raise FormError(param, name, allowed, "is not an image") from None
    if kind not in IMAGE_FORMATS:
        raise FormError(param, name, allowed, f"is a {kind} image")
    if max(width, height) > limits.image_side:
        raise FormError(param, name, side, f"is {width}x{height} pixels")


def check_video(path: Any, param: str = "video", limits: UploadLimits = DEFAULT_LIMITS) -> VideoInfo:
    """An uploaded video: a readable video file within the size, duration and resolution limits."""
    path = _uploaded(param, path)
    name = path.name
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        allowed = "allowed: " + ", ".join(suffix[1:] for suffix in VIDEO_SUFFIXES)
        raise FormError(param, name, allowed, "is not a video file")
    if _size_mb(path) > limits.video_mb:
        raise FormError(param, name, f"the limit is {limits.video_mb:g} MB", f"is {_size_mb(path):.1f} MB")
    try:
        info = probe_video(path, param)
    except MediaError as error:  # its own words, without the upload's temporary path
        raise FormError(param, name, error.allowed, error.problem) from None
    if info.seconds > limits.video_seconds:
        raise FormError(
            param, name, f"the limit is {limits.video_seconds:g} s", f"lasts {info.seconds:.1f} s"
        )
    if max(info.width, info.height) > limits.video_side:
        raise FormError(
            param, name, f"the limit is {limits.video_side} pixels on each side",
            f"is {info.width}x{info.height} pixels",
        )  # fmt: skip
    return info
