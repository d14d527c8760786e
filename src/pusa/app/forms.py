"""The studio's forms as plain data: read what a user typed or uploaded into a `GenerationRequest`.

No gradio here, so every message can be unit-tested. What a value may be is `request.validate`'s
(with the model's limits); this module adds only what a form needs on top: text fields parsed into
lists, gradio's floats made whole numbers, blank fields meaning the model's own, a seed of -1 drawn up
front (so the page can show it), and upload limits (bytes, pixels, seconds) checked before anything
decodes a file. Every message starts with the field's label as the page shows it ("Conditioning
Positions: ..."), from the parameter declarations (`pusa.params`), never from parsing error text.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .. import recipes
from ..experts import ALL, LORA_TARGETS
from ..lora_specs import STRENGTH_MAX, STRENGTH_MIN, format_loras, parse_loras
from ..params import (
    CHOICE,
    COMMON,
    INT,
    MAX_SEED,
    MODEL_OWN,
    PARAMS,
    RECIPES,
    TASK_NAMES,
    TEXT,
    InputError,
    label_of,
)
from ..request import GenerationRequest, ModelDefaults, ModelLimits, validate
from ..serving.history import JobSpec
from ..video import IMAGE_FORMATS, VIDEO_SUFFIXES, MediaError, VideoInfo, probe_video

TABS = TASK_NAMES
FORM_RECIPES = ("custom", *RECIPES)


# The LoRA panel: a fixed number of rows, each a file, a strength (blank: LoRA Alpha) and an expert. They
# are form fields (and API parameters) of their own, not declared parameters: they compose into `loras`.
LORA_ROWS = 4


def lora_row_keys(row: int) -> tuple[str, str, str]:
    """The form keys of the LoRA panel's row `row` (1-based): file, strength, expert."""
    return f"lora_file_{row}", f"lora_strength_{row}", f"lora_expert_{row}"


LORA_KEYS = tuple(key for row in range(1, LORA_ROWS + 1) for key in lora_row_keys(row))


def lora_row_blank(key: str) -> Any:
    """What an unused row's field holds on the page: no file, a blank strength, expert "all"."""
    return {"file": None, "strength": "", "expert": ALL}[key.split("_")[1]]


ROW_LABELS = {
    key: f"LoRA {row} {part}"
    for row in range(1, LORA_ROWS + 1)
    for key, part in zip(lora_row_keys(row), ("File", "Strength", "Expert"), strict=True)
}


