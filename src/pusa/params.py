"""Every generation parameter, declared once. Imports nothing heavy (the CLI's `--help` and the studio's
first paint read it before torch is imported).

A `Param` says what a value is (kind, range or choices), what it defaults to (a value, or `MODEL_OWN`:
the model folder's own, see `request.ModelDefaults`), and how each face shows it: the studio's label,
slider step and info line, the CLI's flag and help. The CLI builds its flags from these
(`cli.add_param`), the studio its widgets (`app.widgets`), the one validation (`request.validate`) its
checks and messages. Adding a parameter means one declaration here plus the code that uses it.

`LoadOption` declares the options of the model load (model, device, dtype, ...): set once for a process,
not per request, they are flags of both `pusa generate` and `pusa serve`, built from `LOAD_OPTIONS`.

`InputError` is the one error type for bad input: it carries the parameter's name, the value and what
is allowed, so each face names the parameter its own way (`--steps`, "Inference Steps",
`num_inference_steps`) without parsing any text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class _ModelOwn:
    """Sentinel default: the model folder's own value (its `pusa_model.json`, else Wan2.1's)."""

    def __repr__(self) -> str:
        return "MODEL_OWN"


MODEL_OWN: Any = _ModelOwn()

INT, FLOAT, TEXT, CHOICE, INTS, FLOATS, MEDIA, MEDIAS = (
    "int", "float", "text", "choice", "ints", "floats", "media", "medias",
)  # fmt: skip


class InputError(ValueError):
    """A value that cannot be used, before anything heavy runs.

    param:   the parameter's name (a key of `PARAMS`, or another request field such as "task")
    value:   what was given
    allowed: what is allowed, as a phrase that reads after the value ("must be a whole number in 1..50")
    problem: what is wrong with it (default "is not allowed"), e.g. "repeats [1]"

    `str()` names the parameter as the Python API does; `message(name)` as a face wants it
    (`error.message("--steps")`), `labelled(label)` as a form does ("Inference Steps: 0 is not allowed; ...").
    """

    def __init__(
        self, param: str, value: Any, allowed: str, problem: str = "is not allowed", show_value: bool = True
    ) -> None:
        self.param, self.value, self.allowed, self.problem = param, value, allowed, problem
        self.show_value = show_value  # False: the problem says it ("video has 5 frames")
        super().__init__(self.message(param))

    def _shown(self) -> str:
        value = self.value
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(_short(v) for v in value) + "]"
        return _short(value)

    def message(self, name: str) -> str:
        if not self.show_value:
            return f"{name}: {self.problem}; {self.allowed}"
        return f"{name}={self._shown()} {self.problem}; {self.allowed}"

    def labelled(self, label: str) -> str:
        if not self.show_value:
            return f"{label}: {self.problem}; {self.allowed}"
        return f"{label}: {self._shown()} {self.problem}; {self.allowed}"

    def renamed(self, param: str) -> InputError:
        """The same error under another parameter's name (i2v's one `noise_multiplier` for the list)."""
        return type(self)(param, self.value, self.allowed, self.problem, self.show_value)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    text = repr(str(value)) if not isinstance(value, (int, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "...'"


def plural(count: float, noun: str) -> str:
    """`count` and `noun`, the noun plural unless the count is one: "1 frame", "13 frames", "0 images",
    "1.5 CPU cores" (every message that counts says it through this)."""
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{shown} {noun}" if count == 1 else f"{shown} {noun}s"


@dataclass(frozen=True)
class Param:
    """One parameter, as every face shows and checks it.

    name:    the request field and the API parameter (`num_inference_steps`)
    kind:    INT, FLOAT, TEXT, CHOICE, INTS / FLOATS (comma lists), MEDIA / MEDIAS (file paths)
    default: a value, `MODEL_OWN`, or None (nothing: required, or absent)
    low, high: the allowed range of a number (or of each number of a list), inclusive
    choices: the allowed values of a CHOICE
    step:    the studio slider's step
    label:   the studio's field label ("Inference Steps")
    help:    one line for the CLI's help and the studio's info
    flag:    the CLI flag (`--steps`); None: not a CLI flag
    field:   the studio form / API key when it is not `name` (`steps`)
    multiple: the number must be a multiple of this (a callable of the model's limits, or an int)
    """

    name: str
    kind: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    step: float | None = None
    label: str = ""
    help: str = ""
    flag: str | None = None
    field: str | None = None

    @property
    def key(self) -> str:
        """The studio form / API key."""
        return self.field or self.name

    def range_text(self, low: float | None = None, high: float | None = None) -> str:
        low = self.low if low is None else low
        high = self.high if high is None else high
        kind, cast = ("a whole number", int) if self.kind in (INT, INTS) else ("a number", float)
        if low is not None and high is not None:
            return f"{kind} in {cast(low)}..{cast(high)}"
        if low is not None:
            return f"{kind} of at least {cast(low)}"
        return kind if high is None else f"{kind} of at most {cast(high)}"

    def check(self, value: Any, low: float | None = None, high: float | None = None) -> Any:
        """`value` if it is of the right kind and in range (`low`/`high` override the declared range,
        e.g. the model's own limits), else `InputError`. Lists are checked item by item."""
        low = self.low if low is None else low
        high = self.high if high is None else high
        if self.kind in (INT, FLOAT):
            if not _is_number(value, integer=self.kind == INT) or not _within(value, low, high):
                raise InputError(self.name, value, f"must be {self.range_text(low, high)}")
            return value
        if self.kind in (INTS, FLOATS):
            integer = self.kind == INTS
            for item in value:
                if not _is_number(item, integer=integer) or not _within(item, low, high):
                    raise InputError(
                        self.name,
                        list(value),
                        f"each must be {self.range_text(low, high)}",
                        f"contains {item!r}",
                    )
            return value
        if self.kind == TEXT:
            if not isinstance(value, str):
                raise InputError(self.name, value, "must be text")
            return value
        if self.kind == CHOICE:
            if value not in self.choices:
                raise InputError(self.name, value, f"choose one of {', '.join(self.choices)}")
            return value
        return value


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return isinstance(value, int) if integer else True


# ------------------------------------------------------------------------------------------- the values
DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards"
)
MAX_SEED = 2**63 - 1
MAX_SIDE = 1920  # pixels; beyond this one forward pass no longer fits on any single GPU
TASKS = ("t2v", "i2v", "frames", "v2v", "long")
TASK_NAMES = {
    "t2v": "Text-to-Video",
    "i2v": "Image-to-Video",
    "frames": "Multi-Frames to Video",
    "v2v": "Video-to-Video",
    "long": "Long video",
}
# The long task: one video of up to this many frames, chained from clips of the model's own length.
LONG_MAX_FRAMES = 4 * 256 + 1
CHAINS = ("latent", "anchored", "pixel", "pixel-matched")
RECIPES = ("extension", "completion", "transition")
SPEED_PRESETS = ("4-step",)  # pusa.presets: steps, cfg, shift and the speed LoRA of a model folder
# The models `--model` names besides a folder (`weights.registry` builds or finds them); not speed presets.
BUILTIN_MODELS = ("pusa-tiny", "tiny-random", "tiny-random-a14b")
TINY_RANDOM_MODELS = ("tiny-random", "tiny-random-a14b")  # seeded random models, built in memory
DEFAULT_MODEL = "pusa-tiny"

_PARAMS = (
    # inputs
    Param("prompt", TEXT, "", label="Prompt", help="what the video shows", flag="--prompt"),
    Param(
        "negative_prompt", TEXT, DEFAULT_NEGATIVE_PROMPT, label="Negative Prompt",
        help="what to avoid (default: Wan's standard negative prompt)", flag="--negative-prompt",
    ),
    Param("image", MEDIA, label="Image", help="the first frame (PNG, JPEG, ...), center-cropped to the video size", flag="--image"),
    Param("images", MEDIAS, label="Images", help="two or more images, in order", flag="--images"),
    Param("video", MEDIA, label="Source video", help="source video (mp4, webm, mov, ...)", flag="--video"),
    Param("end_video", MEDIA, label="Second clip", help="the clip a transition arrives at", flag="--end-video"),
    # conditioning
    Param(
        "noise_multiplier", FLOAT, 0.2, 0.0, 1.0, step=0.05, label="Noise Multiplier",
        help="how much the image may change: 0.0 keeps it exactly, 1.0 ignores it", flag="--noise-multiplier",
    ),
    Param(
        "positions", INTS, label="Conditioning Positions",
        help="latent frame indices, comma-separated: latent 0 is pixel frame 0, latent k covers frames 4k-3..4k",
        flag="--positions",
    ),
    Param(
        "noise_multipliers", FLOATS, low=0.0, high=1.0, label="Noise Multipliers",
        help="one per position, 0.0-1.0, comma-separated (0.0 keeps the frame exactly)", flag="--noise-multipliers",
    ),
    Param(
        "recipe", CHOICE, None, choices=RECIPES, label="Recipe",
        help="extension: continue the clip; completion: regenerate its middle from its first and last "
        "frames; transition: bridge it to a second clip",
        flag="--recipe",
    ),
    # the long task (`recipes.long_video`): chunks chained by their overlap
    Param(
        "chunk_frames", INT, MODEL_OWN, 5, None, step=4, label="Chunk Frames",
        help="frames of each chained clip, 4k+1 (the model's own clip length by default: 17 for pusa-tiny)",
        flag="--chunk-frames",
    ),
    Param(
        "context_latents", INT, 3, 1, 8, step=1, label="Overlap (latent frames)",
        help="latent frames of each chunk's end that open the next one (1 = its last pixel frame, "
        "k = its last 4k-3 frames)",
        flag="--overlap",
    ),
    Param(
        "chunk_multipliers", FLOATS, low=0.0, high=1.0, label="Overlap Noise Multipliers",
        help="one per overlap latent, 0.0-1.0, comma-separated (default: 0.0 each: kept exactly)",
        flag="--overlap-multipliers",
    ),
    Param(
        "chain", CHOICE, "pixel", choices=CHAINS, label="Chaining",
        help="pixel (default, the least drift measured): each chunk is decoded and its end encoded again; "
        "pixel-matched: pixel, each chunk's colours shifted to match the overlap; latent: the next chunk opens "
        "on the previous one's latents and the whole video is decoded once; anchored: latent, with the "
        "overlap's first latent made from its last frame alone",
        flag="--chain",
    ),
    Param(
        "long_frames", INT, 0, 0, LONG_MAX_FRAMES, step=4, label="Long video (frames)",
        help="0: one clip; more: one video of this many frames (4k+1), chained from clips of the Frames "
        "above, each opening on the end of the one before",
    ),
    # sampling
    Param(
        "lora_alpha", FLOAT, MODEL_OWN, 0.1, 5.0, step=0.1, label="LoRA Alpha",
        help="LoRA strength (the model's own by default: 1.4 for Pusa V1)", flag="--lora-alpha",
    ),
    Param(
        "loras", TEXT, "", label="LoRAs",
        help="LoRA stack, FILE[:STRENGTH][@high|@low]; repeat the flag (the studio: one per line). STRENGTH "
        "A;B = a two-expert model's high;low. No strength: --lora-alpha. Default: the model folder's own",
        flag="--lora",
    ),
    Param(
        "preset", CHOICE, None, choices=SPEED_PRESETS, label="Preset",
        help="4-step: 4 steps, cfg 1.0 (one DiT forward a step), the folder's shift and speed LoRA "
        "(its pusa_model.json 'presets'); overrides --steps, --cfg and --shift",
        flag="--preset",
    ),
    Param(
        "boundary", FLOAT, MODEL_OWN, 0.0, 1.0, step=0.005, label="Expert Boundary",
        help="two-expert models (Wan2.2): the high-noise expert runs while the step's timestep is at least "
        "boundary x 1000, the low-noise one below (the model's own by default: 0.875); one-expert models "
        "ignore it",
        flag="--boundary",
    ),
    Param(
        "num_inference_steps", INT, MODEL_OWN, 1, 50, step=1, label="Inference Steps",
        help="sampling steps (the model's own by default: 10 for Pusa V1)", flag="--steps", field="steps",
    ),
    Param(
        "cfg", FLOAT, 3.0, 1.0, 20.0, step=0.5, label="CFG",
        help="classifier-free guidance; 1.0 skips the negative pass", flag="--cfg",
    ),
    Param(
        "shift", FLOAT, 5.0, 0.1, 20.0, step=0.1, label="Shift",
        help="noise schedule shift (more steps at high noise)", flag="--shift",
    ),
    Param(
        "seed", INT, None, 0, MAX_SEED, label="Seed",
        help="random seed (default: random; the seed used is saved with the video)", flag="--seed",
    ),
    # the clip
    Param(
        "num_frames", INT, MODEL_OWN, 1, None, step=4, label="Frames",
        help="number of frames, 4k+1 (the model's own by default: 81 for Pusa V1)", flag="--frames",
    ),
    Param("width", INT, MODEL_OWN, label="Width", help="width in pixels (the model's own by default)", flag="--width"),
    Param("height", INT, MODEL_OWN, label="Height", help="height in pixels (the model's own by default)", flag="--height"),
    Param(
        "fps", FLOAT, MODEL_OWN, 1.0, 60.0, step=1.0, label="FPS",
        help="playback frame rate (the model's own by default: 16 for Wan)", flag="--fps",
    ),
    # speed
    Param(
        "cache", CHOICE, "off", choices=("off", "pusa"), label="Step Cache",
        help="pusa: reuse the transformer's last result on steps whose per-frame input barely changed "
        "(fewer DiT forwards, slightly different video); off: compute every step",
        flag="--cache",
    ),
    Param(
        "cache_threshold", FLOAT, 0.2, 0.0, 1.0, step=0.01, label="Cache Threshold",
        help="step cache: the accumulated relative input change under which a step is skipped (higher: "
        "more skips)", flag="--cache-threshold",
    ),
)  # fmt: skip
PARAMS: Mapping[str, Param] = {param.name: param for param in _PARAMS}
# Every task's settings beyond its inputs, in the order the studio and the API list them.
SAMPLING = (
    "lora_alpha",
    "num_inference_steps",
    "negative_prompt",
    "seed",
    "cfg",
    "shift",
    "loras",
    "preset",
    "boundary",
)
CLIP = ("width", "height", "num_frames", "fps")
SPEED = ("cache", "cache_threshold")
COMMON = ("prompt", *SAMPLING, *CLIP, *SPEED)
# What each task takes besides COMMON (the order of the studio's fields and of the API's parameters).
TASK_INPUTS = {
    "i2v": ("image", "noise_multiplier"),
    "frames": ("images", "positions", "noise_multipliers"),
    "v2v": ("video", "positions", "noise_multipliers", "recipe", "end_video"),
    "t2v": (),
    "long": (
        "image",
        "noise_multiplier",
        "video",
        "chunk_frames",
        "context_latents",
        "chunk_multipliers",
        "chain",
    ),
}
LONG = ("chunk_frames", "context_latents", "chunk_multipliers", "chain")
# Studio controls that are no CLI flag: a tab's "Long video" total (the CLI says `generate long --frames`).
FORM_ONLY = ("long_frames",)
# What a task's request field is called on its face: i2v's list of one multiplier is `noise_multiplier`.
TASK_ALIASES: Mapping[str, Mapping[str, str]] = {
    "i2v": {"noise_multipliers": "noise_multiplier", "images": "image"},
    "long": {"noise_multipliers": "noise_multiplier", "images": "image"},
}


def face_name(task: str | None, param: str) -> str:
    """The parameter as task `task` shows it (i2v's `noise_multipliers` is its one `noise_multiplier`)."""
    return TASK_ALIASES.get(task or "", {}).get(param, param)


def label_of(param: str) -> str:
    declared = PARAMS.get(param)
    return declared.label if declared and declared.label else param.replace("_", " ").capitalize()


def flag_of(param: str) -> str:
    """The CLI flag of a parameter: its declared one, else `--name` (`device` -> `--device`)."""
    declared = PARAMS.get(param)
    return declared.flag if declared and declared.flag else "--" + param.replace("_", "-")


def cli_message(error: BaseException) -> str:
    """A bad input's message as the command line says it: an `InputError` names the flag that sets its
    parameter (`--steps=0 is not allowed; ...`); any other error is its own text."""
    if isinstance(error, InputError):
        return error.message(flag_of(error.param))
    return str(error)


# ------------------------------------------------------------------------------------- load options
@dataclass(frozen=True)
class LoadOption:
    """An option of the model load, the same flag for `pusa generate` and `pusa serve`.

    name:    the argparse destination (`text_vae_device`)
    flag:    the CLI flag (`--text-vae-device`)
    help:    one help text, for every command that takes the flag
    default: the value without the flag (a switch: False)
    kind:    "text", "int" or "switch" (a flag without a value)
    choices: the allowed values, when they are few
    metavar: how the help shows the value
    """

    name: str
    flag: str
    help: str
    default: Any = None
    kind: str = TEXT
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    def argparse_options(self) -> dict[str, Any]:
        """The keywords of `add_argument(self.flag, **...)` (argparse is not imported here)."""
        if self.kind == "switch":
            return dict(dest=self.name, action="store_true", help=self.help)
        options: dict[str, Any] = dict(dest=self.name, default=self.default, help=self.help)
        if self.kind == INT:
            options["type"] = int
        if self.choices:
            options["choices"] = self.choices
        if self.metavar:
            options["metavar"] = self.metavar
        return options


_LOAD_OPTIONS = (
    LoadOption(
        "model", "--model", default=DEFAULT_MODEL, metavar="DIR|NAME",
        help="a local model folder (diffusers layout or Wan's original layout) or a built-in model: "
        f"{', '.join(BUILTIN_MODELS)} (default: {DEFAULT_MODEL}, the shipped demo model; its frame count, size "
        "and steps are the default generation settings)",
    ),
    LoadOption("device", "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"),
    LoadOption(
        "text_vae_device", "--text-vae-device", metavar="DEVICE",
        help="run the text encoder and the VAE on this device, resident, and the transformer on --device: "
        "e.g. --device cuda:0 --text-vae-device cuda:1 (two GPUs, no --parallel: the set-up of Pusa's "
        "original demo), or cpu to keep them off the GPU (default: with the transformer)",
    ),
    LoadOption(
        "dtype", "--dtype", choices=("float32", "bfloat16", "float16"),
        help="weights precision (default: float32 on CPU, bfloat16 on GPU)",
    ),
    LoadOption(
        "parallel", "--parallel", default=1, kind=INT, metavar="N",
        help="split each video's transformer over N processes (context parallel): cuda:0..N-1 with --device "
        "cuda, else N CPU processes; this process keeps the text encoder, VAE and files, the others follow "
        "each of its videos (default: 1)",
    ),
    LoadOption(
        "cfg_parallel", "--cfg-parallel", kind="switch",
        help="the positive and the negative guidance pass of each step at the same time: on 2 processes "
        "(cuda:0 and cuda:1 with --device cuda), or with --parallel N (even) on two groups of N/2 processes "
        "that each split their pass by tokens",
    ),
)  # fmt: skip
LOAD_OPTIONS: Mapping[str, LoadOption] = {option.name: option for option in _LOAD_OPTIONS}


def add_load_options(group: Any, *names: str) -> None:
    """Add the flags of `LOAD_OPTIONS[name]` for `names`, in that order, to an argparse parser or group."""
    for name in names:
        option = LOAD_OPTIONS[name]
        group.add_argument(option.flag, **option.argparse_options())
