"""Pixel-space detector for clips of the procedural world (`pusa.train.world`), used to score generated videos.

Per frame: the background is estimated row by row (the world's textures vary only slowly from top to bottom
and the object never covers half a row), pixels far from it in RGB form the object mask, its largest
connected piece is kept, and the object's colour is the median of the piece's most saturated pixels. A soft
coverage (0..1 per pixel, from projecting each pixel onto the background->object colour line) gives a
sub-pixel centroid and area. The shape is the world shape whose rendered template, drawn at the measured
centroid with the measured area, overlaps the coverage best (soft IoU).

Per clip: colour and shape by area-weighted vote, motion from the centroid trajectory and the area trend,
the background's name, and flicker (mean absolute frame difference away from the object).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pusa.train.world import (
    BACKGROUND_COLORS,
    OBJECT_COLORS,
    SHAPE_AREA_PER_SIZE_SQUARED,
    SHAPES,
    shape_coverage,
)

# RGB distance from the background above which a pixel belongs to the object. World objects sit >= 145
# away from their background; textures stay within ~20.
DEFAULT_THRESHOLD = 40.0
MIN_AREA_PX = 4.0
# Pixels at least this fraction of the piece's largest distance from the background give the object colour.
CORE_FRACTION = 0.75
# Flicker ignores object pixels (above the detection threshold) and this many pixels around them, which
# covers the anti-aliased fringe.
FLICKER_MARGIN_PX = 2
# Motion thresholds, as fractions of min(width, height) (6.4 px and 9.6 px at 64x64).
BOUNCE_EXCESS_FRACTION = 0.1
MOVE_FRACTION = 0.15
GROWTH_AREA_RATIO = 1.8

_DIRECTION_SECTORS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


@dataclass(frozen=True)
class FrameDetection:
    """The object found in one frame. Coordinates are in pixels with pixel centres at +0.5."""

    present: bool
    cx: float = math.nan
    cy: float = math.nan
    area: float = 0.0  # sum of soft coverage, px^2
    bbox: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) of pixels >= half covered, exclusive end
    object_rgb: tuple[float, float, float] | None = None
    color: str | None = None  # nearest name in OBJECT_COLORS
    shape: str | None = None
    shape_scores: dict[str, float] = field(default_factory=dict)  # soft IoU with each shape's template


@dataclass(frozen=True, eq=False)
class ClipAnalysis:
    detections: tuple[FrameDetection, ...]
    present_fraction: float
    color: str | None
    shape: str | None
    motion: str  # a world motion, "static", or "unknown" when fewer than two frames show the object
    centroids: np.ndarray  # [F, 2] (cx, cy), NaN where absent
    areas: np.ndarray  # [F], 0 where absent
    background_rgb: np.ndarray  # [3], median background colour
    background: str  # nearest name in BACKGROUND_COLORS
    flicker: float  # mean |frame[t+1] - frame[t]| in 0..255 units over pixels away from the object


def nearest_color_name(rgb: np.ndarray | tuple[float, ...], palette: dict[str, tuple[int, int, int]]) -> str:
    """The palette entry closest to `rgb` in Euclidean RGB distance."""
    names = list(palette)
    distances = np.linalg.norm(
        np.asarray([palette[n] for n in names], dtype=np.float64) - np.asarray(rgb), axis=1
    )
    return names[int(np.argmin(distances))]


def estimate_background_rows(frames: np.ndarray) -> np.ndarray:
    """Background colour per row, float32 [H, 3], from one frame [H, W, 3] or a clip [F, H, W, 3].

    The median over each row (and over time, for a clip) ignores the object as long as it covers less than
    half of the row.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames has shape {frames.shape}; expected [height, width, 3] or [frames, height, width, 3]"
        )
    row_medians = np.median(frames, axis=2)  # [F, H, 3]
    return np.median(row_medians, axis=0).astype(np.float32)