class FormError(InputError):
    """A form value that cannot be used. `str()` is the message for the page (it starts with the field's
    label), `field` the form's key for it (`steps` for `num_inference_steps`)."""

    def __str__(self) -> str:
        return self.labelled(ROW_LABELS.get(self.param) or label_of(self.param))

    @property
    def field(self) -> str:
        declared = PARAMS.get(self.param)
        return declared.key if declared else self.param

    @classmethod
    def of(cls, error: InputError) -> FormError:
        if isinstance(error, FormError):
            return error
        return cls(error.param, error.value, error.allowed, error.problem, error.show_value)


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be. Large files are refused before anything decodes them."""

    image_mb: float = 20.0
    image_side: int = 8192  # pixels, each side
    images: int = 32  # images in one Multi-Frames request
    video_mb: float = 500.0
    video_seconds: float = 120.0
    video_side: int = 3840  # pixels, each side (4K)


DEFAULT_LIMITS = UploadLimits()


# The fields every tab has, by their form keys (`Param.key`: "steps" for num_inference_steps). A form is a
# mapping of these keys to what the page sent; a key left out takes its declared default, a blank number
# the model's own (where the declaration says so); seed -1 (or blank) is random.
COMMON_KEYS = tuple(PARAMS[name].key for name in COMMON)


# ---------------------------------------------------------------------------------------------- parsing
def _number(param: str, value: Any, integer: bool = False) -> int | float | None:
    """A number from a form field (gradio gives floats for whole numbers); blank is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FormError(param, value, "give a number", "is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise FormError(param, value, "give a number", "is not a number")
    if integer:
        if not float(value).is_integer():
            raise FormError(param, value, "give a whole number", "is not a whole number")
        return int(value)
    return float(value)


def parse_positions(text: str | None) -> list[int]:
    """ "0, 4" -> [0, 4]; blank -> []."""
    parts = [part.strip() for part in (text or "").split(",")]
    if parts == [""]:
        return []
    if any(not re.fullmatch(r"\d+", part) for part in parts):
        raise FormError(
            "positions",
            text,
            "give comma-separated latent frames, e.g. 0,4",
            "is not a list of whole numbers",
        )
    return [int(part) for part in parts]


def parse_multipliers(text: str | None) -> list[float]:
    """ "0.2, 0.5" -> [0.2, 0.5]; blank -> []."""
    parts = [part.strip() for part in (text or "").split(",")]
    if parts == [""]:
        return []
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise FormError(
            "noise_multipliers",
            text,
            "give comma-separated numbers in 0.0..1.0, e.g. 0.2,0.5",
            "is not a list of numbers",
        ) from None
    try:
        PARAMS["noise_multipliers"].check(values)
    except InputError as error:
        raise FormError.of(error) from None
    return values


def format_list(values: Sequence[float]) -> str:
    return ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def check_num_frames(value: Any, defaults: ModelDefaults) -> int:
    """The frame count to use (the model's when blank); must be 4k+1 so latents cover it exactly."""
    num_frames = _number("num_frames", value, integer=True)
    if num_frames is None:
        return defaults.num_frames
    if num_frames < 1 or (num_frames - 1) % 4:
        raise FormError("num_frames", num_frames, "must be 4k+1, e.g. 17, 33, 49, 81")
    return num_frames


def recipe_fields(recipe: str, num_frames: int) -> tuple[str, str] | None:
    """(positions, noise multipliers) a Video-to-Video recipe fills in; None for "custom"."""
    if recipe == "custom":
        return None
    if recipe not in RECIPES:
        raise FormError("recipe", recipe, f"choose one of {', '.join(FORM_RECIPES)}")
    try:
        plan = recipes.plan(recipe, num_frames)
    except InputError as error:
        raise FormError.of(error) from None
    return format_list(plan.positions), format_list(plan.noise_multipliers)


# ---------------------------------------------------------------------------------------------- uploads
def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _uploaded(param: str, path: Any) -> Path:
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise FormError(param, str(path), "upload the file again", "was not received")
    return Path(path)


def check_image(path: Any, param: str = "image", limits: UploadLimits = DEFAULT_LIMITS) -> None:
    """An uploaded image: a real PNG/JPEG/WebP/BMP/GIF, not too large in bytes or pixels."""
    path = _uploaded(param, path)
    name = path.name
    allowed = "allowed: " + ", ".join(IMAGE_FORMATS.values())
    if _size_mb(path) > limits.image_mb:
        raise FormError(param, name, f"the limit is {limits.image_mb:g} MB", f"is {_size_mb(path):.1f} MB")
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):  # a bomb: too many pixels to open
        raise FormError(param, name, allowed, "is not an image") from None
    if kind not in IMAGE_FORMATS:
        raise FormError(param, name, allowed, f"is a {kind} image")
    if max(width, height) > limits.image_side:
        raise FormError(
            param,
            name,
            f"the limit is {limits.image_side} pixels on each side",
            f"is {width}x{height} pixels",
        )


def check_video(path: Any, param: str = "video", limits: UploadLimits = DEFAULT_LIMITS) -> VideoInfo:
    """An uploaded video: a readable video file within the size, duration and resolution limits."""
    path = _uploaded(param, path)
    name = path.name
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        allowed = "allowed: " + ", ".join(suffix[1:] for suffix in VIDEO_SUFFIXES)
        raise FormError(param, name, allowed, "is not a video file")
    if _size_mb(path) > limits.video_mb:
        raise FormError(param, name, f"the limit is {limits.video_mb:g} MB", f"is {_size_mb(path):.1f} MB")
    try:
        info = probe_video(path, param)
    except MediaError as error:  # its own words, without the upload's temporary path
        raise FormError(param, name, error.allowed, error.problem) from None
    if info.seconds > limits.video_seconds:
        raise FormError(
            param, name, f"the limit is {limits.video_seconds:g} s", f"lasts {info.seconds:.1f} s"
        )
    if max(info.width, info.height) > limits.video_side:
        raise FormError(
            param, name, f"the limit is {limits.video_side} pixels on each side",
            f"is {info.width}x{info.height} pixels",
        )  # fmt: skip
    return info


# ---------------------------------------------------------------------------------------------- building
Keep = Callable[[str], str]  # stores an uploaded file where the job and history can find it


_MISSING = object()


