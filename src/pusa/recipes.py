"""The conditioning recipes, as arithmetic on lengths. Pure: imports only numpy (and `params`).

For each recipe, from the source clip lengths and the output length: which latent frames are
conditioned (`positions`), how strongly (`noise_multipliers`), which frames of which source are used,
where they sit in the conditioning clip the VAE encodes, and how many frames each source needs. The
pipeline builds its conditioning clip from a `RecipePlan`, the studio renders its notes from one, the
forms and `request.validate` (hence the CLI and the API) ask for the same plans; nothing else types
these numbers.

Latent frame k covers pixel frames 4k-3..4k (k >= 1), latent 0 pixel frame 0 alone (Wan's causal VAE),
so `c` context latents at the start are `4(c-1)+1` frames and `c` latents at the end are `4c` frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .params import PARAMS, RECIPES, InputError, plural

EXTENSION_MULTIPLIERS = (0.0, 0.3, 0.4, 0.5)  # context latents 0..3: the oldest kept exactly
COMPLETION_MULTIPLIERS = (0.3, 0.3)  # the first frame and the last 4
TRANSITION_HEAD = (0.0, 0.3, 0.4)  # the end of the first clip, latents 0..c-1
TRANSITION_TAIL = (0.4, 0.3, 0.0)  # the start of the second clip, the last c latents
KEYFRAME_MULTIPLIERS = (0.2, 0.5)  # the seed's "0.2,0.5": the first image, then every later one
VIDEO_MULTIPLIER = 0.2  # custom video-to-video positions without multipliers

# noise multipliers as callers give them: a list or tuple of numbers, or None/empty for the recipe's own
Multipliers = Sequence[float] | None


def num_latent_frames(num_frames: int) -> int:
    """Wan's causal VAE: pixel frame 0 alone, then 4 pixel frames per latent frame."""
    return (num_frames - 1) // 4 + 1


def head_frames(latents: int) -> int:
    """Pixel frames of the first `latents` latent frames."""
    return 4 * (latents - 1) + 1


def pixel_frames_of_latent(latent_index: int) -> tuple[int, int]:
    """Inclusive pixel-frame range covered by one latent frame: 0 -> (0, 0), k >= 1 -> (4k-3, 4k)."""
    if latent_index == 0:
        return (0, 0)
    return (4 * latent_index - 3, 4 * latent_index)


@dataclass(frozen=True)
class Span:
    """Frames `start..stop-1` of source `source` ("video" or "end_video"), placed at `at` in the clip."""

    source: str
    start: int
    stop: int
    at: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RecipePlan:
    """What a recipe conditions on, for given lengths.

    recipe:            "extension" | "completion" | "transition" | "custom"
    num_frames:        the output's length (pixel frames); the conditioning clip has this length
                       (extension: only its head, the rest is never encoded)
    positions:         the conditioned latent frames
    noise_multipliers: one per position
    spans:             which source frames go where in the conditioning clip
    needed:            frames each source must have
    sources:           per position, where it comes from, in words (the studio's timeline)
    """

    recipe: str
    num_frames: int
    positions: tuple[int, ...]
    noise_multipliers: tuple[float, ...]
    spans: tuple[Span, ...]
    needed: dict[str, int]
    sources: tuple[str, ...]

    @property
    def clip_frames(self) -> int:
        """Frames of the conditioning clip: up to the last conditioned latent (the VAE is causal)."""
        return head_frames(max(self.positions) + 1)

    def note(self) -> str:
        """One sentence saying what the recipe will do (the studio shows it before Generate)."""
        n = self.num_frames
        if self.recipe == "extension":
            (span,) = self.spans
            return (
                f"Extension: the source's {_last(span.length)} the new clip (latents "
                f"{_range_text(self.positions)}); frames {span.length}-{n - 1} are generated."
            )
        if self.recipe == "completion":
            return (
                f"Completion: the source's first frame and its last 4 frames are kept (latents 0 and "
                f"{self.positions[-1]}); frames 1-{n - 5} are generated between them."
            )
        if self.recipe == "transition":
            head, tail = self.spans
            return (
                f"Transition: the source's {_last(head.length)} the clip (latents "
                f"{_range_text(self.positions[: len(self.positions) // 2])}), the second clip's first "
                f"{tail.length} close it (latents {_range_text(self.positions[len(self.positions) // 2 :])}); "
                f"frames {head.length}-{n - tail.length - 1} are generated."
            )
        return (
            f"The source's frames at latent positions {_range_text(self.positions)} are kept; it needs at "
            f"least {self.needed['video']} frames."
        )

    def conditioning_clip(self, sources: dict[str, np.ndarray]) -> np.ndarray:
        """`[clip_frames, H, W, 3]` uint8: the spans of `sources` at their places, cross-faded between.

        The VAE is causal, so what sits before a conditioned frame leaks a little into its latent; a
        cross-fade between the spans around a gap leaks less than a blank."""
        first = next(iter(sources.values()))
        clip = np.zeros((self.clip_frames, *first.shape[1:]), dtype=np.float32)
        filled = np.zeros(self.clip_frames, dtype=bool)
        for span in self.spans:
            stop = min(span.at + span.length, self.clip_frames)
            clip[span.at : stop] = sources[span.source][span.start : span.start + stop - span.at]
            filled[span.at : stop] = True
        holes = np.flatnonzero(~filled)
        if holes.size:
            before, after = holes[0] - 1, holes[-1] + 1
            if before < 0 or after >= self.clip_frames or len(holes) != after - before - 1:
                raise ValueError(f"{self.recipe}: its spans leave gaps one cross-fade cannot fill: {holes}")
            weights = np.linspace(0.0, 1.0, holes.size + 2, dtype=np.float32)[1:-1, None, None, None]
            clip[holes] = (1 - weights) * clip[before] + weights * clip[after]
        out: np.ndarray = clip.round().astype(np.uint8)
        return out


