"""A procedural video world: one coloured shape moving over a plain background, captioned in plain English.

Everything is generated on the fly from integer seeds, with no files and no global random state:

    spec = sample_clip_spec(seed)          # what happens in the clip
    video = render_clip(spec)              # uint8 [F, H, W, 3]
    text = canonical_caption(spec)         # the same caption every time for this spec
    positions = ground_truth(spec)         # per frame (cx, cy, size) in pixels

Pixel (row i, column j) covers the square [j, j + 1) x [i, i + 1); its centre is (j + 0.5, i + 0.5). The image
y axis points down, so "up" means decreasing y. Shapes are drawn from signed distance fields with a one-pixel
linear ramp, which anti-aliases the edges without supersampling and keeps a batch of clips cheap to render.

Training clips use seeds in [0, TRAIN_SEED_LIMIT); the held-out evaluation set (`eval_specs`) uses seeds from
EVAL_SEED_START upward, so the two never overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
_SPEC_STREAM = 0
_CAPTION_STREAM = 1
_TEXTURE_STREAM = 2


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
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("color", self.color, tuple(OBJECT_COLORS))
        _check_choice("background", self.background, tuple(BACKGROUND_COLORS))
        _check_choice("motion", self.motion, MOTIONS)
        _check_choice("texture", self.texture, TEXTURES)
        _check_int("num_frames", self.num_frames, 2)
        _check_int("width", self.width, 1)
        _check_int("height", self.height, 1)
        _check_int("seed", self.seed, 0)
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
            _check_choice("bounce_style", self.bounce_style, BOUNCE_STYLES)
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


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


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
    _check_choice("shape", shape, SHAPES)
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
        rng = np.random.default_rng((spec.seed, _TEXTURE_STREAM))
        image += NOISE_LEVELS * rng.standard_normal((spec.height, spec.width, 1)).astype(np.float32)
    return np.clip(image, 0.0, 255.0)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """The clip as uint8 [num_frames, height, width, 3]."""
    xs, ys, sizes = trajectory(spec)
    coverage = shape_coverage(spec.shape, xs, ys, sizes, spec.width, spec.height)[..., None]  # [F, H, W, 1]
    color = np.asarray(OBJECT_COLORS[spec.color], dtype=np.float32)
    frames = background_image(spec)[None] * (1.0 - coverage) + color * coverage  # [F, H, W, 3]
    return np.rint(frames).astype(np.uint8)


# ---------------------------------------------------------------- sampling
def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high)) if high > low else float((low + high) / 2.0)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
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
    _check_int("seed", seed, 0)
    _check_int("num_frames", num_frames, 2)
    _check_int("width", width, 16)
    _check_int("height", height, 16)
    for name, value, allowed in (
        ("motion", motion, MOTIONS),
        ("shape", shape, SHAPES),
        ("color", color, tuple(OBJECT_COLORS)),
        ("background", background, tuple(BACKGROUND_COLORS)),
    ):
        if value is not None:
            _check_choice(name, value, allowed)

    rng = np.random.default_rng((int(seed), _SPEC_STREAM))
    # Draw every attribute even when fixed, so fixing one does not change the others for the same seed.
    drawn_motion, drawn_shape = _pick(rng, MOTIONS), _pick(rng, SHAPES)
    drawn_color, drawn_background = _pick(rng, tuple(OBJECT_COLORS)), _pick(rng, tuple(BACKGROUND_COLORS))
    motion = motion or drawn_motion
    texture = _pick(rng, TEXTURES)
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
        style = _pick(rng, BOUNCE_STYLES)
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


# ---------------------------------------------------------------- captions
_LINEAR_VERBS = (
    ("slides", "sliding"),
    ("moves", "moving"),
    ("drifts", "drifting"),
    ("glides", "gliding"),
    ("travels", "traveling"),
)
_DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "leftward", "left", "toward the left"),
    "right": ("to the right", "rightward", "right", "toward the right"),
    "up": ("up", "upward", "upwards", "toward the top"),
    "down": ("down", "downward", "downwards", "toward the bottom"),
    "up-left": ("up and to the left", "diagonally up and left", "toward the top left"),
    "up-right": ("up and to the right", "diagonally up and right", "toward the top right"),
    "down-left": ("down and to the left", "diagonally down and left", "toward the bottom left"),
    "down-right": ("down and to the right", "diagonally down and right", "toward the bottom right"),
}
# Verbs that already say the direction, usable alone ("a red circle rises").
_DIRECTIONAL_VERBS: dict[str, tuple[tuple[str, str], ...]] = {
    "up": (("rises", "rising"), ("climbs", "climbing")),
    "down": (("falls", "falling"), ("sinks", "sinking"), ("drops", "dropping")),
}
_GROW_PHRASES = (
    ("grows", "growing"),
    ("grows larger", "growing larger"),
    ("grows bigger", "growing bigger"),
    ("gets bigger", "getting bigger"),
    ("expands", "expanding"),
    ("grows in place", "growing in place"),
)
_SHRINK_PHRASES = (
    ("shrinks", "shrinking"),
    ("shrinks away", "shrinking away"),
    ("gets smaller", "getting smaller"),
    ("contracts", "contracting"),
    ("shrinks in place", "shrinking in place"),
)
_WALL_BOUNCE_PHRASES = (
    ("bounces", "bouncing"),
    ("bounces back and forth", "bouncing back and forth"),
    ("bounces off the wall", "bouncing off the wall"),
    ("bounces sideways", "bouncing sideways"),
)
_GRAVITY_BOUNCE_PHRASES = (
    ("bounces", "bouncing"),
    ("bounces up and down", "bouncing up and down"),
    ("bounces like a ball", "bouncing like a ball"),
    ("bounces on the floor", "bouncing on the floor"),
)
_SIZE_WORDS_SMALL = ("small", "tiny")
_SIZE_WORDS_LARGE = ("large", "big")
_PREPOSITIONS = ("over", "on", "against")
_TEMPLATES = (
    "{subject} {present} {background}",
    "{subject} {present} {background}",
    "{subject} {gerund} {background}",
    "{background}, {subject} {present}",
    "a {background_name} background with {subject} {gerund}",
    "{background_name} background, {subject} {present}",
)


def motion_phrases(spec: ClipSpec) -> tuple[tuple[str, str], ...]:
    """Every way a caption can say the clip's motion, as (present tense, gerund) pairs."""
    if spec.motion == "grows":
        return _GROW_PHRASES
    if spec.motion == "shrinks":
        return _SHRINK_PHRASES
    if spec.motion == "bounces":
        if spec.bounce_style == "gravity":
            return _GRAVITY_BOUNCE_PHRASES
        side = "right" if spec.heading > 0 else "left"
        return (*_WALL_BOUNCE_PHRASES, (f"bounces off the {side} wall", f"bouncing off the {side} wall"))
    phrases = [
        (f"{present} {direction}", f"{gerund} {direction}")
        for present, gerund in _LINEAR_VERBS
        for direction in _DIRECTION_PHRASES[spec.motion]
    ]
    for present, gerund in _DIRECTIONAL_VERBS.get(spec.motion, ()):
        phrases.append((present, gerund))
        phrases.extend((f"{present} {d}", f"{gerund} {d}") for d in _DIRECTION_PHRASES[spec.motion])
    return tuple(phrases)


