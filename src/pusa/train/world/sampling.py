"""Drawing a random clip of the procedural world from a seed (`sample_clip_spec`): every attribute from its own
stream of the clip seed, with the whole object inside the frame in every frame. The datasets and the
caption module draw with it.
"""

from __future__ import annotations

import numpy as np

from .render import center_range
from .spec import (
    BACKGROUND_COLORS,
    BOUNCE_STYLES,
    MOTION_DIRECTIONS,
    MOTIONS,
    OBJECT_COLORS,
    SHAPES,
    SPEC_STREAM,
    TEXTURES,
    TRAIN_SEED_LIMIT,
    ClipSpec,
    check_choice,
    check_int,
)


# ---------------------------------------------------------------- sampling
def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high)) if high > low else float((low + high) / 2.0)


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_clip_spec(
    seed: int | np.random.Generator,
    num_frames: int = 17,
    width: int = 64,
    height: int = 64,
    *,
    motion: str | None = None,
    shape: str | None = None,
    color: str | None = None,
    background: str | None = None,
) -> ClipSpec:
    """Draw a random clip that keeps the whole object inside the frame in every frame.

    seed: a clip seed (int >= 0), or a Generator from which one is drawn in [0, TRAIN_SEED_LIMIT).
    motion, shape, color, background: fix that attribute instead of drawing it.

    Lengths scale with min(width, height) / 64. At 64x64, objects are 8..18 px, straight motions cover
    22..38 px, wall bounces 30..48 px with at least 10 px on each leg, gravity bounces are 22..38 px high,
    and growing or shrinking objects change between 7..10 px and 18..26 px.
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(TRAIN_SEED_LIMIT))
    check_int("seed", seed, 0)
    check_int("num_frames", num_frames, 2)
    check_int("width", width, 16)
    check_int("height", height, 16)
    for name, value, allowed in (
        ("motion", motion, MOTIONS),
        ("shape", shape, SHAPES),
        ("color", color, tuple(OBJECT_COLORS)),
        ("background", background, tuple(BACKGROUND_COLORS)),
    ):
        if value is not None:
            check_choice(name, value, allowed)

    rng = np.random.default_rng((int(seed), SPEC_STREAM))
    # Draw every attribute even when fixed, so fixing one does not change the others for the same seed.
    drawn_motion, drawn_shape = pick(rng, MOTIONS), pick(rng, SHAPES)
    drawn_color, drawn_background = pick(rng, tuple(OBJECT_COLORS)), pick(rng, tuple(BACKGROUND_COLORS))
    motion = motion or drawn_motion
    texture = pick(rng, TEXTURES)
    scale = min(width, height) / 64.0
    common = {
        "shape": shape or drawn_shape,
        "color": color or drawn_color,
        "background": background or drawn_background,
        "motion": motion,
        "texture": texture,
        "num_frames": num_frames,
        "width": width,
        "height": height,
        "seed": int(seed),
    }

    if motion in ("grows", "shrinks"):
        small, large = _uniform(rng, 7.0, 10.0) * scale, _uniform(rng, 18.0, 26.0) * scale
        x_low, x_high = center_range(large, width)
        y_low, y_high = center_range(large, height)
        size, end_size = (small, large) if motion == "grows" else (large, small)
        x, y = _uniform(rng, x_low, x_high), _uniform(rng, y_low, y_high)
        return ClipSpec(x=x, y=y, size=size, end_size=end_size, travel=0.0, **common)

    if motion == "bounces":
        size = _uniform(rng, 8.0, 16.0) * scale
        x_low, x_high = center_range(size, width)
        y_low, y_high = center_range(size, height)
        style = pick(rng, BOUNCE_STYLES)
        heading = 1 if rng.random() < 0.5 else -1
        bounce_time = _uniform(rng, 0.35, 0.65)
        if style == "wall":
            longest_leg = max(bounce_time, 1.0 - bounce_time)
            travel = min(_uniform(rng, 30.0, 48.0) * scale, (x_high - x_low) / longest_leg)
            wall = x_high if heading > 0 else x_low
            x = wall - heading * bounce_time * travel
            y = _uniform(rng, y_low, y_high)
        else:
            travel = min(_uniform(rng, 22.0, 38.0) * scale, y_high - y_low)
            x, y = _uniform(rng, x_low, x_high), y_high
        return ClipSpec(
            x=x,
            y=y,
            size=size,
            end_size=size,
            travel=travel,
            bounce_style=style,
            heading=heading,
            bounce_time=bounce_time,
            **common,
        )

    size = _uniform(rng, 8.0, 18.0) * scale
    x_low, x_high = center_range(size, width)
    y_low, y_high = center_range(size, height)
    unit_x, unit_y = MOTION_DIRECTIONS[motion]
    travel = _uniform(rng, 22.0, 38.0) * scale
    if unit_x:
        travel = min(travel, (x_high - x_low) / abs(unit_x))
    if unit_y:
        travel = min(travel, (y_high - y_low) / abs(unit_y))
    shift_x, shift_y = travel * unit_x, travel * unit_y
    x = _uniform(rng, x_low - min(shift_x, 0.0), x_high - max(shift_x, 0.0))
    y = _uniform(rng, y_low - min(shift_y, 0.0), y_high - max(shift_y, 0.0))
    return ClipSpec(x=x, y=y, size=size, end_size=size, travel=travel, **common)