def _last(frames: int, verb: str = "open") -> str:
    """A source's closing frames, the verb agreeing: "last frame opens", "last 13 frames open"."""
    said = "last frame" if frames == 1 else f"last {frames} frames"
    return f"{said} {verb}s" if verb and frames == 1 else f"{said} {verb}".rstrip()


def _range_text(positions: tuple[int, ...]) -> str:
    positions = tuple(positions)
    if len(positions) > 2 and positions == tuple(range(positions[0], positions[-1] + 1)):
        return f"{positions[0]}-{positions[-1]}"
    return ",".join(str(p) for p in positions)


def _multipliers(
    given: Multipliers,
    default: tuple[float, ...],
    count: int | None,
    recipe: str,
    param: str = "noise_multipliers",
    at: int | None = None,
    hint: str = "",
) -> tuple[float, ...]:
    """The given multipliers, else the recipe's own; another count than `count` is refused (it would
    silently change what the recipe conditions). at: the output's frames, for the message."""
    if given is None or len(given) == 0:
        return tuple(default)
    if count is not None and len(given) != count:
        noun = "noise multiplier" if param == "noise_multipliers" else "multiplier"
        where = f"at {at} frames" if at else "here"
        raise InputError(
            param, [float(m) for m in given],
            f"the {recipe} conditions {plural(count, 'latent frame')} {where}; give {plural(count, noun)} "
            f"or none (the {recipe}'s own: {','.join(f'{m:g}' for m in default)}){hint}",
            f"has {plural(len(given), 'value')}",
        )  # fmt: skip
    return tuple(float(m) for m in given)


def _need(source: str, have: int | None, need: int, why: str) -> None:
    if have is not None and have < need:
        problem = f"has {plural(have, 'frame')}"
        raise InputError(source, have, f"{why} needs at least {need}", problem, show_value=False)