def _background_image(background: np.ndarray | None, frame: np.ndarray) -> np.ndarray:
    """Broadcast a background given as [3], [H, 3] or [H, W, 3] (or estimated when None) to [H, W, 3]."""
    height, width = frame.shape[:2]
    if background is None:
        background = estimate_background_rows(frame)
    background = np.asarray(background, dtype=np.float32)
    if background.shape == (height, 3):
        background = background[:, None, :]
    if background.shape not in ((3,), (height, 1, 3), (height, width, 3)):
        raise ValueError(
            f"background has shape {background.shape}; expected (3,), ({height}, 3) or ({height}, {width}, 3)"
        )
    return np.broadcast_to(background, (height, width, 3))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of a boolean [H, W] mask."""
    height, width = mask.shape
    # Python lists: indexing them is far cheaper than indexing numpy arrays one element at a time.
    is_set = mask.tolist()
    labels = [[0] * width for _ in range(height)]
    best_label, best_count, next_label = 0, 0, 0
    for start_row, start_col in zip(*np.nonzero(mask), strict=True):
        if labels[start_row][start_col]:
            continue
        next_label += 1
        labels[start_row][start_col] = next_label
        queue, count = deque([(int(start_row), int(start_col))]), 0
        while queue:
            row, col = queue.popleft()
            count += 1
            for r in (row - 1, row, row + 1):
                if not 0 <= r < height:
                    continue
                for c in (col - 1, col, col + 1):
                    if 0 <= c < width and is_set[r][c] and not labels[r][c]:
                        labels[r][c] = next_label
                        queue.append((r, c))
        if count > best_count:
            best_label, best_count = next_label, count
    return np.asarray(labels) == best_label


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean [..., H, W] mask by `radius` pixels (square neighbourhood)."""
    grown = mask
    for _ in range(radius):
        padded = np.pad(grown, [(0, 0)] * (grown.ndim - 2) + [(1, 1), (1, 1)])
        height, width = grown.shape[-2:]
        grown = np.zeros_like(grown)
        for d_row in range(3):
            for d_col in range(3):
                grown = grown | padded[..., d_row : d_row + height, d_col : d_col + width]
    return grown


def classify_shape(coverage: np.ndarray, cx: float, cy: float, area: float) -> dict[str, float]:
    """Soft IoU between the object's coverage [H, W] and each world shape drawn with the same centroid and area."""
    height, width = coverage.shape
    scores = {}
    for shape in SHAPES:
        size = math.sqrt(area / SHAPE_AREA_PER_SIZE_SQUARED[shape])
        template = shape_coverage(shape, [cx], [cy], [size], width, height)[0]  # [H, W]
        scores[shape] = float(np.minimum(coverage, template).sum() / np.maximum(coverage, template).sum())
    return scores


def detect_frame(
    frame: np.ndarray,
    background: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = MIN_AREA_PX,
) -> FrameDetection:
    """Find the single object in one frame.

    frame: [H, W, 3], uint8 or float in 0..255.
    background: its colour as [3], [H, 3] (per row) or [H, W, 3]; estimated from the frame when None.
    threshold: RGB distance from the background above which a pixel is object.
    min_area: fewer object pixels than this means no object.
    """
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frame has shape {frame.shape}; expected [height, width, 3]")
    if threshold <= 0:
        raise ValueError(f"threshold={threshold!r} must be positive")
    background_image = _background_image(background, frame)  # [H, W, 3]
    offset = frame - background_image  # [H, W, 3]
    distance = np.linalg.norm(offset, axis=-1)  # [H, W]
    mask = distance > threshold
    if mask.sum() < min_area:
        return FrameDetection(present=False)

    piece = _largest_component(mask)
    core = piece & (distance >= CORE_FRACTION * distance[piece].max())
    object_rgb = np.median(frame[core], axis=0)  # [3]
    # Soft coverage: where each pixel sits on the line from its background colour to the object colour.
    object_offset = object_rgb - background_image  # [H, W, 3]
    coverage = (offset * object_offset).sum(-1) / np.maximum((object_offset**2).sum(-1), 1.0)
    coverage = np.where(_dilate(piece, 1), np.clip(coverage, 0.0, 1.0), 0.0)  # [H, W]
    area = float(coverage.sum())
    if area < min_area:
        return FrameDetection(present=False)

    height, width = coverage.shape
    cx = float((coverage.sum(0) * (np.arange(width) + 0.5)).sum() / area)
    cy = float((coverage.sum(1) * (np.arange(height) + 0.5)).sum() / area)
    rows, cols = np.nonzero(coverage >= 0.5)
    if rows.size == 0:
        rows, cols = np.nonzero(piece)
    scores = classify_shape(coverage, cx, cy, area)
    return FrameDetection(
        present=True,
        cx=cx,
        cy=cy,
        area=area,
        bbox=(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1),
        object_rgb=tuple(float(v) for v in object_rgb),
        color=nearest_color_name(object_rgb, OBJECT_COLORS),
        shape=max(scores, key=scores.__getitem__),
        shape_scores=scores,
    )


