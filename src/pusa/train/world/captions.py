"""Plain-English captions of the procedural world's clips: every way a caption can say a motion, a random
caption (`caption`), the one a dataset always gives a clip (`canonical_caption`) and every word a caption
can hold (`CAPTION_WORDS`, which the tokenizer and tests read).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .sampling import pick
from .spec import (
    BACKGROUND_COLORS,
    BOUNCE_STYLES,
    CAPTION_STREAM,
    LINEAR_MOTIONS,
    OBJECT_COLORS,
    SHAPES,
    ClipSpec,
)

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
    adjective = pick(rng, size_words) if size_words and rng.random() < 0.4 else None
    noun_phrase = " ".join(word for word in (adjective, spec.color, spec.shape) if word)
    article = "the" if rng.random() < 0.2 else ("an" if noun_phrase[0] in "aeiou" else "a")
    phrases = motion_phrases(spec)
    present, gerund = phrases[int(rng.integers(len(phrases)))]
    preposition = pick(rng, _PREPOSITIONS)
    background_phrase = pick(
        rng,
        (
            f"{preposition} a {spec.background} background",
            f"{preposition} the {spec.background} background",
            f"{preposition} a {spec.background} backdrop",
            f"{preposition} {spec.background}",
        ),
    )
    template = pick(rng, _TEMPLATES)
    return template.format(
        subject=f"{article} {noun_phrase}",
        present=present,
        gerund=gerund,
        background=background_phrase,
        background_name=spec.background,
    )


def canonical_caption(spec: ClipSpec) -> str:
    """The caption this spec always gets in datasets: `caption` with a generator seeded from spec.seed."""
    return caption(spec, np.random.default_rng((spec.seed, CAPTION_STREAM)))


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