def extension(
    num_frames: int,
    source_frames: int | None = None,
    noise_multipliers: Multipliers = None,
    context: int | None = None,
) -> RecipePlan:
    """Continue a clip: its last `4(c-1)+1` frames become latents 0..c-1 of the new one.

    c = `context` (`plan`: the given positions' count): by default 4 (13 frames), fewer when the output
    has fewer latents. One multiplier per context latent or none; their count never sets the context."""
    num_latent = num_latent_frames(num_frames)
    if num_latent < 2:
        raise InputError("num_frames", num_frames, "the extension recipe needs 5 frames or more")
    if context is None:
        context = min(len(EXTENSION_MULTIPLIERS), num_latent - 1)
    elif not 1 <= context <= num_latent - 1:
        raise InputError(
            "positions", context,
            f"the extension recipe keeps latents 0..c-1, c at most {num_latent - 1} here (the output has "
            f"{num_latent} latent frames and at least one is generated)",
            f"ask for {plural(context, 'context latent')}", show_value=False,
        )  # fmt: skip
    # a context longer than the recipe's own 4 latents: the later ones as loose as its last
    default = (EXTENSION_MULTIPLIERS + EXTENSION_MULTIPLIERS[-1:] * context)[:context]
    multipliers = _multipliers(
        noise_multipliers, default, context, "extension recipe", at=num_frames,
        hint="; or positions 0,1,...,c-1 for a context of c latent frames",
    )  # fmt: skip
    length = head_frames(context)
    _need("video", source_frames, length, f"the extension recipe with {plural(context, 'context latent')}")
    start = (source_frames - length) if source_frames is not None else 0
    return RecipePlan(
        "extension", num_frames, tuple(range(context)), multipliers,
        (Span("video", start, start + length, 0),), {"video": length},
        tuple(f"source's {_last(length, verb='')}" for _ in range(context)),
    )  # fmt: skip


def completion(
    num_frames: int, source_frames: int | None = None, noise_multipliers: Multipliers = None
) -> RecipePlan:
    """Regenerate a clip's middle from its first frame (latent 0) and its last 4 frames (the last latent).

    The source's last frames go to the end of the conditioning clip with the frames just before them (its
    real lead-in, for the causal VAE); a source shorter than the output is bridged by a cross-fade."""
    num_latent = num_latent_frames(num_frames)
    if num_latent < 3:  # the first and the last latent kept, at least one generated between them
        raise InputError("num_frames", num_frames, "the completion recipe needs 9 frames or more")
    multipliers = _multipliers(
        noise_multipliers, COMPLETION_MULTIPLIERS, 2, "completion recipe", at=num_frames
    )
    _need("video", source_frames, 5, "the completion recipe (its first frame and 4 more)")
    have = source_frames if source_frames is not None else num_frames
    tail = min(have - 1, num_frames - 1)  # the source's last `tail` frames end the clip
    spans = (Span("video", 0, 1, 0), Span("video", have - tail, have, num_frames - tail))
    return RecipePlan(
        "completion", num_frames, (0, num_latent - 1), multipliers, spans, {"video": 5},
        ("source frame 0", "source's last 4 frames"),
    )  # fmt: skip


