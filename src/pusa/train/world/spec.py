"""What one clip of the procedural world is (`ClipSpec`) and the vocabulary it is drawn from: shapes, colours,
backgrounds, textures, motions, the seed ranges of training and evaluation clips, and the argument checks
the other `train.world` modules share. Everything else in `train.world` builds on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")

# Object colours are saturated or bright; backgrounds are dark. Every object colour is at least ~145 RGB units
# (Euclidean) from every background and ~90 from every other object colour, so a pixel-space detector can
# separate the object from the background and name its colour.
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (255, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 200, 70),
    "cyan": (40, 215, 230),
    "blue": (60, 105, 255),
    "purple": (165, 70, 235),
    "white": (245, 245, 245),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 12),
    "dark blue": (18, 28, 80),
    "dark gray": (60, 60, 64),
    "dark green": (16, 62, 30),
    "maroon": (80, 16, 26),
    "brown": (72, 46, 24),
}
# "flat": one colour; "gradient": lighter at the top, darker at the bottom; "noise": fixed per-pixel grain.
# Both textures are static over time and low-contrast, so they never look like the object or like flicker.
TEXTURES = ("flat", "gradient", "noise")
GRADIENT_LEVELS = 10.0  # brightness offset at the top row (+) and bottom row (-), in 0..255 units
NOISE_LEVELS = 2.5  # standard deviation of the grain, in 0..255 units

# Unit displacement per direction, image coordinates (y down).
_DIAGONAL = 1.0 / math.sqrt(2.0)
MOTION_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-_DIAGONAL, -_DIAGONAL),
    "up-right": (_DIAGONAL, -_DIAGONAL),
    "down-left": (-_DIAGONAL, _DIAGONAL),
    "down-right": (_DIAGONAL, _DIAGONAL),
}
LINEAR_MOTIONS = tuple(MOTION_DIRECTIONS)
MOTIONS = (*LINEAR_MOTIONS, "bounces", "grows", "shrinks")
# "wall": slides horizontally, hits the left or right edge of the frame and comes back.
# "gravity": falls onto a floor and rises again along parabolic arcs, like a dropped ball.
BOUNCE_STYLES = ("wall", "gravity")

# Area of each shape as a multiple of size**2, where size is the diameter (circle), side (square, triangle)
# or diagonal (diamond). The triangle is equilateral, points up, and is positioned by its centroid.
SHAPE_AREA_PER_SIZE_SQUARED: dict[str, float] = {
    "circle": math.pi / 4.0,
    "square": 1.0,
    "triangle": math.sqrt(3.0) / 4.0,
    "diamond": 0.5,
}
# Farthest any shape reaches from its centre, per unit size: the triangle's apex sits size/sqrt(3) above its
# centroid. Used to keep objects inside the frame.
EXTENT_PER_SIZE = 0.6
EDGE_PAD_PX = 1.0

TRAIN_SEED_LIMIT = 10**9
EVAL_SEED_START = 10**12
EVAL_SEEDS_PER_SET = 10**6

# Independent random streams derived from one clip seed: np.random.default_rng((clip_seed, stream)).
SPEC_STREAM = 0
CAPTION_STREAM = 1
TEXTURE_STREAM = 2


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip. Lengths are in pixels, times in fractions of the clip (0..1).

    x, y: centre of the object at the first frame. For a gravity bounce, (x, y) is instead where the object
        touches the floor; its height above that point follows parabolic arcs.
    size: diameter (circle), side (square, triangle) or diagonal (diamond) at the first frame.
    end_size: size at the last frame; it changes linearly in between. Equal to `size` unless the motion is
        "grows" (larger) or "shrinks" (smaller).
    travel: path length over the whole clip for the eight straight motions and wall bounces (which fold the
        path back at the frame edge); the bounce height for gravity bounces; 0 for grows and shrinks.
    bounce_style: one of BOUNCE_STYLES when motion is "bounces", otherwise None.
    heading: +1 or -1, the horizontal direction a wall bounce starts in (+1 is rightward). 1 otherwise.
    bounce_time: fraction of the clip at which a gravity bounce touches the floor.
    seed: the clip seed; it also seeds the "noise" texture.
    """

    shape: str
    color: str
    background: str
    motion: str
    x: float
    y: float
    size: float
    end_size: float
    travel: float
    bounce_style: str | None = None
    heading: int = 1
    bounce_time: float = 0.5
    texture: str = "flat"
    num_frames: int = 17
    width: int = 64
    height: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_choice("color", self.color, tuple(OBJECT_COLORS))
        check_choice("background", self.background, tuple(BACKGROUND_COLORS))
        check_choice("motion", self.motion, MOTIONS)
        check_choice("texture", self.texture, TEXTURES)
        check_int("num_frames", self.num_frames, 2)
        check_int("width", self.width, 1)
        check_int("height", self.height, 1)
        check_int("seed", self.seed, 0)
        for name in ("x", "y", "size", "end_size", "travel", "bounce_time"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
        for name in ("size", "end_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        if self.travel < 0:
            raise ValueError(f"travel={self.travel!r} must be >= 0")
        if not 0.0 <= self.bounce_time <= 1.0:
            raise ValueError(f"bounce_time={self.bounce_time!r} must be in [0, 1]")
        if self.heading not in (-1, 1) or isinstance(self.heading, bool):
            raise ValueError(f"heading={self.heading!r} must be 1 (rightward) or -1 (leftward)")
        if self.motion == "bounces":
            check_choice("bounce_style", self.bounce_style, BOUNCE_STYLES)
        elif self.bounce_style is not None:
            raise ValueError(
                f"bounce_style={self.bounce_style!r} must be None unless motion is 'bounces' (got motion={self.motion!r})"
            )
        if self.motion == "grows" and not self.end_size > self.size:
            raise ValueError(
                f"end_size={self.end_size!r} must exceed size={self.size!r} when motion is 'grows'"
            )
        if self.motion == "shrinks" and not self.end_size < self.size:
            raise ValueError(
                f"end_size={self.end_size!r} must be below size={self.size!r} when motion is 'shrinks'"
            )
        if self.motion not in ("grows", "shrinks") and self.end_size != self.size:
            raise ValueError(
                f"end_size={self.end_size!r} must equal size={self.size!r} unless motion is 'grows' or 'shrinks' "
                f"(got motion={self.motion!r})"
            )


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
