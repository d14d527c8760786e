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

The modules: `spec` (ClipSpec and the vocabulary), `render`, `sampling`, `captions`, `datasets`; every public
name is importable from `pusa.train.world`, as the training stages, the detector, the tests and the
benchmarks do.
"""

from __future__ import annotations

from .captions import CAPTION_WORDS, canonical_caption, caption, motion_phrases
from .datasets import WorldDataset, eval_specs, make_batch
from .render import (
    background_image,
    center_range,
    contact_sheet,
    ground_truth,
    render_clip,
    shape_coverage,
    trajectory,
)
from .sampling import sample_clip_spec
from .spec import (
    BACKGROUND_COLORS,
    BOUNCE_STYLES,
    EDGE_PAD_PX,
    EVAL_SEED_START,
    EVAL_SEEDS_PER_SET,
    EXTENT_PER_SIZE,
    GRADIENT_LEVELS,
    LINEAR_MOTIONS,
    MOTION_DIRECTIONS,
    MOTIONS,
    NOISE_LEVELS,
    OBJECT_COLORS,
    SHAPE_AREA_PER_SIZE_SQUARED,
    SHAPES,
    TEXTURES,
    TRAIN_SEED_LIMIT,
    ClipSpec,
)

__all__ = [
    "BACKGROUND_COLORS",
    "BOUNCE_STYLES",
    "CAPTION_WORDS",
    "EDGE_PAD_PX",
    "EVAL_SEEDS_PER_SET",
    "EVAL_SEED_START",
    "EXTENT_PER_SIZE",
    "GRADIENT_LEVELS",
    "LINEAR_MOTIONS",
    "MOTIONS",
    "MOTION_DIRECTIONS",
    "NOISE_LEVELS",
    "OBJECT_COLORS",
    "SHAPES",
    "SHAPE_AREA_PER_SIZE_SQUARED",
    "TEXTURES",
    "TRAIN_SEED_LIMIT",
    "ClipSpec",
    "WorldDataset",
    "background_image",
    "canonical_caption",
    "caption",
    "center_range",
    "contact_sheet",
    "eval_specs",
    "ground_truth",
    "make_batch",
    "motion_phrases",
    "render_clip",
    "sample_clip_spec",
    "shape_coverage",
    "trajectory",
]
