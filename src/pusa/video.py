"""Reading and writing images and videos (PyAV, Pillow), and fitting them to a target size."""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

MP4_METADATA_KEY = "comment"  # carries the generation settings as JSON inside the mp4


class MediaError(ValueError):
    """An input image or video that cannot be used; the message names the parameter and the file."""


def load_image(source: str | Path | Image.Image | np.ndarray, parameter: str = "image") -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an `[H, W, 3]` uint8 array."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] not in (3, 4) or source.dtype != np.uint8:
            raise MediaError(
                f"{parameter}: array of shape {source.shape} and dtype {source.dtype}; expected [H, W, 3] uint8"
            )
        return Image.fromarray(source[:, :, :3])
    if not isinstance(source, (str, Path)):
        raise MediaError(
            f"{parameter}: got {type(source).__name__}; expected an image file path, a PIL image or an array"
        )
    path = Path(source)
    if not path.is_file():
        raise MediaError(f"{parameter}={str(path)!r}: no such file; expected an image (PNG, JPEG, WebP, ...)")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(
            f"{parameter}={str(path)!r} is not a readable image ({error}); expected PNG, JPEG, WebP, BMP or GIF"
        ) from None


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
    if source is None:
        raise MediaError(f"{parameter}: none given; expected a video file path or a [F, H, W, 3] uint8 array")
    if not isinstance(source, (str, Path)):
        frames = np.asarray(source)
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise MediaError(f"{parameter}: array of shape {frames.shape}; expected [F, H, W, 3] uint8")
        return (frames[:max_frames] if max_frames else frames), 16.0
    path = Path(source)
    if not path.is_file():
        raise MediaError(f"{parameter}={str(path)!r}: no such file; expected a video (mp4, webm, mov, ...)")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{parameter}={str(path)!r} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 16)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as error:
        raise MediaError(f"{parameter}={str(path)!r} is not a readable video ({error})") from None
    if not frames:
        raise MediaError(f"{parameter}={str(path)!r} contains no frames")
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
