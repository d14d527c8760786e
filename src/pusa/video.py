"""Reading, probing and writing images and videos (PyAV, Pillow), and fitting them to a target size.

Every input that cannot be read correctly is refused by name (`MediaError`, an `InputError`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .params import InputError

MP4_METADATA_KEY = "comment"  # carries the generation settings as JSON inside the mp4
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
_IMAGES = "an image file (PNG, JPEG, WebP, BMP or GIF)"
_VIDEOS = "a video file (" + ", ".join(suffix[1:] for suffix in VIDEO_SUFFIXES) + ")"


class MediaError(InputError):
    """An input image or video that cannot be used; names the parameter and the file."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    seconds: float
    width: int
    height: int


def _file(source: Any, parameter: str, expected: str) -> Path:
    if not isinstance(source, (str, Path)):
        raise MediaError(
            parameter, type(source).__name__, f"expected {expected}, a PIL image or an array", "is a"
        )
    path = Path(source)
    if not path.is_file():
        raise MediaError(parameter, str(path), f"expected {expected}", "does not exist")
    return path


def to_rgb(image: Image.Image, parameter: str = "image", name: str | None = None) -> Image.Image:
    """An RGB copy with the colours the file means: EXIF rotation applied, 16-bit and 32-bit grey scaled
    to 8 bits (Pillow's own conversion clips them, turning a 16-bit PNG white), transparency dropped."""
    name = name or getattr(image, "filename", "") or "the image"
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(values / high * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        raise MediaError(
            parameter, name, "expected 8- or 16-bit colour or grey images",
            "holds 32-bit floating-point pixels, whose range is not known",
        )  # fmt: skip
    if mode == "P":
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return image.convert("RGBA").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError):
        raise MediaError(
            parameter,
            name,
            "expected RGB, grey, palette or CMYK images",
            f"has pixel mode {mode}, which cannot be read as colour",
        ) from None


def load_image(source: str | Path | Image.Image | np.ndarray, parameter: str = "image") -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an `[H, W, 3]` uint8 array."""
    if isinstance(source, Image.Image):
        return to_rgb(source, parameter)
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] not in (3, 4) or source.dtype != np.uint8:
            raise MediaError(
                parameter, f"array {tuple(source.shape)} {source.dtype}", "expected [H, W, 3] uint8", "is an"
            )
        return Image.fromarray(np.ascontiguousarray(source[:, :, :3]))
    path = _file(source, parameter, _IMAGES)
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, parameter, str(path))
    except (
        Image.DecompressionBombError
    ) as error:  # Pillow will not open it: the header claims too many pixels
        raise MediaError(
            parameter, str(path), f"expected an image Pillow opens ({error})", "has too many pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise MediaError(
            parameter, str(path), f"expected {_IMAGES}", f"is not a readable image ({error})"
        ) from None


def probe_image(source: Any, parameter: str = "image") -> tuple[int, int]:
    """(width, height) of an image input, opened and decoded, or `MediaError`."""
    return load_image(source, parameter).size


def _video_input(source: Any, parameter: str) -> np.ndarray | Path:
    """A video input as its frames (an array) or its file (checked to exist)."""
    if source is None:
        raise MediaError(
            parameter,
            None,
            f"expected {_VIDEOS} or a [F, H, W, 3] uint8 array",
            "none given",
            show_value=False,
        )
    if not isinstance(source, (str, Path)):
        return _frames_array(source, parameter)
    return _file(source, parameter, _VIDEOS)


@contextmanager
def _video_stream(path: Path, parameter: str) -> Iterator[tuple[Any, Any]]:
    """(container, its first video stream); a file PyAV cannot read is a `MediaError` naming it."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(parameter, str(path), f"expected {_VIDEOS}", "has no video stream")
            yield container, container.streams.video[0]
    except (av.error.FFmpegError, OSError) as error:
        reason = getattr(error, "strerror", None) or error  # without a temporary path
        raise MediaError(
            parameter, str(path), f"expected {_VIDEOS}", f"is not a readable video ({reason})"
        ) from None


def probe_video(source: Any, parameter: str = "video") -> VideoInfo:
    """Frame count, rate, duration and size of a video input, or `MediaError` (an array is its own)."""
    video = _video_input(source, parameter)
    if isinstance(video, np.ndarray):
        return VideoInfo(len(video), 16.0, len(video) / 16.0, video.shape[2], video.shape[1])
    with _video_stream(video, parameter) as (container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        fps = float(stream.average_rate or stream.guessed_rate or 16)
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        else:
            seconds = (container.duration or 0) / 1e6
        frames = stream.frames or sum(1 for _ in container.decode(stream))
    if frames == 0:
        raise MediaError(parameter, str(video), f"expected {_VIDEOS}", "contains no frames")
    return VideoInfo(frames, fps, seconds, width, height)


def _frames_array(source: Any, parameter: str) -> np.ndarray:
    frames = np.asarray(source)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise MediaError(parameter, f"array {tuple(frames.shape)}", "expected [F, H, W, 3] uint8", "is an")
    return frames


def fit_image(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Center-crop to the target aspect ratio, then resize (no stretching). Returns `[H, W, 3]` uint8."""
    src_w, src_h = image.size
    target_ratio = width / height
    if src_w / src_h > target_ratio:  # too wide: crop the sides
        crop_w = round(src_h * target_ratio)
        left = (src_w - crop_w) // 2
        box = (left, 0, left + crop_w, src_h)
    else:  # too tall: crop top and bottom
        crop_h = round(src_w / target_ratio)
        top = (src_h - crop_h) // 2
        box = (0, top, src_w, top + crop_h)
    return np.asarray(image.crop(box).resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


def read_video(
    source: str | Path | np.ndarray | Sequence[np.ndarray],
    parameter: str = "video",
    max_frames: int | None = None,
) -> tuple[np.ndarray, float]:
    """All frames (or the first `max_frames`) as `[F, H, W, 3]` uint8, and the frame rate."""
    video = _video_input(source, parameter)
    if isinstance(video, np.ndarray):
        return (video[:max_frames] if max_frames else video), 16.0
    frames = []
    with _video_stream(video, parameter) as (container, stream):
        fps = float(stream.average_rate or stream.guessed_rate or 16)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise MediaError(parameter, str(video), f"expected {_VIDEOS}", "contains no frames")
    return np.stack(frames), fps


def fit_video(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fit every frame like `fit_image`. `[F, H, W, 3]` -> `[F, height, width, 3]`."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([fit_image(Image.fromarray(frame), width, height) for frame in frames])


def write_video(path: str | Path, frames: np.ndarray, fps: float, metadata: dict | None = None) -> Path:
    """H.264 / yuv420p mp4 (plays in every browser), settings as JSON in the container's comment tag."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        if metadata is not None:
            container.metadata[MP4_METADATA_KEY] = json.dumps(metadata, sort_keys=True)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video_metadata(path: str | Path) -> dict | None:
    """The generation settings stored in an mp4 written by `write_video`, or None."""
    with av.open(str(path)) as container:
        text = container.metadata.get(MP4_METADATA_KEY)
    return json.loads(text) if text else None
