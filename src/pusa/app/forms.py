"""The studio's forms as plain data: read what a user typed or uploaded into a `GenerationRequest`.

No gradio here, so every message can be unit-tested. What a value may be is `request.validate`'s
(with the model's limits); this module adds only what a form needs on top: text fields parsed into
lists, gradio's floats made whole numbers, blank fields meaning the model's own, a seed of -1 drawn up
front (so the page can show it), and upload limits (bytes, pixels, seconds) checked before anything
decodes a file. Every message starts with the field's label as the page shows it ("Conditioning
Positions: ..."), from the parameter declarations (`pusa.params`), never from parsing error text.

Here: one job (`JobSpec`) per task tab from its values, and the one validation of it (`check_spec`); the
pieces are `app.form_fields` (keys, labels, `FormError`, parsing), `app.uploads`, `app.lora_form` and
`app.long_form`, whose names the tests also import from here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import recipes
from ..experts import ALL
from ..params import CHOICE, COMMON, INT, MAX_SEED, MODEL_OWN, PARAMS, TEXT, InputError, plural
from ..request import GenerationRequest, ModelDefaults, ModelLimits, validate
from ..serving.history import JobSpec
from .form_fields import (
    COMMON_KEYS,
    FORM_RECIPES,
    LORA_KEYS,
    LORA_ROWS,
    TABS,
    FormError,
    check_num_frames,
    format_list,
    lora_row_blank,
    lora_row_keys,
    parse_multipliers,
    parse_positions,
    read_number,
    recipe_fields,
)
from .long_form import LONG_KEYS, LONG_TABS, as_long, long_plan
from .lora_form import compose_loras, lora_row_error, lora_rows
from .uploads import DEFAULT_LIMITS, UploadLimits, check_image, check_video

# Re-exported: the tests (and older callers) read every form helper as `forms.X`.
__all__ = [
    "COMMON_KEYS",
    "DEFAULT_LIMITS",
    "FORM_RECIPES",
    "LONG_KEYS",
    "LONG_TABS",
    "LORA_KEYS",
    "LORA_ROWS",
    "TABS",
    "FormError",
    "Keep",
    "UploadLimits",
    "as_long",
    "check_image",
    "check_num_frames",
    "check_spec",
    "check_video",
    "compose_loras",
    "format_list",
    "frames_conditioning",
    "frames_to_video",
    "image_to_video",
    "long_plan",
    "lora_row_blank",
    "lora_row_keys",
    "lora_rows",
    "parse_multipliers",
    "parse_positions",
    "recipe_fields",
    "text_to_video",
    "video_plan",
    "video_to_video",
]

# ---------------------------------------------------------------------------------------------- building
Keep = Callable[[str], str]  # stores an uploaded file where the job and history can find it


_MISSING = object()


def _common(common: Mapping[str, Any], defaults: ModelDefaults, tab: str) -> tuple[dict, dict]:
    """(GenerationRequest fields, form record) for the fields every tab has, read by their declarations,
    and the LoRA panel's rows where given (`LORA_KEYS`), composed into `loras`."""
    unknown = sorted(set(common) - set(COMMON_KEYS) - set(LORA_KEYS))
    if unknown:
        raise FormError(
            "task", unknown, f"the fields every tab has are {', '.join(COMMON_KEYS + LORA_KEYS)}",
            "are not fields",
        )  # fmt: skip
    fields: dict[str, Any] = {}
    for name in COMMON:
        param = PARAMS[name]
        raw = common.get(param.key, _MISSING)
        if param.kind == TEXT:
            value = param.default if raw is _MISSING or raw is None else raw
            if not isinstance(value, str):
                raise FormError(name, value, "must be text")
        elif param.kind == CHOICE and param.default is not None:  # the step cache: blank = its default
            value = param.default if raw is _MISSING or raw is None or raw == "" else raw
        elif param.kind == "choice":  # the speed preset: blank / "none" = no preset
            value = None if raw in (_MISSING, None, "", "none") else raw
            if value is not None and value not in param.choices:
                raise FormError(name, value, f"choose one of none, {', '.join(param.choices)}")
        elif name == "seed":
            value = read_number(name, None if raw is _MISSING else raw, integer=True)
            if value is None or value == -1:
                value = secrets.randbelow(2**31)
            elif not 0 <= value <= MAX_SEED:
                raise FormError(name, value, f"use -1 for a random seed, or a whole number in 0..{MAX_SEED}")
        elif name == "num_frames":
            value = check_num_frames(None if raw is _MISSING else raw, defaults)
        else:
            value = read_number(name, None if raw is _MISSING else raw, integer=param.kind == INT)
            if value is None and param.default is MODEL_OWN:
                value = getattr(defaults, name)
            elif value is None and raw is _MISSING:
                value = param.default
            elif value is None:
                raise FormError(name, "", "give a number", "is empty")
        fields[name] = value
    form = {"tab": tab, **{PARAMS[name].key: value for name, value in fields.items()}}
    if any(key in common for key in LORA_KEYS):  # the panel: its rows first, then the text field's entries
        rows = lora_rows(common)
        fields["loras"] = compose_loras(rows, fields["loras"])
        form.update({key: common.get(key) for key in LORA_KEYS})
        for row in range(1, LORA_ROWS + 1):  # as the page shows them
            file_key, strength_key, expert_key = lora_row_keys(row)
            form[file_key] = (form[file_key] or "").strip() or None
            strength = read_number(strength_key, form[strength_key])
            form[strength_key] = "" if strength is None else strength
            form[expert_key] = form[expert_key] or ALL
    if form.get("preset") is None:
        form["preset"] = "none"  # what the studio's radio shows
    return fields, form


