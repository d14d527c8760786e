"""The studio's forms as plain data: check what a user typed or uploaded and turn it into a `JobSpec`.

No gradio here, so every message can be unit-tested. Messages start with the field's label as the
page shows it ("Conditioning Positions: ..."), then name the value and what is allowed. The meaning
of the values is the pipeline's: `check_spec` runs `PusaPipeline.check_inputs` and relabels its
messages; this module only adds what a form needs on top (parsing text, upload limits, the recipes'
fixed positions, a random seed drawn up front so the page can show it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
from PIL import Image, UnidentifiedImageError

from ..conditioning import num_latent_frames, validate_positions
from ..jobs import JobSpec
from ..pipeline import DEFAULT_CFG, DEFAULT_NEGATIVE_PROMPT, MAX_SEED, GenerationRequest
from ..presets import ModelDefaults

LABELS = {
    "task": "Task",
    "image": "Image",
    "images": "Images",
    "video": "Video",
    "start_video": "Video",
    "end_video": "Second clip",
    "prompt": "Prompt",
    "negative_prompt": "Negative Prompt",
    "noise_multiplier": "Noise Multiplier",
    "noise_multipliers": "Noise Multipliers",
    "positions": "Conditioning Positions",
    "recipe": "Recipe",
    "lora_alpha": "LoRA Alpha",
    "num_inference_steps": "Inference Steps",
    "steps": "Inference Steps",
    "cfg": "CFG",
    "shift": "Shift",
    "seed": "Seed",
    "num_frames": "Frames",
    "width": "Width",
    "height": "Height",
    "fps": "FPS",
}
TABS = {
    "i2v": "Image-to-Video",
    "frames": "Multi-Frames to Video",
    "v2v": "Video-to-Video",
    "t2v": "Text-to-Video",
}
RECIPES = ("custom", "extension", "completion", "transition")
EXTENSION_MULTIPLIERS = (0.0, 0.3, 0.4, 0.5)
COMPLETION_MULTIPLIERS = (0.3, 0.3)
TRANSITION_MULTIPLIERS = (0.0, 0.3, 0.4, 0.4, 0.3, 0.0)
FRAMES_MULTIPLIERS = (0.2, 0.5)  # the seed's "0.2,0.5": the first image, then every later one
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")


class FormError(ValueError):
    """A form value that cannot be used. `str()` is the message for the page, `field` the field's key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{LABELS.get(field, field)}: {message}")
        self.field = field


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


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    seconds: float
    width: int
    height: int