def _size_words(spec: ClipSpec) -> tuple[str, ...]:
    if spec.motion in ("grows", "shrinks"):
        return ()
    relative = spec.size / min(spec.width, spec.height)
    if relative <= 0.16:
        return _SIZE_WORDS_SMALL
    if relative >= 0.25:
        return _SIZE_WORDS_LARGE
    return ()


def caption(spec: ClipSpec, rng: np.random.Generator) -> str:
    """A plain-English caption naming the colour, shape, motion and background, e.g.
    "a red circle slides to the left over a dark blue background" or "a small green square moving up on black".
    """
    size_words = _size_words(spec)
    adjective = _pick(rng, size_words) if size_words and rng.random() < 0.4 else None
    noun_phrase = " ".join(word for word in (adjective, spec.color, spec.shape) if word)
    article = "the" if rng.random() < 0.2 else ("an" if noun_phrase[0] in "aeiou" else "a")
    phrases = motion_phrases(spec)
    present, gerund = phrases[int(rng.integers(len(phrases)))]
    preposition = _pick(rng, _PREPOSITIONS)
    background_phrase = _pick(
        rng,
        (
            f"{preposition} a {spec.background} background",
            f"{preposition} the {spec.background} background",
            f"{preposition} a {spec.background} backdrop",
            f"{preposition} {spec.background}",
        ),
    )
    template = _pick(rng, _TEMPLATES)
    return template.format(
        subject=f"{article} {noun_phrase}",
        present=present,
        gerund=gerund,
        background=background_phrase,
        background_name=spec.background,
    )


def canonical_caption(spec: ClipSpec) -> str:
    """The caption this spec always gets in datasets: `caption` with a generator seeded from spec.seed."""
    return caption(spec, np.random.default_rng((spec.seed, _CAPTION_STREAM)))