def image_to_video(
    image: Any,
    noise_multiplier: Any,
    common: Mapping[str, Any],
    defaults: ModelDefaults,
    limits: UploadLimits = DEFAULT_LIMITS,
    keep: Keep = str,
) -> JobSpec:
    """Image-to-Video: the image at latent frame 0 with its noise multiplier."""
    fields, form = _common(common, defaults, "i2v")
    if image is None:
        raise FormError("image", None, "Image-to-Video needs the image to start from", "none uploaded", False)
    check_image(image, "image", limits)
    multiplier = read_number("noise_multiplier", noise_multiplier)
    if multiplier is None:
        raise FormError("noise_multiplier", "", "give a number in 0.0..1.0", "is empty")
    try:
        PARAMS["noise_multiplier"].check(multiplier)
    except InputError as error:
        raise FormError.of(error) from None
    kept = keep(str(image))
    request = GenerationRequest(
        task="i2v", images=[kept], positions=[0], noise_multipliers=[multiplier], **fields
    )
    return JobSpec(request, form={**form, "image": kept, "noise_multiplier": multiplier})


def frames_conditioning(
    positions: str | None, noise_multipliers: str | None, num_images: int, num_frames: int
) -> tuple[list[int], list[float]]:
    """Positions and multipliers of a Multi-Frames request; blank fields take the defaults
    (`recipes.spread_positions`, `recipes.keyframe_multipliers`)."""
    frame_positions = parse_positions(positions) or recipes.spread_positions(num_images, num_frames)
    multipliers = parse_multipliers(noise_multipliers) or recipes.keyframe_multipliers(len(frame_positions))
    if num_images and len(frame_positions) != num_images:
        raise FormError(
            "positions", positions, "give one position per image, in the images' order",
            f"gives {plural(len(frame_positions), 'position')} for {plural(num_images, 'image')}",
        )  # fmt: skip
    _check_positions(frame_positions, multipliers, num_frames)
    return frame_positions, multipliers


def _check_positions(positions: list[int], multipliers: list[float], num_frames: int) -> None:
    from ..request import check_positions

    try:
        check_positions(positions, multipliers, recipes.num_latent_frames(num_frames))
    except InputError as error:
        raise FormError.of(error) from None


def frames_to_video(
    images: Sequence[Any] | None,
    positions: str | None,
    noise_multipliers: str | None,
    common: Mapping[str, Any],
    defaults: ModelDefaults,
    limits: UploadLimits = DEFAULT_LIMITS,
    keep: Keep = str,
) -> JobSpec:
    """Multi-Frames to Video: two or more images, image j at latent frame positions[j]."""
    fields, form = _common(common, defaults, "frames")
    images = list(images or [])
    if len(images) < 2:
        raise FormError(
            "images", len(images), "Multi-Frames to Video needs two or more (one: use Image-to-Video)",
            f"{len(images)} uploaded", False,
        )  # fmt: skip
    if len(images) > limits.images:
        raise FormError(
            "images", len(images), f"the limit is {limits.images}", f"{len(images)} uploaded", False
        )
    for image in images:
        check_image(image, "images", limits)
    frame_positions, multipliers = frames_conditioning(
        positions, noise_multipliers, len(images), fields["num_frames"]
    )
    kept = [keep(str(image)) for image in images]
    request = GenerationRequest(
        task="frames", images=kept, positions=frame_positions, noise_multipliers=multipliers, **fields
    )
    form.update(
        images=kept, positions=format_list(frame_positions), noise_multipliers=format_list(multipliers)
    )
    return JobSpec(request, form=form)


