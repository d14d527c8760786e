"""Sets of procedural-world clips: deterministic training batches (`make_batch`), the map-style
`WorldDataset`, and the held-out evaluation sets (`eval_specs`), whose seeds never meet a training seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import canonical_caption
from .render import render_clip
from .sampling import sample_clip_spec
from .spec import EVAL_SEED_START, EVAL_SEEDS_PER_SET, MOTIONS, TRAIN_SEED_LIMIT, ClipSpec, check_int


# ---------------------------------------------------------------- datasets
def make_batch(
    seed: int, batch_size: int, num_frames: int = 17, width: int = 64, height: int = 64
) -> tuple[np.ndarray, list[str], list[ClipSpec]]:
    """A deterministic batch of training clips: (videos uint8 [B, F, H, W, 3], captions, specs).

    The clip seeds are drawn from `seed` in [0, TRAIN_SEED_LIMIT), so training never sees an eval clip.
    """
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
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
        check_int("num_frames", self.num_frames, 2)
        check_int("width", self.width, 16)
        check_int("height", self.height, 16)

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
    check_int("n", n, 1)
    if n > EVAL_SEEDS_PER_SET:
        raise ValueError(f"n={n!r} must be at most EVAL_SEEDS_PER_SET={EVAL_SEEDS_PER_SET}")
    check_int("seed", seed, 0)
    first = EVAL_SEED_START + seed * EVAL_SEEDS_PER_SET
    return [
        sample_clip_spec(first + i, num_frames, width, height, motion=MOTIONS[i % len(MOTIONS)])
        for i in range(n)
    ]
