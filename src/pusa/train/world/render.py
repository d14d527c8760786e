"""Drawing a clip of the procedural world: the object's path frame by frame (`trajectory`, `ground_truth`),
its anti-aliased coverage (`shape_coverage`, also the detector's), the background, the finished frames
(`render_clip`) and a contact sheet of clips for viewing.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import (
    BACKGROUND_COLORS,
    EDGE_PAD_PX,
    EXTENT_PER_SIZE,
    GRADIENT_LEVELS,
    MOTION_DIRECTIONS,
    NOISE_LEVELS,
    OBJECT_COLORS,
    SHAPES,
    TEXTURE_STREAM,
    ClipSpec,
    check_choice,
    check_int,
)


# ---------------------------------------------------------------- trajectories
def center_range(size: float, length: int) -> tuple[float, float]:
    """Lowest and highest centre coordinate that keeps an object of `size` inside a side of `length` pixels."""
    margin = EXTENT_PER_SIZE * size + EDGE_PAD_PX
    return margin, length - margin


def _reflect(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold positions back into [low, high] as if they bounced off walls at both ends."""
    span = high - low
    if span <= 0:
        return np.full_like(values, (low + high) / 2.0)
    folded = np.mod(values - low, 2.0 * span)
    return low + np.where(folded <= span, folded, 2.0 * span - folded)


def trajectory(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame object centre and size: three float64 arrays of shape [num_frames] (xs, ys, sizes)."""
    progress = np.linspace(0.0, 1.0, spec.num_frames)  # [F]
    sizes = spec.size + (spec.end_size - spec.size) * progress
    xs = np.full(spec.num_frames, float(spec.x))
    ys = np.full(spec.num_frames, float(spec.y))
    if spec.motion in MOTION_DIRECTIONS:
        unit_x, unit_y = MOTION_DIRECTIONS[spec.motion]
        xs = xs + spec.travel * unit_x * progress
        ys = ys + spec.travel * unit_y * progress
    elif spec.bounce_style == "wall":
        low, high = center_range(spec.size, spec.width)
        xs = _reflect(xs + spec.heading * spec.travel * progress, low, high)
    elif spec.bounce_style == "gravity":
        # Phase relative to the floor contact, wrapped to [-0.5, 0.5): 0 on the floor, +-0.5 at the apex.
        phase = np.mod(progress - spec.bounce_time + 0.5, 1.0) - 0.5
        heights = 4.0 * spec.travel * np.abs(phase) * (1.0 - np.abs(phase))
        ys = ys - heights
    return xs, ys, sizes


def ground_truth(spec: ClipSpec) -> list[tuple[float, float, float]]:
    """Per frame (cx, cy, size) of the object in pixels: the centroid of the drawn shape and its size."""
    xs, ys, sizes = trajectory(spec)
    return [(float(x), float(y), float(s)) for x, y, s in zip(xs, ys, sizes, strict=True)]


# ---------------------------------------------------------------- rendering
def shape_coverage(
    shape: str, xs: np.ndarray, ys: np.ndarray, sizes: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Fraction of each pixel covered by the shape, float32 [F, height, width], one frame per entry of xs/ys/sizes.

    Coverage is `clip(0.5 - signed_distance, 0, 1)`: a one-pixel ramp across the edge, which keeps the area
    and the centroid of the drawn shape equal to those of the ideal shape.
    """
    check_choice("shape", shape, SHAPES)
    xs = np.asarray(xs, dtype=np.float32).reshape(-1, 1, 1)  # [F, 1, 1]
    ys = np.asarray(ys, dtype=np.float32).reshape(-1, 1, 1)
    half_sizes = np.asarray(sizes, dtype=np.float32).reshape(-1, 1, 1) / 2.0
    dx = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :] - xs  # [F, 1, W]
    dy = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None] - ys  # [F, H, 1]
    if shape == "circle":
        signed_distance = np.sqrt(dx * dx + dy * dy) - half_sizes
    elif shape == "square":
        signed_distance = np.maximum(np.abs(dx), np.abs(dy)) - half_sizes
    elif shape == "diamond":
        signed_distance = (np.abs(dx) + np.abs(dy) - half_sizes) / math.sqrt(2.0)
    else:
        # Equilateral triangle pointing up: three half-planes with outward normals (0, 1) and
        # (+-sqrt(3)/2, -1/2), each at the inradius size / (2 sqrt(3)) from the centroid.
        inradius = half_sizes / math.sqrt(3.0)
        slanted = (math.sqrt(3.0) / 2.0) * np.abs(dx) - 0.5 * dy
        signed_distance = np.maximum(dy, slanted) - inradius
    return np.clip(0.5 - signed_distance, 0.0, 1.0).astype(np.float32)  # [F, H, W]


def background_image(spec: ClipSpec) -> np.ndarray:
    """The static background, float32 [height, width, 3] in 0..255."""
    base = np.asarray(BACKGROUND_COLORS[spec.background], dtype=np.float32)
    image = np.broadcast_to(base, (spec.height, spec.width, 3)).copy()
    if spec.texture == "gradient":
        rows = np.linspace(1.0, -1.0, spec.height, dtype=np.float32)  # +1 at the top row
        image += GRADIENT_LEVELS * rows[:, None, None]
    elif spec.texture == "noise":
        rng = np.random.default_rng((spec.seed, TEXTURE_STREAM))
        image += NOISE_LEVELS * rng.standard_normal((spec.height, spec.width, 1)).astype(np.float32)
    return np.clip(image, 0.0, 255.0)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """The clip as uint8 [num_frames, height, width, 3]."""
    xs, ys, sizes = trajectory(spec)
    coverage = shape_coverage(spec.shape, xs, ys, sizes, spec.width, spec.height)[..., None]  # [F, H, W, 1]
    color = np.asarray(OBJECT_COLORS[spec.color], dtype=np.float32)
    frames = background_image(spec)[None] * (1.0 - coverage) + color * coverage  # [F, H, W, 3]
    return np.rint(frames).astype(np.uint8)


def contact_sheet(videos: np.ndarray, frame_step: int = 1, gap_px: int = 2) -> np.ndarray:
    """Lay clips out as rows of frames for viewing: uint8 [B, F, H, W, 3] -> uint8 [rows, columns, 3]."""
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos has shape {videos.shape}; expected [batch, frames, height, width, 3]")
    check_int("frame_step", frame_step, 1)
    check_int("gap_px", gap_px, 0)
    frames = videos[:, ::frame_step]  # [B, F', H, W, 3]
    batch, num_frames, height, width, _ = frames.shape
    sheet = np.full(
        (batch * (height + gap_px) + gap_px, num_frames * (width + gap_px) + gap_px, 3), 128, dtype=np.uint8
    )
    for row in range(batch):
        for column in range(num_frames):
            top, left = gap_px + row * (height + gap_px), gap_px + column * (width + gap_px)
            sheet[top : top + height, left : left + width] = frames[row, column]
    return sheet