def transition_context(num_latent: int) -> int:
    """Latents each side of a transition: 3 (9 + 12 frames) from 10 latents up, fewer for shorter clips,
    so that at least as many latents are generated as are kept on each side."""
    return min(len(TRANSITION_HEAD), (num_latent - 1) // 3)


def transition(
    num_frames: int,
    source_frames: int | None = None,
    end_frames: int | None = None,
    noise_multipliers: Multipliers = None,
) -> RecipePlan:
    """Bridge two clips: the end of the first opens the new clip (latents 0..c-1), the start of the second
    closes it (the last c latents), the middle is generated. c = `transition_context` (3 at 81 frames,
    1 at 17)."""
    num_latent = num_latent_frames(num_frames)
    context = transition_context(num_latent)
    if context < 1:
        raise InputError(
            "num_frames", num_frames, "the transition recipe needs 13 frames or more (4 latents)"
        )
    default = TRANSITION_HEAD[:context] + TRANSITION_TAIL[len(TRANSITION_TAIL) - context :]
    multipliers = _multipliers(noise_multipliers, default, 2 * context, "transition recipe", at=num_frames)
    head, tail = head_frames(context), 4 * context
    _need("video", source_frames, head, "the transition recipe")
    _need("end_video", end_frames, tail, "the transition recipe")
    start = (source_frames - head) if source_frames is not None else 0
    positions = (*range(context), *range(num_latent - context, num_latent))
    spans = (Span("video", start, start + head, 0), Span("end_video", 0, tail, num_frames - tail))
    sources = ("end of the source",) * context + ("start of the second clip",) * context
    return RecipePlan(
        "transition", num_frames, positions, multipliers, spans, {"video": head, "end_video": tail}, sources
    )


def custom(
    num_frames: int,
    positions: Iterable[int],
    source_frames: int | None = None,
    noise_multipliers: Multipliers = None,
) -> RecipePlan:
    """Video-to-video at chosen positions: the source's own latent frames there (multiplier 0.2 each)."""
    positions = tuple(positions)
    if not positions:
        raise InputError(
            "positions", [], "video-to-video needs the latent frames to keep, e.g. 0,1,2,3", "is empty"
        )
    multipliers = _multipliers(noise_multipliers, (VIDEO_MULTIPLIER,) * len(positions), None, "custom")
    need = head_frames(max(positions) + 1)
    _need("video", source_frames, need, f"positions up to latent {max(positions)}")
    return RecipePlan(
        "custom", num_frames, positions, multipliers, (Span("video", 0, need, 0),), {"video": need},
        tuple(f"source frames {_frames_text(p)}" for p in positions),
    )  # fmt: skip


def plan(
    recipe: str | None,
    num_frames: int,
    positions: Sequence[int] = (),
    noise_multipliers: Multipliers = None,
    source_frames: int | None = None,
    end_frames: int | None = None,
) -> RecipePlan:
    """The plan of a video-to-video request: its recipe's, or the custom positions'."""
    if recipe is None or recipe == "custom":
        return custom(num_frames, positions, source_frames, noise_multipliers)
    if recipe not in RECIPES:
        raise InputError("recipe", recipe, f"choose one of {', '.join(RECIPES)} (or none: custom positions)")
    if recipe == "extension":  # given positions set its context (checked below: they must be 0..c-1)
        context = len(positions) if positions else None
        made = extension(num_frames, source_frames, noise_multipliers, context)
    elif recipe == "completion":
        made = completion(num_frames, source_frames, noise_multipliers)
    else:
        made = transition(num_frames, source_frames, end_frames, noise_multipliers)
    if positions and tuple(positions) != made.positions:
        raise InputError(
            "positions", list(positions),
            f"the {recipe} recipe conditions latent frames {','.join(map(str, made.positions))} here; give "
            "those or none (or no recipe, to pick positions freely)",
            "does not fit the recipe",
        )  # fmt: skip
    return made


def _frames_text(latent_index: int) -> str:
    first, last = pixel_frames_of_latent(latent_index)
    return str(first) if first == last else f"{first}-{last}"


# ------------------------------------------------------------------------------------------- keyframes
def spread_positions(count: int, num_frames: int) -> list[int]:
    """`count` latent frames spread from the first to the last (Multi-Frames' default positions)."""
    last = num_latent_frames(num_frames) - 1
    return [round(j * last / max(count - 1, 1)) for j in range(count)]


def keyframe_multipliers(count: int) -> list[float]:
    """Multi-Frames' default multipliers: 0.2 for the first image, 0.5 for every later one."""
    return [KEYFRAME_MULTIPLIERS[0]] + [KEYFRAME_MULTIPLIERS[1]] * (count - 1) if count else []


# ------------------------------------------------------------------------------------------ long video
LONG_CONTEXT = PARAMS["context_latents"].default  # overlap latents (benchmarks/long_video.py chose it)
LONG_MULTIPLIER = 0.0  # each overlap latent kept exactly: the chain's seams are the previous chunk's


@dataclass(frozen=True)
class Chunk:
    """One clip of a long video, in the long video's latent frames.

    start:     the long video's latent that this chunk's latent 0 is (chunk k >= 1 opens on the overlap)
    keep_from: the first of this chunk's latents the long video takes (0 for the first chunk, else the
               overlap's length: the overlap is the previous chunk's)
    keep_to:   one past the last one it takes (less than the chunk's latents for a last chunk cut short)
    seed:      its noise (`chunk_seed`)
    """

    index: int
    start: int
    keep_from: int
    keep_to: int
    seed: int

    @property
    def kept(self) -> tuple[int, int]:
        """The long video's latents this chunk gives, `start..stop-1`."""
        return self.start + self.keep_from, self.start + self.keep_to

    @property
    def frames(self) -> tuple[int, int]:
        """The long video's pixel frames this chunk gives, inclusive."""
        first, stop = self.kept
        return pixel_frames_of_latent(first)[0], pixel_frames_of_latent(stop - 1)[1]

    @property
    def first_frame(self) -> int:
        """The long video's pixel frame that is this chunk's frame 0 (its latent 0's last frame)."""
        return 4 * self.start


@dataclass(frozen=True)
class LongPlan:
    """A long video as chained chunks: chunk k >= 1 opens on the last `context` latents of chunk k-1
    (positions 0..context-1, `noise_multipliers`), the rest of it is generated.

    num_frames:  the long video's pixel frames (4k+1)
    chunk_frames: each chunk's pixel frames (4k+1), the model's own clip length by default
    """

    num_frames: int
    chunk_frames: int
    context: int
    noise_multipliers: tuple[float, ...]
    chunks: tuple[Chunk, ...]

    @property
    def num_latent(self) -> int:
        return num_latent_frames(self.num_frames)

    @property
    def chunk_latent(self) -> int:
        return num_latent_frames(self.chunk_frames)

    @property
    def positions(self) -> tuple[int, ...]:
        """The conditioned latents of every chunk after the first."""
        return tuple(range(self.context))

    @property
    def overlap_frames(self) -> int:
        """Pixel frames of a chunk's opening overlap (its first `context` latents)."""
        return head_frames(self.context)

    def record(self) -> list[dict[str, Any]]:
        """Each chunk's settings, for the sidecar."""
        return [
            {
                "index": c.index, "seed": c.seed, "num_frames": self.chunk_frames,
                "positions": [] if c.index == 0 else list(self.positions),
                "noise_multipliers": [] if c.index == 0 else list(self.noise_multipliers),
                "latents": list(c.kept), "frames": list(c.frames), "first_frame": c.first_frame,
            }
            for c in self.chunks
        ]  # fmt: skip

    def note(self) -> str:
        n, k = self.num_frames, len(self.chunks)
        if k == 1:
            return f"Long video: {n} frames is one clip of {self.chunk_frames}."
        return (
            f"Long video: {k} chunks of {self.chunk_frames} frames; each after the first opens on the last "
            f"{plural(self.overlap_frames, 'frame')} of the one before ({plural(self.context, 'latent')}), "
            f"{n} frames in all."
        )


def chunk_seed(seed: int, index: int) -> int:
    """Chunk `index`'s seed: the video's seed for the first, then a hash of (seed, index): reproducible
    from the sidecar, and no other video's seed (`-n` makes seeds seed, seed+1, ...)."""
    if index == 0:
        return int(seed)
    digest = hashlib.sha256(f"pusa-long:{int(seed)}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**31


def long_video(
    num_frames: int,
    chunk_frames: int,
    context: int = LONG_CONTEXT,
    noise_multipliers: Multipliers = None,
    seed: int = 0,
) -> LongPlan:
    """Chunks of `chunk_frames` chained by `context` latents to make `num_frames` (both 4k+1).

    Chunk k >= 1 starts at latent k*(C - context) (C: a chunk's latents) and gives its latents after the
    overlap; the last chunk is generated whole and cut to the length asked (the VAE is causal, so its
    kept frames do not depend on the ones cut)."""
    for name, value in (("chunk_frames", chunk_frames), ("num_frames", num_frames)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 5 or (value - 1) % 4:
            raise InputError(name, value, "must be 4k+1 and at least 5 (e.g. 17, 33, 65, 129)")
    chunk_latent, num_latent = num_latent_frames(chunk_frames), num_latent_frames(num_frames)
    if not isinstance(context, int) or isinstance(context, bool) or not 1 <= context <= chunk_latent - 1:
        raise InputError(
            "context_latents", context,
            f"must be a whole number in 1..{chunk_latent - 1} for chunks of {chunk_frames} frames "
            f"({chunk_latent} latents; at least one is generated)",
        )  # fmt: skip
    if num_frames < chunk_frames:
        raise InputError(
            "num_frames", num_frames,
            f"a long video is at least one chunk ({chunk_frames} frames); for a shorter clip use t2v, i2v "
            "or v2v",
            "is shorter than a chunk",
        )  # fmt: skip
    multipliers = _multipliers(
        noise_multipliers, (LONG_MULTIPLIER,) * context, context, "overlap", "chunk_multipliers"
    )
    step = chunk_latent - context
    count = 1 + -(-(num_latent - chunk_latent) // step)
    chunks = tuple(
        Chunk(
            k,
            k * step,
            0 if k == 0 else context,
            min(chunk_latent, num_latent - k * step),
            chunk_seed(seed, k),
        )
        for k in range(count)
    )
    return LongPlan(num_frames, chunk_frames, context, multipliers, chunks)
