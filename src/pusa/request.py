"""A generation request, the model's defaults and limits, and the one validation of a request.

`validate(request, limits)` is the only place a request is checked: every face (Python API, CLI,
studio, API endpoints, the job queue) calls it, before any weights load (the limits come from the model
folder's config files, `weights.registry.model_limits`). It raises `InputError` carrying the parameter,
the value and what is allowed. Imports no torch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from . import recipes
from .lora_specs import check_stack, format_loras, parse_loras
from .params import (
    DEFAULT_NEGATIVE_PROMPT,
    FLOAT,
    INT,
    LONG_MAX_FRAMES,
    MAX_SIDE,
    MODEL_OWN,
    PARAMS,
    SPEED_PRESETS,
    TASK_NAMES,
    TASKS,
    InputError,
    face_name,
    plural,
)
from .presets import preset_of
from .recipes import RecipePlan, num_latent_frames

Media = Any  # a path, a PIL image or a uint8 array
_T = TypeVar("_T")


def _resolved(value: _T | None) -> _T:
    """A field that `resolve` fills (num_frames, chunk_frames, seed), typed as set for the functions that
    take a resolved request. Only a type: nothing is checked, so a request that was not resolved fails
    where it always did."""
    return cast(_T, value)


@dataclass(frozen=True)
class ModelDefaults:
    """Native clip settings of a model (its `pusa_model.json` "defaults"): what `MODEL_OWN` resolves to."""

    num_frames: int = 81
    width: int = 832
    height: int = 480
    num_inference_steps: int = 10
    fps: float = 16.0
    max_sequence_length: int = 512
    lora_alpha: float = 1.4  # the strength its own LoRA works best at (Pusa V1: 1.4)
    # What it was trained on (its manifest's "trained"); empty: not declared (real Wan: no warnings).
    trained_frames: tuple[int, ...] = ()
    trained_sizes: tuple[tuple[int, int], ...] = ()  # (width, height)
    boundary: float = 0.875  # two-expert models: where the low-noise expert takes over (x 1000)
    presets: tuple[Any, ...] = ()  # presets.Preset: the folder's own versions of the named presets

    @property
    def chunk_frames(self) -> int:
        """A long video's chunks are clips of the model's own length."""
        return self.num_frames


WAN_DEFAULTS = ModelDefaults()


@dataclass(frozen=True)
class ModelLimits:
    """What a model can take, known from its config files before its weights load.

    size_multiple: width and height must be multiples of this (VAE spatial factor x patch size)
    max_side:      the largest width or height (rope table x size multiple, at most `MAX_SIDE`)
    max_frames:    the longest clip (rope table, in latent frames, as pixel frames)
    """

    size_multiple: int = 16
    max_side: int = MAX_SIDE
    max_frames: int = 4 * (1024 - 1) + 1
    defaults: ModelDefaults = WAN_DEFAULTS
    experts: int = 1  # DiTs: 1, or 2 (Wan2.2's high- and low-noise experts)

    @staticmethod
    def of(
        patch_size: Sequence[int],
        spatial: int,
        rope_max_seq_len: int,
        defaults: ModelDefaults,
        experts: int = 1,
    ) -> ModelLimits:
        multiple = spatial * patch_size[1]
        return ModelLimits(
            size_multiple=multiple,
            max_side=min(MAX_SIDE, rope_max_seq_len * multiple),
            max_frames=4 * (rope_max_seq_len - 1) + 1,
            defaults=defaults,
            experts=experts,
        )


@dataclass
class GenerationRequest:
    """Everything that decides a video. `None` means "the model's own" (see `ModelDefaults`), a random
    seed, or (recipe) custom positions.

    images:   i2v / frames: one image per position
    video:    v2v: the source clip; end_video: the second clip of a transition
    recipe:   v2v: "extension" | "completion" | "transition" (positions and multipliers from `recipes`;
              empty noise_multipliers take the recipe's own) or None (the given positions)
    loras:    the LoRA stack (`lora_specs`: text, one `FILE[:STRENGTH][@EXPERT]` a line); "" = the model's own
    preset:   a speed preset (`presets`: "4-step") or None; it sets steps, cfg, shift, adds its LoRA
    boundary: two-expert models: the high-noise expert while t >= boundary * 1000 (None: the model's own)
    sources:  where in-memory inputs came from, for the record
    long:     num_frames is the whole video's; it is made of chunks of `chunk_frames` chained by
              `context_latents` (`recipes.long_video`), the first from the prompt, its one image (at
              latent 0, like i2v) or the end of its video (like the extension recipe)
    """

    task: str
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    images: Sequence[Media] = ()
    video: Media | None = None
    end_video: Media | None = None
    positions: Sequence[int] = ()
    noise_multipliers: Sequence[float] = ()
    recipe: str | None = None
    lora_alpha: float | None = None
    num_inference_steps: int | None = None
    cfg: float = PARAMS["cfg"].default
    shift: float = PARAMS["shift"].default
    seed: int | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loras: str = ""
    preset: str | None = None
    boundary: float | None = None
    chunk_frames: int | None = None
    context_latents: int = PARAMS["context_latents"].default
    chunk_multipliers: Sequence[float] = ()
    chain: str = PARAMS["chain"].default
    cache: str = PARAMS["cache"].default
    cache_threshold: float = PARAMS["cache_threshold"].default
    sources: dict[str, Any] = field(default_factory=dict)


MODEL_OWN_FIELDS = tuple(name for name, param in PARAMS.items() if param.default is MODEL_OWN)
# The request's numbers with a declared range: each is checked by its declaration alone.
RANGED = tuple(
    name
    for name, param in PARAMS.items()
    if param.kind in (INT, FLOAT)
    and param.low is not None
    and param.high is not None
    and name in {f.name for f in fields(GenerationRequest)}
)


def resolve(request: GenerationRequest, defaults: ModelDefaults) -> GenerationRequest:
    """Fill the model's own values and a random seed into `None` fields."""
    filled = {name: getattr(defaults, name) for name in MODEL_OWN_FIELDS if getattr(request, name) is None}
    if not isinstance(request.loras, str):  # the Python API may pass entries or mappings
        filled["loras"] = format_loras(parse_loras(request.loras))
    if isinstance(request.preset, str) and request.preset in SPEED_PRESETS:
        preset = preset_of(request.preset, defaults.presets)
        filled.update(num_inference_steps=preset.num_inference_steps, cfg=preset.cfg, shift=preset.shift)
    if request.seed is None:
        filled["seed"] = secrets.randbelow(2**31)
    return replace(request, **filled) if filled else request


def _error(task: str, error: InputError) -> InputError:
    """The error as the task's face names it: i2v's list of one multiplier is its `noise_multiplier`."""
    name = face_name(task, error.param)
    if name == error.param:
        return error
    if name == "noise_multiplier" and isinstance(error.value, list) and len(error.value) == 1:
        return InputError(name, error.value[0], PARAMS[name].range_text().join(("must be ", "")))
    return error.renamed(name)


def listed(name: str, value: Any) -> list[Any]:
    """A list-valued parameter as a list; a single number, a string or None is refused by name (Python
    callers wrote `positions=0` and got "object of type 'int' has no len()")."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1:  # a 1-D numpy array or tensor
        return list(value.tolist())
    example = {"images": "[first, last]"}.get(name, "[0, 4]" if name == "positions" else "[0.2, 0.5]")
    if isinstance(value, (int, float, str)) or value is None:
        raise InputError(name, value, f"give a list, e.g. {name}={example}", "is not a list")
    problem = f"got {type(value).__name__}, not a list"  # an array or an image: its repr says nothing
    raise InputError(name, value, f"give a list, e.g. {name}={example}", problem, show_value=False)


def check_positions(positions: Sequence[int], noise_multipliers: Sequence[float], num_latent: int) -> None:
    """Positions are distinct latent frame indices with one multiplier in [0, 1] each."""
    positions, multipliers = listed("positions", positions), listed("noise_multipliers", noise_multipliers)
    if len(positions) != len(multipliers):
        raise InputError(
            "noise_multipliers", multipliers, "give one noise multiplier per position",
            f"has {plural(len(multipliers), 'value')} but positions={positions} has {len(positions)}",
        )  # fmt: skip
    for p in positions:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < num_latent:
            raise InputError(
                "positions", positions,
                f"positions are latent frame indices, whole numbers in 0..{num_latent - 1} for this video "
                f"({num_latent} latent frames)",
                f"contains {p!r}",
            )  # fmt: skip
    duplicates = sorted({p for p in positions if positions.count(p) > 1})
    if duplicates:
        raise InputError(
            "positions", positions, "each latent frame can be conditioned once", f"repeats {duplicates}"
        )
    PARAMS["noise_multipliers"].check(multipliers)


def check_settings(request: GenerationRequest, limits: ModelLimits) -> None:
    """Every setting of a resolved request, against the model's limits (no media is opened)."""
    r = request
    if r.task not in TASKS:
        raise InputError("task", r.task, f"choose one of {', '.join(TASKS)}")
    for name in ("prompt", "negative_prompt"):
        PARAMS[name].check(getattr(r, name))
    if r.task in ("t2v", "long") and not r.prompt.strip():
        raise InputError("prompt", r.prompt, "describe the video to generate", "is empty")
    frames = r.num_frames
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1 or (frames - 1) % 4:
        longest = LONG_MAX_FRAMES if r.task == "long" else limits.max_frames
        raise InputError("num_frames", frames, f"must be 4k+1 (e.g. 17, 33, 49, 81), at most {longest}")
    if r.task == "long":
        check_long_settings(r, limits)
    elif frames > limits.max_frames:
        raise InputError("num_frames", frames, f"this model takes at most {limits.max_frames}")
    multiple = limits.size_multiple
    for name in ("width", "height"):
        value = getattr(r, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value % multiple
            or not multiple <= value <= limits.max_side
        ):
            raise InputError(
                name,
                value,
                f"must be a multiple of {multiple} between {multiple} and {limits.max_side} pixels for this model",
            )
    for name in RANGED:
        PARAMS[name].check(getattr(r, name))
    PARAMS["cache"].check(r.cache)
    if r.recipe is not None and r.task != "v2v":
        raise InputError("recipe", r.recipe, "recipes are video-to-video's (task v2v)")
    if r.end_video is not None and r.recipe != "transition":
        raise InputError(
            "end_video", r.end_video, "only the transition recipe takes a second clip", "is given"
        )
    if r.preset is not None:
        PARAMS["preset"].check(r.preset)
    PARAMS["loras"].check(r.loras)
    check_stack(parse_loras(r.loras), limits.experts)


def check_long_settings(request: GenerationRequest, limits: ModelLimits) -> None:
    """A long video's length and chunks (`recipes.long_video` checks how they fit together)."""
    r = request
    if _resolved(r.num_frames) > LONG_MAX_FRAMES:
        raise InputError("num_frames", r.num_frames, f"a long video has at most {LONG_MAX_FRAMES} frames")
    chunk = r.chunk_frames
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 5 or (chunk - 1) % 4:
        raise InputError("chunk_frames", chunk, f"must be 4k+1 and at least 5, at most {limits.max_frames}")
    if chunk > limits.max_frames:
        raise InputError("chunk_frames", chunk, f"this model takes at most {limits.max_frames}")
    PARAMS["chain"].check(r.chain)
    PARAMS["chunk_multipliers"].check(list(r.chunk_multipliers))
    long_plan(r)


def long_plan(request: GenerationRequest) -> recipes.LongPlan:
    """The chunks of a resolved long request."""
    r = request
    return recipes.long_video(
        _resolved(r.num_frames),
        _resolved(r.chunk_frames),
        r.context_latents,
        list(r.chunk_multipliers) or None,
        _resolved(r.seed),
    )


def first_chunk(request: GenerationRequest) -> GenerationRequest:
    """The request of a long video's first chunk: t2v, i2v from its image, or the extension recipe on its
    video (the overlap's length, as its positions 0..c-1, and its multipliers)."""
    r = request
    plan = long_plan(r)
    clip: dict[str, Any] = dict(
        task="t2v", num_frames=r.chunk_frames, images=(), video=None, positions=(), noise_multipliers=(),
        recipe=None, seed=plan.chunks[0].seed,
    )  # fmt: skip
    if r.images:
        clip.update(
            task="i2v", images=list(r.images), positions=[0], noise_multipliers=list(r.noise_multipliers)
        )
    elif r.video is not None:
        clip.update(
            task="v2v", video=r.video, recipe="extension", positions=list(plan.positions),
            noise_multipliers=list(plan.noise_multipliers),
        )  # fmt: skip
    return replace(r, **clip)


def check_task_inputs(request: GenerationRequest) -> None:
    """What each task takes: its images, video and positions (none opened yet)."""
    r = request
    name = TASK_NAMES.get(r.task, r.task)
    if r.task == "t2v" and (r.positions or r.images or r.video is not None):
        raise InputError(
            "positions", list(r.positions),
            "text-to-video takes no images, video or positions; use i2v, frames or v2v",
            f"(with {plural(len(r.images), 'image')}, video: {r.video is not None}) is given",
        )  # fmt: skip
    if r.task in ("i2v", "frames"):
        if len(r.images) == 0 or any(image is None for image in r.images):
            raise InputError(
                "images", None, f"{name} needs an image for every position", "none given", show_value=False
            )
        if r.task == "i2v" and len(r.images) != 1:
            raise InputError(
                "images",
                len(r.images),
                "image-to-video takes exactly one image",
                f"{len(r.images)} given",
                show_value=False,
            )
        if len(r.images) != len(r.positions):
            raise InputError(
                "positions", list(r.positions), "give one position per image, in the images' order",
                f"has {plural(len(r.positions), 'value')} for {plural(len(r.images), 'image')}",
            )  # fmt: skip
    if r.task == "v2v" and r.video is None:
        raise InputError("video", None, "video-to-video needs a source video", "none given", show_value=False)
    if r.task == "v2v" and r.recipe is None and not r.positions:
        raise InputError(
            "positions",
            None,
            "video-to-video needs the latent frames to keep, e.g. 0,1,2,3",
            "none given",
            show_value=False,
        )
    if r.recipe == "transition" and r.end_video is None:
        raise InputError(
            "end_video",
            None,
            "the transition recipe needs the clip to arrive at",
            "none given",
            show_value=False,
        )


def video_plan(
    request: GenerationRequest, source_frames: int | None = None, end_frames: int | None = None
) -> RecipePlan:
    """The recipe plan of a resolved video-to-video request (source lengths: None = not known yet)."""
    return recipes.plan(
        request.recipe,
        _resolved(request.num_frames),
        request.positions,
        request.noise_multipliers,
        source_frames,
        end_frames,
    )


def advisories(request: GenerationRequest, defaults: ModelDefaults) -> list[InputError]:
    """Warnings (not raised) for a resolved request outside what the model was trained on: it runs, but
    the model has never seen such a clip (pusa-tiny tiles its objects at 128x128; v4, trained on 17
    frames only, faded them at 33). Each names its parameter like an error, so each face words it its
    own way."""
    notes = []
    name = "chunk_frames" if request.task == "long" else "num_frames"
    frames = getattr(request, name)
    if defaults.trained_frames and frames not in defaults.trained_frames:
        trained = ", ".join(map(str, defaults.trained_frames))
        notes.append(
            InputError(
                name, frames, "other lengths may fade or break its objects",
                f"is not a length this model was trained on ({trained} frames)",
            )
        )  # fmt: skip
    if request.preset is not None and not preset_of(request.preset, defaults.presets).loras:
        notes.append(
            InputError(
                "preset", request.preset, "name one in the folder's pusa_model.json \"presets\" for real speed",
                "runs without a speed LoRA (the model folder declares none)",
            )
        )  # fmt: skip
    sizes = [tuple(size) for size in defaults.trained_sizes]
    if sizes and (request.width, request.height) not in sizes:
        trained = ", ".join(f"{w}x{h}" for w, h in sizes)
        notes.append(
            InputError(
                "width", request.width, "other sizes may repeat or distort its objects",
                f"(height {request.height}) is not a size this model was trained at ({trained})",
            )
        )  # fmt: skip
    return notes


def _validate_long(request: GenerationRequest, limits: ModelLimits, media: bool) -> None:
    """A long request's inputs: at most one of an image and a video, each as its first chunk takes it."""
    r = request
    if r.images and r.video is not None:
        raise InputError(
            "video", r.video, "a long video starts from the prompt, one image or the end of one video",
            "is given with an image", show_value=False,
        )  # fmt: skip
    if r.end_video is not None or r.recipe is not None:
        name = "end_video" if r.end_video is not None else "recipe"
        raise InputError(name, getattr(r, name), "a long video chains extensions itself", "is given")
    if r.images and len(r.images) != 1:
        raise InputError("images", len(r.images), "a long video starts from one image", "given", False)
    if not r.images and (r.positions or r.noise_multipliers):
        raise InputError(
            "positions", list(r.positions), "only a long video's image takes a position (0) and a multiplier"
        )
    first = first_chunk(r)
    validate(first, limits, media)  # its image or video, as i2v or the extension recipe takes it


def validate(request: GenerationRequest, limits: ModelLimits, media: bool = True) -> GenerationRequest:
    """Check a request completely; return it resolved, with a v2v request's positions and multipliers made
    explicit. media: also open every input (readable? long enough?); False checks only the numbers.

    Raises `InputError` naming the parameter as the request's task shows it (i2v: `noise_multiplier`)."""
    from .video import probe_image, probe_video  # PIL / PyAV only, no torch

    resolved = resolve(request, limits.defaults)
    try:
        check_settings(resolved, limits)
        check_task_inputs(resolved)
        num_latent = num_latent_frames(_resolved(resolved.num_frames))
        if resolved.task == "long":
            _validate_long(resolved, limits, media)
        elif resolved.task == "v2v":
            if resolved.positions:
                check_positions(
                    resolved.positions,
                    resolved.noise_multipliers or [0.0] * len(resolved.positions),
                    num_latent,
                )
            if resolved.noise_multipliers:
                PARAMS["noise_multipliers"].check(list(resolved.noise_multipliers))
            lengths = {}
            if media:
                lengths["source_frames"] = probe_video(resolved.video, "video").frames
                if resolved.end_video is not None:
                    lengths["end_frames"] = probe_video(resolved.end_video, "end_video").frames
            try:
                plan = video_plan(resolved, **lengths)
            except InputError as error:  # a clip too short: say which file
                source = (
                    getattr(resolved, error.param, None) if error.param in ("video", "end_video") else None
                )
                if isinstance(source, (str, Path)) and not error.show_value:
                    raise InputError(error.param, str(source), error.allowed, error.problem) from None
                raise
            check_positions(plan.positions, plan.noise_multipliers, num_latent)
            resolved = replace(
                resolved, positions=list(plan.positions), noise_multipliers=list(plan.noise_multipliers)
            )
        else:
            check_positions(resolved.positions, resolved.noise_multipliers, num_latent)
            if media:
                parameter = face_name(resolved.task, "images")
                for image in resolved.images:
                    probe_image(image, parameter)
    except InputError as error:
        raise _error(resolved.task, error) from None
    return resolved
