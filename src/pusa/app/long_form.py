"""The Long video controls of the Text-, Image- and Video-to-Video tabs: the chunks their values ask for
(`long_plan`, drawn under them by `app.studio`) and a tab's job made into that long video (`as_long`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import recipes
from ..params import PARAMS, InputError
from ..serving.history import JobSpec
from .form_fields import FormError, read_number

LONG_KEYS = ("long_frames", "context_latents", "chain")  # the Long video controls of t2v, i2v and v2v
LONG_TABS = ("t2v", "i2v", "v2v")


def long_plan(
    long_frames: Any, context_latents: Any, chain: Any, chunk_frames: int
) -> recipes.LongPlan | None:
    """The chunks a tab's Long video controls ask for (None: 0 frames, one clip); `chunk_frames`: the tab's
    Frames. Messages name the controls (a total that does not fit is the Long video field's)."""
    total = read_number("long_frames", long_frames, integer=True)
    if not total:
        return None
    try:
        PARAMS["long_frames"].check(total)
    except InputError as error:
        raise FormError.of(error) from None
    context = read_number("context_latents", context_latents, integer=True)
    context = PARAMS["context_latents"].default if context is None else context
    try:
        PARAMS["chain"].check(chain if chain is not None else PARAMS["chain"].default)
        return recipes.long_video(total, chunk_frames, context)
    except InputError as error:
        if error.param == "num_frames":  # the total: the Long video field
            raise FormError("long_frames", total, error.allowed, error.problem) from None
        raise FormError.of(error) from None


def as_long(spec: JobSpec, values: Mapping[str, Any]) -> JobSpec:
    """A t2v / i2v / v2v job as the long video its Long video controls ask for (unchanged at 0): its
    Frames are each chunk's, its image or source video starts the first chunk (a source is extended:
    Video-to-Video's extension recipe)."""
    r, form = spec.request, dict(spec.form)
    plan = long_plan(
        values.get("long_frames"), values.get("context_latents"), values.get("chain"), r.num_frames
    )
    form["long_frames"] = 0 if plan is None else plan.num_frames
    if plan is None:
        return JobSpec(r, form=form)
    if r.task == "v2v" and r.recipe != "extension":
        raise FormError(
            "long_frames", plan.num_frames,
            "a long video extends its source: choose the extension recipe, or 0 for one clip",
            f"is set with the {r.recipe or 'custom'} recipe",
        )  # fmt: skip
    chain = values.get("chain") or PARAMS["chain"].default
    request = replace(
        r, task="long", num_frames=plan.num_frames, chunk_frames=r.num_frames, context_latents=plan.context,
        chain=chain, **({"recipe": None, "positions": [], "noise_multipliers": []} if r.task == "v2v" else {}),
    )  # fmt: skip
    form.update(context_latents=plan.context, chain=chain)
    return JobSpec(request, form=form)