@dataclass
class CommonForm:
    """The fields every tab has. `None` means the model's default; seed -1 (or None) means random."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    lora_alpha: float | None = None
    steps: int | None = None
    seed: int | None = -1
    cfg: float = DEFAULT_CFG
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: float | None = None


# ---------------------------------------------------------------------------------------------- parsing
def _number(field: str, value: Any, integer: bool = False) -> int | float | None:
    """A number from a form field (gradio gives floats for whole numbers); None stays None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FormError(field, f"{value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise FormError(field, f"{value!r} is not a number")
    if integer:
        if not float(value).is_integer():
            raise FormError(field, f"{value!r} is not a whole number")
        return int(value)
    return float(value)


def parse_positions(text: str | None) -> list[int]:
    """ "0, 4" -> [0, 4]; blank -> []."""
    parts = [part.strip() for part in (text or "").split(",")]
    if parts == [""]:
        return []
    if any(not re.fullmatch(r"\d+", part) for part in parts):
        raise FormError(
            "positions", f"{text!r} is not a comma-separated list of whole numbers (latent frames), e.g. 0,4"
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
            f"{text!r} is not a comma-separated list of numbers in 0.0..1.0, e.g. 0.2,0.5",
        ) from None
    for value in values:
        if not 0.0 <= value <= 1.0:
            raise FormError("noise_multipliers", f"{value:g} in {text!r} is outside 0.0..1.0")
    return values


def format_list(values: Sequence[float]) -> str:
    return ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def check_num_frames(value: Any, defaults: ModelDefaults) -> int:
    """The frame count to use (the model's when blank); must be 4k+1 so latents cover it exactly."""
    num_frames = _number("num_frames", value, integer=True)
    if num_frames is None:
        return defaults.num_frames
    if num_frames < 1 or (num_frames - 1) % 4:
        raise FormError(
            "num_frames", f"{num_frames} is not allowed; frames must be 4k+1, e.g. 17, 33, 49, 81"
        )
    return num_frames


def check_conditioning(positions: Sequence[int], multipliers: Sequence[float], num_frames: int) -> None:
    """The pipeline's rules for positions and multipliers, with the field labels of the page."""
    try:
        validate_positions(list(positions), list(multipliers), num_latent_frames(num_frames))
    except ValueError as error:
        raise relabel(error) from None


def spread_positions(count: int, num_frames: int) -> list[int]:
    """`count` latent frames spread from the first to the last (the pipeline's Multi-Frames default)."""
    last = num_latent_frames(num_frames) - 1
    return [round(j * last / max(count - 1, 1)) for j in range(count)]


def frames_multipliers(count: int) -> list[float]:
    return [FRAMES_MULTIPLIERS[0]] + [FRAMES_MULTIPLIERS[1]] * (count - 1) if count else []


def recipe_fields(recipe: str, num_frames: int) -> tuple[str, str] | None:
    """(positions, noise multipliers) a Video-to-Video recipe fills in; None for "custom"."""
    num_latent = num_latent_frames(num_frames)
    if recipe == "extension":
        context = min(len(EXTENSION_MULTIPLIERS), max(num_latent - 1, 1))
        return format_list(range(context)), format_list(EXTENSION_MULTIPLIERS[:context])
    if recipe == "completion":
        return f"0,{num_latent - 1}", format_list(COMPLETION_MULTIPLIERS)
    if recipe == "transition":
        last = num_latent - 1
        return f"0,1,2,{last - 2},{last - 1},{last}", format_list(TRANSITION_MULTIPLIERS)
    if recipe == "custom":
        return None
    raise FormError("recipe", f"{recipe!r} is not a recipe; choose one of {', '.join(RECIPES)}")


def relabel(error: ValueError, overrides: dict[str, str] | None = None) -> FormError:
    """A pipeline message ("num_frames=20 is not allowed; ...") as a form message ("Frames: ...")."""
    if isinstance(error, FormError):
        return error
    message = str(error)
    match = re.match(r"[a-z_]+", message)
    name = match.group(0) if match else ""
    field = (overrides or {}).get(name, name)
    if field not in LABELS:
        return FormError("task", message)
    if message.startswith(f"{name}:"):
        message = message[len(name) + 1 :].strip()
    return FormError(field, message)


# ---------------------------------------------------------------------------------------------- uploads
def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _uploaded(field: str, path: Any) -> Path:
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise FormError(field, f"{path!r} was not received; upload the file again")
    return Path(path)


def check_image(path: Any, field: str = "image", limits: UploadLimits = DEFAULT_LIMITS) -> None:
    """An uploaded image: a real PNG/JPEG/WebP/BMP/GIF, not too large in bytes or pixels."""
    path = _uploaded(field, path)
    allowed = ", ".join(IMAGE_FORMATS.values())
    if _size_mb(path) > limits.image_mb:
        raise FormError(
            field, f"{path.name!r} is {_size_mb(path):.1f} MB; the limit is {limits.image_mb:g} MB"
        )
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError):
        raise FormError(field, f"{path.name!r} is not an image; allowed: {allowed}") from None
    if kind not in IMAGE_FORMATS:
        raise FormError(field, f"{path.name!r} is a {kind} image; allowed: {allowed}")
    if max(width, height) > limits.image_side:
        raise FormError(
            field,
            f"{path.name!r} is {width}x{height} pixels; the limit is {limits.image_side} pixels on each side",
        )