def _caption_vocabulary() -> tuple[str, ...]:
    fragments = [
        "a an the with background backdrop",
        *_SIZE_WORDS_SMALL,
        *_SIZE_WORDS_LARGE,
        *_PREPOSITIONS,
        *OBJECT_COLORS,
        *BACKGROUND_COLORS,
        *SHAPES,
    ]
    probe = ClipSpec("circle", "red", "black", "right", 32.0, 32.0, 10.0, 10.0, 20.0)
    for motion in LINEAR_MOTIONS:
        fragments += [" ".join(pair) for pair in motion_phrases(replace(probe, motion=motion))]
    for style in BOUNCE_STYLES:
        for heading in (-1, 1):
            bounce = replace(probe, motion="bounces", bounce_style=style, heading=heading)
            fragments += [" ".join(pair) for pair in motion_phrases(bounce)]
    fragments += [" ".join(pair) for pair in (*_GROW_PHRASES, *_SHRINK_PHRASES)]
    return tuple(sorted({word for fragment in fragments for word in fragment.split()}))


# Every word a caption can contain (punctuation aside: captions may also contain commas).
CAPTION_WORDS: tuple[str, ...] = _caption_vocabulary()


# ---------------------------------------------------------------- datasets
def make_batch(
    seed: int, batch_size: int, num_frames: int = 17, width: int = 64, height: int = 64
) -> tuple[np.ndarray, list[str], list[ClipSpec]]:
    """A deterministic batch of training clips: (videos uint8 [B, F, H, W, 3], captions, specs).

    The clip seeds are drawn from `seed` in [0, TRAIN_SEED_LIMIT), so training never sees an eval clip.
    """
    _check_int("seed", seed, 0)
    _check_int("batch_size", batch_size, 1)
    clip_seeds = np.random.default_rng(seed).integers(TRAIN_SEED_LIMIT, size=batch_size)
    specs = [sample_clip_spec(int(clip_seed), num_frames, width, height) for clip_seed in clip_seeds]
    videos = np.stack([render_clip(spec) for spec in specs])  # [B, F, H, W, 3]
    return videos, [canonical_caption(spec) for spec in specs], specs


@dataclass(frozen=True)
class WorldDataset:
    """Map-style dataset of training clips: item `index` is the clip with seed `index`.

    Items are dicts {"video": uint8 [F, H, W, 3], "caption": str, "seed": int}, which torch's default
    collate turns into a batch. `spec(index)` gives the ClipSpec behind an item.
    """

    num_frames: int = 17
    width: int = 64
    height: int = 64

    def __post_init__(self) -> None:
        _check_int("num_frames", self.num_frames, 2)
        _check_int("width", self.width, 16)
        _check_int("height", self.height, 16)

    def __len__(self) -> int:
        return TRAIN_SEED_LIMIT

    def spec(self, index: int) -> ClipSpec:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"index={index!r} must be an integer in [0, {len(self)})")
        return sample_clip_spec(int(index), self.num_frames, self.width, self.height)

    def __getitem__(self, index: int) -> dict[str, object]:
        spec = self.spec(index)
        return {"video": render_clip(spec), "caption": canonical_caption(spec), "seed": spec.seed}


def eval_specs(
    n: int, seed: int = 0, num_frames: int = 17, width: int = 64, height: int = 64
) -> list[ClipSpec]:
    """The held-out evaluation set number `seed`: `n` clips, motions cycling through MOTIONS in order.

    Clip i has seed EVAL_SEED_START + seed * EVAL_SEEDS_PER_SET + i, far above every training seed.
    """
    _check_int("n", n, 1)
    if n > EVAL_SEEDS_PER_SET:
        raise ValueError(f"n={n!r} must be at most EVAL_SEEDS_PER_SET={EVAL_SEEDS_PER_SET}")
    _check_int("seed", seed, 0)
    first = EVAL_SEED_START + seed * EVAL_SEEDS_PER_SET
    return [
        sample_clip_spec(first + i, num_frames, width, height, motion=MOTIONS[i % len(MOTIONS)])
        for i in range(n)
    ]


def contact_sheet(videos: np.ndarray, frame_step: int = 1, gap_px: int = 2) -> np.ndarray:
    """Lay clips out as rows of frames for viewing: uint8 [B, F, H, W, 3] -> uint8 [rows, columns, 3]."""
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos has shape {videos.shape}; expected [batch, frames, height, width, 3]")
    _check_int("frame_step", frame_step, 1)
    _check_int("gap_px", gap_px, 0)
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