def video_plan(
    positions: str | None,
    noise_multipliers: str | None,
    recipe: str | None,
    num_frames: int,
    source_frames: int | None = None,
    end_frames: int | None = None,
) -> recipes.RecipePlan:
    """The plan a Video-to-Video form asks for: its recipe's (blank fields take the recipe's own), or the
    custom positions (multiplier 0.2 each when blank)."""
    recipe = recipe or "custom"
    if recipe not in FORM_RECIPES:
        raise FormError("recipe", recipe, f"choose one of {', '.join(FORM_RECIPES)}")
    video_positions = parse_positions(positions)
    multipliers = parse_multipliers(noise_multipliers)
    if recipe == "custom" and not video_positions:
        raise FormError(
            "positions", "", "give the latent frames of the video to keep, e.g. 0,1,2,3", "is empty"
        )
    if video_positions:
        _check_positions(video_positions, multipliers or [0.0] * len(video_positions), num_frames)
    try:
        return recipes.plan(recipe, num_frames, video_positions, multipliers, source_frames, end_frames)
    except InputError as error:
        raise FormError.of(error) from None


def video_to_video(
    video: Any,
    positions: str | None,
    noise_multipliers: str | None,
    recipe: str | None,
    end_video: Any,
    common: Mapping[str, Any],
    defaults: ModelDefaults,
    limits: UploadLimits = DEFAULT_LIMITS,
    keep: Keep = str,
) -> JobSpec:
    """Video-to-Video: the source's latent frames at the positions, or one of the recipes."""
    fields, form = _common(common, defaults, "v2v")
    recipe = recipe or "custom"
    if video is None:
        raise FormError("video", None, "Video-to-Video needs a source video", "none uploaded", False)
    info = check_video(video, "video", limits)
    end_info = None
    if recipe == "transition":
        if end_video is None:
            raise FormError(
                "end_video", None, "the transition recipe needs the clip to arrive at", "none uploaded", False
            )
        end_info = check_video(end_video, "end_video", limits)
    try:
        plan = video_plan(
            positions,
            noise_multipliers,
            recipe,
            fields["num_frames"],
            info.frames,
            end_info and end_info.frames,
        )
    except FormError as error:  # a clip too short: say which upload
        uploads = {"video": video, "end_video": end_video}
        if error.param in uploads and not error.show_value:
            raise FormError(
                error.param, Path(uploads[error.param]).name, error.allowed, error.problem
            ) from None
        raise
    kept = keep(str(video))
    kept_end = keep(str(end_video)) if recipe == "transition" else None
    request = GenerationRequest(
        task="v2v",
        video=kept,
        end_video=kept_end,
        positions=list(plan.positions),
        noise_multipliers=list(plan.noise_multipliers),
        recipe=None if recipe == "custom" else recipe,
        **fields,
    )
    form.update(
        video=kept,
        positions=format_list(plan.positions),
        noise_multipliers=format_list(plan.noise_multipliers),
        recipe=recipe,
        end_video=kept_end,
    )
    return JobSpec(request, form=form)


def text_to_video(common: Mapping[str, Any], defaults: ModelDefaults) -> JobSpec:
    """Text-to-Video from the prompt alone."""
    fields, form = _common(common, defaults, "t2v")
    if not fields["prompt"].strip():
        raise FormError("prompt", fields["prompt"], "describe the video to generate", "is empty")
    return JobSpec(GenerationRequest(task="t2v", **fields), form=form)


def check_spec(limits: ModelLimits, spec: JobSpec) -> None:
    """The one validation (`request.validate`) on a spec, as form messages."""
    try:
        validate(spec.request, limits)
    except InputError as error:
        if spec.request.task == "long":  # the tab's Frames are each chunk's, its Long video the total
            names = {"chunk_frames": "num_frames", "num_frames": "long_frames"}
            error = error.renamed(names[error.param]) if error.param in names else error
        if error.param == "loras":
            error = lora_row_error(error, spec.form)
        raise FormError.of(error) from None