def direction_name(dx: float, dy: float) -> str:
    """One of the eight world directions nearest to the displacement (dx, dy) in image coordinates (y down)."""
    angle = math.degrees(math.atan2(-dy, dx)) % 360.0
    return _DIRECTION_SECTORS[round(angle / 45.0) % 8]


def classify_motion(centroids: np.ndarray, areas: np.ndarray, width: int, height: int) -> str:
    """Name the motion of a centroid trajectory [F, 2] (NaN rows where absent) with areas [F].

    "bounces" when x or y turns back by more than BOUNCE_EXCESS_FRACTION of the frame (the range of the
    coordinate exceeds its net change), else a direction when the net displacement exceeds MOVE_FRACTION,
    else "grows"/"shrinks" when the area changes by GROWTH_AREA_RATIO, else "static".
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    present = ~np.isnan(centroids[:, 0])
    if present.sum() < 2:
        return "unknown"
    xs, ys, present_areas = centroids[present, 0], centroids[present, 1], areas[present]
    scale = min(width, height)
    ends = max(1, len(xs) // 8)  # average a few frames at each end against jitter
    net_x = xs[-ends:].mean() - xs[:ends].mean()
    net_y = ys[-ends:].mean() - ys[:ends].mean()
    excess_x = (xs.max() - xs.min()) - abs(xs[-1] - xs[0])
    excess_y = (ys.max() - ys.min()) - abs(ys[-1] - ys[0])
    if max(excess_x, excess_y) >= BOUNCE_EXCESS_FRACTION * scale:
        return "bounces"
    if math.hypot(net_x, net_y) >= MOVE_FRACTION * scale:
        return direction_name(net_x, net_y)
    growth = present_areas[-ends:].mean() / max(present_areas[:ends].mean(), 1e-6)
    if growth >= GROWTH_AREA_RATIO:
        return "grows"
    if growth <= 1.0 / GROWTH_AREA_RATIO:
        return "shrinks"
    return "static"


def _weighted_vote(labels: list[str | None], weights: list[float]) -> str | None:
    totals: dict[str, float] = {}
    for label, weight in zip(labels, weights, strict=True):
        if label is not None:
            totals[label] = totals.get(label, 0.0) + weight
    return max(totals, key=totals.__getitem__) if totals else None


def measure_flicker(
    frames: np.ndarray, background_image: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> float:
    """Mean |frame[t+1] - frame[t]| (0..255 units, all channels) over pixels away from the object in both frames.

    frames: [F, H, W, 3]; background_image: [H, W, 3]; threshold: as in `detect_frame`. NaN when no pixel
    qualifies.
    """
    frames = np.asarray(frames, dtype=np.float32)
    distance = np.linalg.norm(frames - background_image[None], axis=-1)  # [F, H, W]
    near_object = _dilate(distance > threshold, FLICKER_MARGIN_PX)  # [F, H, W]
    background_pairs = ~(near_object[1:] | near_object[:-1])  # [F-1, H, W]
    if not background_pairs.any():
        return math.nan
    differences = np.abs(frames[1:] - frames[:-1]).mean(-1)  # [F-1, H, W]
    return float(differences[background_pairs].mean())


def analyze_clip(
    frames: np.ndarray,
    background: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> ClipAnalysis:
    """Detect the object in every frame of a clip [F, H, W, 3] (uint8 or float 0..255) and summarise it.

    background: as in `detect_frame`; estimated from the whole clip (per row, median over time) when None.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames has shape {frames.shape}; expected [frames, height, width, 3]")
    num_frames, height, width = frames.shape[:3]
    if background is None:
        background = estimate_background_rows(frames)  # [H, 3]
    background_image = _background_image(background, frames[0])  # [H, W, 3]
    detections = tuple(detect_frame(frame, background_image, threshold) for frame in frames)

    centroids = np.array([(d.cx, d.cy) for d in detections], dtype=np.float64)  # [F, 2]
    areas = np.array([d.area for d in detections], dtype=np.float64)  # [F]
    background_rgb = np.median(background_image.reshape(-1, 3), axis=0)  # [3]
    return ClipAnalysis(
        detections=detections,
        present_fraction=sum(d.present for d in detections) / num_frames,
        color=_weighted_vote([d.color for d in detections], list(areas)),
        shape=_weighted_vote([d.shape for d in detections], list(areas)),
        motion=classify_motion(centroids, areas, width, height),
        centroids=centroids,
        areas=areas,
        background_rgb=background_rgb,
        background=nearest_color_name(background_rgb, BACKGROUND_COLORS),
        flicker=measure_flicker(frames, background_image, threshold) if num_frames > 1 else 0.0,
    )