def lora_rows(values: Mapping[str, Any]) -> list[dict]:
    """The LoRA panel's rows that name a file, in order, as the stack's mappings (`lora_specs.parse_loras`
    reads them); a bad row is refused naming it ("LoRA 2 Strength: ..."). A row without a file is unused
    (a strength given there without one is refused: it would be lost)."""
    rows = []
    for row in range(1, LORA_ROWS + 1):
        file_key, strength_key, expert_key = lora_row_keys(row)
        path, expert = values.get(file_key), values.get(expert_key)
        strength = _number(strength_key, values.get(strength_key))
        if path is not None and not isinstance(path, str):
            raise FormError(file_key, path, "give the path of a LoRA file on the server", "is not text")
        path = (path or "").strip()
        if not path:
            if strength is not None:
                raise FormError(file_key, "", "choose the row's LoRA file, or clear its Strength", "is empty")
            continue
        if strength is not None and not STRENGTH_MIN <= strength <= STRENGTH_MAX:
            raise FormError(
                strength_key, strength,
                f"must be a number in {STRENGTH_MIN:g}..{STRENGTH_MAX:g} (blank: LoRA Alpha)",
            )  # fmt: skip
        expert = expert or ALL
        if expert not in LORA_TARGETS:
            raise FormError(expert_key, expert, f"choose one of {', '.join(LORA_TARGETS)}")
        if not Path(path).expanduser().is_file():
            raise FormError(file_key, path, "give an existing LoRA file on the server", "is not a file")
        rows.append({"path": path, "strength": strength, "expert": expert})
    return rows


def compose_loras(rows: Sequence[Mapping[str, Any]], text: str) -> str:
    """The stack a form asks for, as `GenerationRequest.loras` text: the panel's rows, then the entries
    of its text field (blank both: the model's own)."""
    parts = [format_loras(parse_loras(list(rows))), text.strip()]
    return "\n".join(part for part in parts if part)


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
            value = _number(name, None if raw is _MISSING else raw, integer=True)
            if value is None or value == -1:
                value = secrets.randbelow(2**31)
            elif not 0 <= value <= MAX_SEED:
                raise FormError(name, value, f"use -1 for a random seed, or a whole number in 0..{MAX_SEED}")
        elif name == "num_frames":
            value = check_num_frames(None if raw is _MISSING else raw, defaults)
        else:
            value = _number(name, None if raw is _MISSING else raw, integer=param.kind == INT)
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
            strength = _number(strength_key, form[strength_key])
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
    multiplier = _number("noise_multiplier", noise_multiplier)
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
            f"gives {len(frame_positions)} positions for {num_images} images",
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


# ---------------------------------------------------------------------------------------------- long video
LONG_KEYS = ("long_frames", "context_latents", "chain")  # the Long video controls of t2v, i2v and v2v
LONG_TABS = ("t2v", "i2v", "v2v")


def long_plan(
    long_frames: Any, context_latents: Any, chain: Any, chunk_frames: int
) -> recipes.LongPlan | None:
    """The chunks a tab's Long video controls ask for (None: 0 frames, one clip); `chunk_frames`: the tab's
    Frames. Messages name the controls (a total that does not fit is the Long video field's)."""
    total = _number("long_frames", long_frames, integer=True)
    if not total:
        return None
    try:
        PARAMS["long_frames"].check(total)
    except InputError as error:
        raise FormError.of(error) from None
    context = _number("context_latents", context_latents, integer=True)
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


def _lora_row_of(error: InputError, form: Mapping[str, Any]) -> InputError:
    """A `loras` error about an entry that came from one of the panel's rows, as that row's field: its
    Expert for a LoRA bound to an expert the model lacks (the error shows the entry), else its File."""
    for row in range(1, LORA_ROWS + 1):
        file_key, strength_key, expert_key = lora_row_keys(row)
        if not form.get(file_key):
            continue
        strength = form.get(strength_key)
        entry = {
            "path": form[file_key],
            "strength": strength if strength != "" else None,
            "expert": form.get(expert_key),
        }
        if error.value == parse_loras([entry])[0].text():
            return FormError(expert_key, entry["expert"], error.allowed, error.problem)
        if error.value == form[file_key]:
            return FormError(file_key, error.value, error.allowed, error.problem)
    return error


def check_spec(limits: ModelLimits, spec: JobSpec) -> None:
    """The one validation (`request.validate`) on a spec, as form messages."""
    try:
        validate(spec.request, limits)
    except InputError as error:
        if spec.request.task == "long":  # the tab's Frames are each chunk's, its Long video the total
            names = {"chunk_frames": "num_frames", "num_frames": "long_frames"}
            error = error.renamed(names[error.param]) if error.param in names else error
        if error.param == "loras":
            error = _lora_row_of(error, spec.form)
        raise FormError.of(error) from None