def check_video(path: Any, field: str = "video", limits: UploadLimits = DEFAULT_LIMITS) -> VideoInfo:
    """An uploaded video: a readable video file within the size, duration and resolution limits."""
    path = _uploaded(field, path)
    allowed = ", ".join(suffix[1:] for suffix in VIDEO_SUFFIXES)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise FormError(field, f"{path.name!r} is not a video file; allowed: {allowed}")
    if _size_mb(path) > limits.video_mb:
        raise FormError(
            field, f"{path.name!r} is {_size_mb(path):.1f} MB; the limit is {limits.video_mb:g} MB"
        )
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FormError(field, f"{path.name!r} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate or stream.guessed_rate or 16)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / 1e6
            if seconds > limits.video_seconds:
                raise FormError(
                    field, f"{path.name!r} lasts {seconds:.1f} s; the limit is {limits.video_seconds:g} s"
                )
            if max(width, height) > limits.video_side:
                raise FormError(
                    field,
                    f"{path.name!r} is {width}x{height} pixels; the limit is {limits.video_side} pixels "
                    "on each side",
                )
            frames = stream.frames or sum(1 for _ in container.decode(stream))
    except (av.error.FFmpegError, OSError) as error:
        reason = getattr(error, "strerror", None) or error  # without the upload's temporary path
        raise FormError(
            field, f"{path.name!r} is not a readable video ({reason}); allowed: {allowed}"
        ) from None
    if frames == 0:
        raise FormError(field, f"{path.name!r} contains no frames")
    return VideoInfo(frames, fps, seconds, width, height)


def _need_frames(field: str, info: VideoInfo, name: str, need: int, why: str) -> None:
    if info.frames < need:
        raise FormError(field, f"{name!r} has {info.frames} frames; {why} needs at least {need}")


# ---------------------------------------------------------------------------------------------- building
Keep = Callable[[str], str]  # stores an uploaded file where the job and history can find it


def _common(common: CommonForm, defaults: ModelDefaults, tab: str) -> tuple[dict, dict]:
    """(GenerationRequest fields, form record) for the fields every tab has."""
    if not isinstance(common.prompt, str):
        raise FormError("prompt", f"{common.prompt!r} is not text")
    if tab == "t2v" and not common.prompt.strip():
        raise FormError("prompt", "empty; describe the video to generate")
    negative_prompt = (
        common.negative_prompt if common.negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT
    )
    seed = _number("seed", common.seed, integer=True)
    if seed is None or seed == -1:
        seed = secrets.randbelow(2**31)
    elif not 0 <= seed <= MAX_SEED:
        raise FormError(
            "seed", f"{seed} is not allowed; use -1 for a random seed, or a whole number in 0..{MAX_SEED}"
        )
    fields = dict(
        prompt=common.prompt,
        negative_prompt=negative_prompt,
        lora_alpha=_number("lora_alpha", common.lora_alpha),
        num_inference_steps=_number("steps", common.steps, integer=True),
        seed=seed,
        cfg=_number("cfg", common.cfg),
        width=_number("width", common.width, integer=True),
        height=_number("height", common.height, integer=True),
        num_frames=check_num_frames(common.num_frames, defaults),
        fps=_number("fps", common.fps),
    )
    if fields["cfg"] is None:
        raise FormError("cfg", "empty; give a number")
    for name in ("lora_alpha", "num_inference_steps", "width", "height", "fps"):
        if fields[name] is None:
            fields[name] = getattr(defaults, name)
    form = {"tab": tab, **{k: v for k, v in fields.items() if k != "num_inference_steps"}}
    form["steps"] = fields["num_inference_steps"]
    return fields, form


def image_to_video(
    image: Any,
    noise_multiplier: Any,
    common: CommonForm,
    defaults: ModelDefaults,
    limits: UploadLimits = DEFAULT_LIMITS,
    keep: Keep = str,
) -> JobSpec:
    """Image-to-Video: the image at latent frame 0 with its noise multiplier."""
    fields, form = _common(common, defaults, "i2v")
    if image is None:
        raise FormError("image", "none uploaded; Image-to-Video needs the image to start from")
    check_image(image, "image", limits)
    multiplier = _number("noise_multiplier", noise_multiplier)
    if multiplier is None or not 0.0 <= multiplier <= 1.0:
        raise FormError(
            "noise_multiplier", f"{noise_multiplier!r} is not allowed; it must be a number in 0.0..1.0"
        )
    kept = keep(str(image))
    request = GenerationRequest(
        task="i2v", images=[kept], positions=[0], noise_multipliers=[multiplier], **fields
    )
    return JobSpec(request, form={**form, "image": kept, "noise_multiplier": multiplier})


def frames_to_video(
    images: Sequence[Any] | None,
    positions: str | None,
    noise_multipliers: str | None,
    common: CommonForm,
    defaults: ModelDefaults,
    limits: UploadLimits = DEFAULT_LIMITS,
    keep: Keep = str,
) -> JobSpec:
    """Multi-Frames to Video: two or more images, image j at latent frame positions[j]."""
    fields, form = _common(common, defaults, "frames")
    images = list(images or [])
    if len(images) < 2:
        raise FormError(
            "images",
            f"{len(images)} uploaded; Multi-Frames to Video needs two or more (one: use Image-to-Video)",
        )
    if len(images) > limits.images:
        raise FormError("images", f"{len(images)} uploaded; the limit is {limits.images}")
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


def frames_conditioning(
    positions: str | None, noise_multipliers: str | None, num_images: int, num_frames: int
) -> tuple[list[int], list[float]]:
    """Positions and multipliers of a Multi-Frames request; blank fields take the defaults."""
    frame_positions = parse_positions(positions) or spread_positions(num_images, num_frames)
    multipliers = parse_multipliers(noise_multipliers) or frames_multipliers(len(frame_positions))
    if num_images and len(frame_positions) != num_images:
        raise FormError(
            "positions",
            f"{positions!r} gives {len(frame_positions)} positions for {num_images} images; "
            "give one position per image, in the images' order",
        )
    check_conditioning(frame_positions, multipliers, num_frames)
    return frame_positions, multipliers


def video_conditioning(
    positions: str | None, noise_multipliers: str | None, recipe: str | None, num_frames: int
) -> tuple[list[int], list[float]]:
    """Positions and multipliers of a Video-to-Video request, checked against its recipe."""
    recipe = recipe or "custom"
    num_latent = num_latent_frames(num_frames)
    if recipe == "transition" and num_latent < 7:
        raise FormError(
            "num_frames",
            f"{num_frames} gives {num_latent} latent frames; the Transition recipe needs at least 7 "
            "(Frames 25 or more, in Advanced)",
        )
    fields = recipe_fields(recipe, num_frames)
    if fields is not None and not (positions or "").strip():  # a recipe's own positions, if none are given
        positions, noise_multipliers = fields[0], noise_multipliers or fields[1]
    video_positions = parse_positions(positions)
    if not video_positions:
        raise FormError("positions", "empty; give the latent frames of the video to keep, e.g. 0,1,2,3")
    multipliers = parse_multipliers(noise_multipliers) or [0.2] * len(video_positions)
    check_conditioning(video_positions, multipliers, num_frames)
    if recipe == "extension":
        expected = list(range(len(multipliers)))
    elif recipe == "completion":
        expected = [0, num_latent - 1]
    elif recipe == "transition":
        expected = [0, 1, 2, num_latent - 3, num_latent - 2, num_latent - 1]
    else:
        expected = video_positions
    if video_positions != expected:
        raise FormError(
            "positions",
            f"{positions!r} does not fit the {recipe.capitalize()} recipe, which conditions latent frames "
            f"{format_list(expected)}; press the recipe's button again, or choose Custom to pick positions freely",
        )
    return video_positions, multipliers


def video_to_video(
    video: Any,
    positions: str | None,
    noise_multipliers: str | None,
    recipe: str | None,
    end_video: Any,
    common: CommonForm,
    defaults: ModelDefaults,
    limits: UploadLimits = DEFAULT_LIMITS,
    keep: Keep = str,
) -> JobSpec:
    """Video-to-Video: the source's latent frames at the positions, or one of the recipes."""
    fields, form = _common(common, defaults, "v2v")
    recipe = recipe or "custom"
    if video is None:
        raise FormError("video", "none uploaded; Video-to-Video needs a source video")
    info = check_video(video, "video", limits)
    video_positions, multipliers = video_conditioning(
        positions, noise_multipliers, recipe, fields["num_frames"]
    )
    name = Path(video).name
    if recipe == "extension":
        need = 4 * (len(multipliers) - 1) + 1
        _need_frames(
            "video", info, name, need, f"the Extension recipe with {len(multipliers)} context latents"
        )
    elif recipe == "transition":
        _need_frames("video", info, name, 9, "the Transition recipe")
    else:
        need = 4 * max(video_positions) + 1
        _need_frames("video", info, name, need, f"Conditioning Positions up to latent {max(video_positions)}")
    kept_end = None
    if recipe == "transition":
        if end_video is None:
            raise FormError("end_video", "none uploaded; the Transition recipe needs the clip to arrive at")
        end_info = check_video(end_video, "end_video", limits)
        _need_frames("end_video", end_info, Path(end_video).name, 12, "the Transition recipe")
        kept_end = keep(str(end_video))
    kept = keep(str(video))
    request = GenerationRequest(
        task="v2v", video=kept, positions=video_positions, noise_multipliers=multipliers, **fields
    )
    if recipe != "custom":
        request = replace(request, recipe=recipe)
    form.update(
        video=kept,
        positions=format_list(video_positions),
        noise_multipliers=format_list(multipliers),
        recipe=recipe,
        end_video=kept_end,
    )
    return JobSpec(request, recipe=None if recipe == "custom" else recipe, end_video=kept_end, form=form)


def text_to_video(common: CommonForm, defaults: ModelDefaults) -> JobSpec:
    """Text-to-Video from the prompt alone."""
    fields, form = _common(common, defaults, "t2v")
    return JobSpec(GenerationRequest(task="t2v", **fields), form=form)


def check_spec(pipe: Any, spec: JobSpec) -> None:
    """The pipeline's own checks (`PusaPipeline.check_inputs`) on a spec, as form messages."""
    overrides = (
        {"noise_multipliers": "noise_multiplier", "images": "image"} if spec.request.task == "i2v" else {}
    )
    try:
        pipe.check_inputs(pipe.resolve(spec.request))
    except ValueError as error:
        raise relabel(error, overrides) from None
