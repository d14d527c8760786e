"""`PusaPipeline`: validate -> encode text / images / video -> condition -> sample -> decode -> save.

One shared core (`generate`) and one method per task. Every parameter that shapes the result is
recorded in `PusaOutput.settings`, which is written beside the mp4 (JSON sidecar) and inside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .conditioning import Conditioning, num_latent_frames, validate_positions
from .loading import LORA_ALPHA_MAX, LORA_ALPHA_MIN
from .presets import DEFAULT_CFG, WAN_DEFAULTS, ModelDefaults
from .sampling import StepInfo, sample
from .schedule import DEFAULT_SHIFT, flow_sigmas
from .video import fit_image, fit_video, load_image, read_video, write_video

DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards"
)
DEFAULT_I2V_NOISE_MULTIPLIER = 0.2
LORA_ALPHA_RANGE = (LORA_ALPHA_MIN, LORA_ALPHA_MAX)
STEPS_RANGE = (1, 50)
CFG_RANGE = (1.0, 20.0)
SHIFT_RANGE = (0.1, 20.0)
FPS_RANGE = (1.0, 60.0)
MAX_SIDE = 1920  # pixels; beyond this one forward pass no longer fits on any single GPU
MAX_SEED = 2**63 - 1
TASKS = ("t2v", "i2v", "frames", "v2v")
RECIPES = ("extension", "completion", "transition")

Media = Any  # a path, a PIL image or a uint8 array


@dataclass
class GenerationRequest:
    """Everything that decides a video. `None` means "the model's default" (see `ModelDefaults`)."""

    task: str
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    images: Sequence[Media] = ()
    video: Media | None = None
    positions: Sequence[int] = ()
    noise_multipliers: Sequence[float] = ()
    lora_alpha: float | None = None
    num_inference_steps: int | None = None
    cfg: float = DEFAULT_CFG
    shift: float = DEFAULT_SHIFT
    seed: int | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    recipe: str | None = None  # set by the video-to-video recipes, for the record
    sources: dict[str, Any] = field(default_factory=dict)  # where the inputs came from, for the record


@dataclass
class PusaOutput:
    frames: np.ndarray  # [F, H, W, 3] uint8
    settings: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        """Write `path` (H.264 mp4, settings in its metadata) and `path` with `.json` (the sidecar)."""
        path = Path(path)
        write_video(path, self.frames, self.settings["fps"], metadata=self.settings)
        path.with_suffix(".json").write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
        return path


def _describe_source(source: Media) -> Any:
    """A JSON-able record of an input: the path and content hash of a file, else its shape."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return {"path": str(path.resolve()), "sha256": digest}
    if isinstance(source, np.ndarray):
        return {"array_shape": list(source.shape), "sha256": hashlib.sha256(source.tobytes()).hexdigest()}
    if hasattr(source, "size") and hasattr(source, "tobytes"):  # PIL image
        return {"image_size": list(source.size), "sha256": hashlib.sha256(source.tobytes()).hexdigest()}
    return repr(type(source))


def _check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    kind = "a whole number" if integer else "a number"
    bad_type = (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    )
    if bad_type or (isinstance(value, float) and math.isnan(value)) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be {kind} in {low}..{high}")


def vae_compression(vae: Any) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE, from its config."""
    return 2 ** sum(vae.config.temperal_downsample), 2 ** len(vae.config.temperal_downsample)


def native_tokens(transformer: Any, vae: Any, defaults: ModelDefaults) -> int:
    """DiT tokens of one clip at the model's native size: the sequence length attention runs at."""
    temporal, spatial = vae_compression(vae)
    p_t, p_h, p_w = transformer.config.patch_size
    frames = (defaults.num_frames - 1) // temporal + 1
    return (frames // p_t) * (defaults.height // spatial // p_h) * (defaults.width // spatial // p_w)


class PusaPipeline:
    """Pusa V1 (Wan2.1 DiT with per-frame timesteps) for every task.

    Build it from components (`PusaPipeline(transformer, vae, text_encoder, tokenizer)`), from a local
    folder (`PusaPipeline.from_pretrained(dir, lora=file)`) or from a preset (`from_preset("tiny-random")`).
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        lora: Any = None,
        identity: str = "custom",
        defaults: ModelDefaults = WAN_DEFAULTS,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.lora = lora  # a loading.LoraFuser, or None
        self.identity = identity
        self.defaults = defaults
        self.device = torch.device(device)
        self.dtype = dtype
        self._text_cache: dict[tuple[str, int], torch.Tensor] = {}
        self.acceleration: dict[str, Any] = {}  # what prepare_for_device did (memory tier, attention, ...)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_model(
        cls,
        model: str | Path = "pusa-tiny",
        lora: str | Path | None = "auto",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **acceleration: Any,
    ) -> PusaPipeline:
        """What `--model` names: a built-in model (`pusa-tiny`, `tiny-random`) or a local folder.

        lora: "auto" = the LoRA the folder ships with (pusa-tiny's VTA LoRA; none for a plain Wan folder),
        None = no LoRA (pusa-tiny's base T2V model), or a LoRA file. `acceleration`: see `from_pretrained`.
        """
        from .presets import PUSA_TINY_DIR, resolve_model

        resolved = resolve_model(model, lora)  # the device is checked by from_preset / from_pretrained
        if resolved == "tiny-random":
            return cls.from_preset("tiny-random", device=device, dtype=dtype, **acceleration)
        pipe = cls.from_pretrained(resolved, lora=lora, device=device, dtype=dtype, **acceleration)
        if Path(resolved) == PUSA_TINY_DIR:
            pipe.identity = "pusa-tiny" + ("" if pipe.lora is not None else " (base, no LoRA)")
        return pipe

    @classmethod
    def from_preset(
        cls,
        name: str = "tiny-random",
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **acceleration: Any,
    ) -> PusaPipeline:
        """A built-in model; `acceleration` takes `memory`, `attention`, `compile`, `fp8` (see `from_pretrained`).

        "pusa-tiny" is the shipped demo model with its VTA LoRA; "tiny-random" a seeded random model of the
        same structure (`seed` picks it)."""
        from .acceleration import prepare_for_device
        from .presets import PRESETS, check_device, tiny_random_components

        check_device(device)
        if name == "pusa-tiny":
            return cls.from_model("pusa-tiny", device=device, dtype=dtype, **acceleration)
        if name != "tiny-random":
            raise ValueError(f"model={name!r} is not a built-in model; available: {', '.join(PRESETS)}")
        components = tiny_random_components(seed)
        if dtype != torch.float32:
            components["transformer"].to(dtype)
            components["text_encoder"].to(dtype)
        report = prepare_for_device(components, device, compute_dtype=dtype, **acceleration)
        pipe = cls(**components, device=device, dtype=dtype)
        pipe.acceleration = report
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        lora: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        defaults: ModelDefaults | None = None,
        memory: str = "auto",
        attention: str = "auto",
        compile: bool = False,
        fp8: bool = False,
    ) -> PusaPipeline:
        """Real weights from a local folder (diffusers layout or Wan's original layout), offline.

        lora: a LoRA file, None, or "auto" (the one named by the folder's `pusa_model.json`, if any);
        defaults: native clip settings (default: the folder's `pusa_model.json`, else Wan2.1's);
        memory: "full" | "balanced" (24 GB cards) | "low" (12 GB) | "auto" (from free VRAM);
        attention: a diffusers attention backend or "auto" (the fastest fused kernel that works);
        compile: torch.compile the repeated blocks; fp8: store the DiT weights in float8.
        """
        from .acceleration import prepare_for_device, validate_attention_backend, validate_memory_tier
        from .loading import LoraFuser, load_components, load_lora
        from .presets import check_device, folder_defaults, folder_lora

        # Names are checked before a 14B load, not after.
        check_device(device)
        validate_memory_tier(memory, allow_auto=True)
        validate_attention_backend(attention)
        if defaults is None:
            defaults = folder_defaults(model_dir)
        if isinstance(lora, str) and lora == "auto":
            lora = folder_lora(model_dir)
        load_device = device if memory == "full" else "cpu"  # other tiers place the weights themselves
        # The VAE stays in float32: its decode is a small share of the time and bf16 bands the colors.
        components = load_components(model_dir, dtype=dtype, device=load_device, vae_dtype=torch.float32)
        # The fuser copies the pristine weights before fp8 could round them.
        fuser = LoraFuser(components.transformer, load_lora(lora)) if lora is not None else None
        report = prepare_for_device(
            components,
            device,
            memory=memory,
            attention=attention,
            fp8=fp8,
            compile=compile,
            compute_dtype=dtype,
            attention_tokens=native_tokens(components.transformer, components.vae, defaults),
        )
        pipe = cls(
            components.transformer,
            components.vae,
            components.text_encoder,
            components.tokenizer,
            lora=fuser,
            identity=components.identity,
            defaults=defaults,
            device=device,
            dtype=dtype,
        )
        pipe.acceleration = report
        return pipe

    # ---------------------------------------------------------------- model facts
    @property
    def vae_scale(self) -> tuple[int, int]:
        """(temporal, spatial) compression of the VAE."""
        return vae_compression(self.vae)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale[1] * self.transformer.config.patch_size[1]

    @property
    def max_side(self) -> int:
        return min(MAX_SIDE, self.transformer.config.rope_max_seq_len * self.size_multiple)

    @property
    def max_frames(self) -> int:
        return 4 * (self.transformer.config.rope_max_seq_len - 1) + 1

    def num_latent_frames(self, num_frames: int | None = None) -> int:
        return num_latent_frames(num_frames or self.defaults.num_frames)

    # ---------------------------------------------------------------- tasks
    def text_to_video(self, prompt: str, **common: Any) -> PusaOutput:
        return self._submit(task="t2v", prompt=prompt, **common)

    def image_to_video(
        self, image: Media, prompt: str, noise_multiplier: float = DEFAULT_I2V_NOISE_MULTIPLIER, **common: Any
    ) -> PusaOutput:
        """The image becomes latent frame 0, noised by `noise_multiplier` (0 = kept exactly)."""
        return self._submit(
            task="i2v",
            prompt=prompt,
            images=[image],
            positions=[0],
            noise_multipliers=[noise_multiplier],
            **common,
        )

    def frames_to_video(
        self,
        images: Sequence[Media],
        prompt: str,
        positions: Sequence[int] | None = None,
        noise_multipliers: Sequence[float] | None = None,
        **common: Any,
    ) -> PusaOutput:
        """Start/end frames or keyframes: image j goes to latent frame `positions[j]`.

        Defaults: images spread evenly from the first to the last latent frame; multiplier 0.2 for the
        first and 0.5 for the rest (the original demo's "0,20" / "0.2,0.5" at 81 frames).
        """
        images = list(images)
        num_latent = self.num_latent_frames(common.get("num_frames"))
        if positions is None:
            if len(images) > num_latent:
                raise ValueError(
                    f"images: {len(images)} given but the video has only {num_latent} latent frames"
                )
            positions = [round(j * (num_latent - 1) / max(len(images) - 1, 1)) for j in range(len(images))]
        if noise_multipliers is None:
            noise_multipliers = [0.2] + [0.5] * (len(positions) - 1) if positions else []
        return self._submit(
            task="frames",
            prompt=prompt,
            images=images,
            positions=list(positions),
            noise_multipliers=list(noise_multipliers),
            **common,
        )

    def video_to_video(
        self,
        video: Media,
        prompt: str,
        positions: Sequence[int],
        noise_multipliers: Sequence[float] | None = None,
        **common: Any,
    ) -> PusaOutput:
        """Latent frames `positions` of the source video condition the new one (multiplier default 0.2)."""
        if noise_multipliers is None:
            noise_multipliers = [DEFAULT_I2V_NOISE_MULTIPLIER] * len(positions)
        return self._submit(
            task="v2v",
            prompt=prompt,
            video=video,
            positions=list(positions),
            noise_multipliers=list(noise_multipliers),
            **common,
        )

    def extend_video(
        self,
        video: Media,
        prompt: str,
        noise_multipliers: Sequence[float] = (0.0, 0.3, 0.4, 0.5),
        from_end: bool = True,
        **common: Any,
    ) -> PusaOutput:
        """Continue a clip: its last (or, `from_end=False`, first) `4*len(noise_multipliers)-3` frames
        become the start of the new video (latent frames 0..k-1), the rest is generated."""
        context_latents = len(noise_multipliers)
        context_frames = 4 * (context_latents - 1) + 1
        frames = self._read_source(video, "video", common)
        if len(frames) < context_frames:
            raise ValueError(
                f"video has {len(frames)} frames; extension with {context_latents} context latents needs "
                f"at least {context_frames}"
            )
        clip = frames[-context_frames:] if from_end else frames[:context_frames]
        return self._recipe(
            "extension",
            clip,
            prompt,
            list(range(context_latents)),
            noise_multipliers,
            {"video": video},
            common,
        )

    def complete_video(
        self, video: Media, prompt: str, noise_multipliers: Sequence[float] = (0.3, 0.3), **common: Any
    ) -> PusaOutput:
        """Regenerate the middle of a clip from its first frame and its last 4 frames."""
        num_latent = self.num_latent_frames(common.get("num_frames"))
        frames = self._read_source(video, "video", common)
        return self._recipe(
            "completion", frames, prompt, [0, num_latent - 1], noise_multipliers, {"video": video}, common
        )

    def transition(
        self,
        start_video: Media,
        end_video: Media,
        prompt: str,
        noise_multipliers: Sequence[float] = (0.0, 0.3, 0.4, 0.4, 0.3, 0.0),
        **common: Any,
    ) -> PusaOutput:
        """Bridge two clips: the last 9 frames of `start_video` open the new video (latents 0,1,2) and the
        first 12 frames of `end_video` close it (the last 3 latents); the middle is generated."""
        num_frames = common.get("num_frames") or self.defaults.num_frames
        num_latent = self.num_latent_frames(num_frames)
        if num_latent < 7:
            raise ValueError(
                f"num_frames={num_frames} gives {num_latent} latent frames; a transition needs at least 7 "
                "(num_frames >= 25)"
            )
        start = self._read_source(start_video, "start_video", common)
        end = self._read_source(end_video, "end_video", common)
        for name, clip, need in (("start_video", start, 9), ("end_video", end, 12)):
            if len(clip) < need:
                raise ValueError(f"{name} has {len(clip)} frames; a transition needs at least {need}")
        head, tail = start[-9:].astype(np.float32), end[:12].astype(np.float32)
        # The middle is a cross-fade: the VAE is causal, so what sits before the end clip leaks a little
        # into its latents; a blend of the two clips leaks less than a blank.
        gap = num_frames - 21
        weights = np.linspace(0.0, 1.0, gap + 2, dtype=np.float32)[1:-1, None, None, None]
        middle = (1 - weights) * head[-1] + weights * tail[0]
        composite = np.concatenate([head, middle, tail]).round().astype(np.uint8)
        positions = [0, 1, 2, num_latent - 3, num_latent - 2, num_latent - 1]
        sources = {"start_video": start_video, "end_video": end_video}
        return self._recipe("transition", composite, prompt, positions, noise_multipliers, sources, common)

    def _submit(self, callback: Callable[[StepInfo], bool | None] | None = None, **fields: Any) -> PusaOutput:
        return self.generate(GenerationRequest(**fields), callback)

    def _read_source(self, video: Media, parameter: str, common: dict) -> np.ndarray:
        width = common.get("width") or self.defaults.width
        height = common.get("height") or self.defaults.height
        self._check_size(width, height)
        frames, _ = read_video(video, parameter=parameter)
        return fit_video(frames, width, height)

    def _recipe(self, recipe, frames, prompt, positions, noise_multipliers, sources, common) -> PusaOutput:
        return self._submit(
            task="v2v",
            prompt=prompt,
            video=frames,
            positions=list(positions),
            noise_multipliers=list(noise_multipliers),
            recipe=recipe,
            sources={k: _describe_source(v) for k, v in sources.items()},
            **common,
        )

    # ---------------------------------------------------------------- validation
    def _check_size(self, width: Any, height: Any) -> None:
        multiple, limit = self.size_multiple, self.max_side
        for name, value in (("width", width), ("height", height)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value % multiple
                or not multiple <= value <= limit
            ):
                raise ValueError(
                    f"{name}={value!r} is not allowed; {name} must be a multiple of {multiple} "
                    f"between {multiple} and {limit} pixels for this model"
                )

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Fill the model defaults and a random seed into `None` fields."""
        d = self.defaults
        return replace(
            request,
            num_inference_steps=request.num_inference_steps
            if request.num_inference_steps is not None
            else d.num_inference_steps,
            num_frames=request.num_frames if request.num_frames is not None else d.num_frames,
            width=request.width if request.width is not None else d.width,
            height=request.height if request.height is not None else d.height,
            fps=request.fps if request.fps is not None else d.fps,
            lora_alpha=request.lora_alpha if request.lora_alpha is not None else d.lora_alpha,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
        )

    def check_inputs(self, request: GenerationRequest) -> None:
        """Raise ValueError naming the parameter, the value and what is allowed. Expects a resolved request."""
        r = request
        if r.task not in TASKS:
            raise ValueError(f"task={r.task!r} is not a task; choose one of {', '.join(TASKS)}")
        if not isinstance(r.prompt, str):
            raise ValueError(f"prompt={r.prompt!r} must be text")
        if not isinstance(r.negative_prompt, str):
            raise ValueError(f"negative_prompt={r.negative_prompt!r} must be text")
        if (
            isinstance(r.num_frames, bool)
            or not isinstance(r.num_frames, int)
            or r.num_frames < 1
            or (r.num_frames - 1) % 4
        ):
            raise ValueError(
                f"num_frames={r.num_frames!r} is not allowed; num_frames must be 4k+1 (e.g. 17, 33, 49, 81), "
                f"at most {self.max_frames}"
            )
        if r.num_frames > self.max_frames:
            raise ValueError(
                f"num_frames={r.num_frames} is not allowed; this model takes at most {self.max_frames}"
            )
        self._check_size(r.width, r.height)
        _check_range("num_inference_steps", r.num_inference_steps, *STEPS_RANGE, integer=True)
        _check_range("lora_alpha", r.lora_alpha, *LORA_ALPHA_RANGE)
        _check_range("cfg", r.cfg, *CFG_RANGE)
        _check_range("shift", r.shift, *SHIFT_RANGE)
        _check_range("fps", r.fps, *FPS_RANGE)
        _check_range("seed", r.seed, 0, MAX_SEED, integer=True)
        num_latent = num_latent_frames(r.num_frames)
        if r.task == "t2v" and (r.positions or r.images or r.video is not None):
            raise ValueError(
                f"positions={list(r.positions)}, images: {len(r.images)}, video: {r.video is not None}; "
                "text-to-video takes no images, video or positions; use i2v, frames or v2v"
            )
        if r.task in ("i2v", "frames"):
            if len(r.images) == 0 or any(image is None for image in r.images):
                raise ValueError(f"images: none given; task {r.task!r} needs an image for every position")
            if r.task == "i2v" and len(r.images) != 1:
                raise ValueError(f"images: {len(r.images)} given; image-to-video takes exactly one image")
            if len(r.images) != len(r.positions):
                raise ValueError(
                    f"positions={list(r.positions)} has {len(r.positions)} values for {len(r.images)} images; "
                    "give one position per image"
                )
        if r.task == "v2v":
            if r.video is None:
                raise ValueError("video: none given; video-to-video needs a source video")
            if len(r.positions) == 0:
                raise ValueError(
                    "positions: none given; video-to-video needs the latent frames to keep, e.g. 0,1,2,3"
                )
        validate_positions(list(r.positions), list(r.noise_multipliers), num_latent)

    # ---------------------------------------------------------------- encoders
    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """umT5 embeddings `[1, L_max, text_dim]`; padding positions are zero, as Wan was trained."""
        max_length = self.defaults.max_sequence_length
        key = (prompt, max_length)
        if key not in self._text_cache:
            tokens = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=max_length,
                truncation=True,
                add_special_tokens=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            ids = tokens.input_ids.to(self.device)
            mask = tokens.attention_mask.to(self.device)
            hidden = self.text_encoder(ids, attention_mask=mask).last_hidden_state
            embeddings = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(self.dtype)
            if len(self._text_cache) >= 16:
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[key] = embeddings
        return self._text_cache[key]

    def _latents_mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape)
        std = torch.tensor(config.latents_std, dtype=torch.float32).view(shape)
        return mean.to(self.device), std.to(self.device)

    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """`[F, H, W, 3]` uint8 (F = 4k+1) -> normalized latents `[1, 16, k+1, H/8, W/8]` (float32)."""
        pixels = torch.from_numpy(np.array(frames, dtype=np.uint8, copy=True)).to(self.device)
        pixels = pixels.permute(3, 0, 1, 2).unsqueeze(0).to(self.vae.dtype) / 127.5 - 1.0  # [1, 3, F, H, W]
        latents = self.vae.encode(pixels).latent_dist.mode().float()
        mean, std = self._latents_mean_std()
        return (latents - mean) / std

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Normalized latents `[1, 16, F_lat, h, w]` -> `[F, H, W, 3]` uint8."""
        mean, std = self._latents_mean_std()
        pixels = self.vae.decode((latents.float() * std + mean).to(self.vae.dtype)).sample  # [1, 3, F, H, W]
        pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels[0].permute(1, 2, 3, 0).cpu().numpy()

    def conditioning_for(self, request: GenerationRequest) -> Conditioning:
        """Clean latents for the request's positions: each image alone as a one-frame video; a video encoded
        once (only its first `4*max(k)+1` frames: the VAE is causal, so later frames cannot change them)."""
        r = request
        if not r.positions:
            return Conditioning.none()
        if r.task in ("i2v", "frames"):
            latents = [
                self.encode_frames(
                    fit_image(
                        load_image(image, "images" if r.task == "frames" else "image"), r.width, r.height
                    )[None]
                )
                for image in r.images
            ]
            return Conditioning(
                tuple(r.positions), tuple(float(m) for m in r.noise_multipliers), torch.cat(latents, dim=2)
            )
        needed = 4 * max(r.positions) + 1
        frames, _ = read_video(r.video, parameter="video")
        if len(frames) < needed:
            raise ValueError(
                f"video has {len(frames)} frames; positions={list(r.positions)} reach latent frame "
                f"{max(r.positions)}, which needs at least {needed} frames (4*{max(r.positions)}+1)"
            )
        latents = self.encode_frames(fit_video(frames[:needed], r.width, r.height))
        index = torch.tensor(list(r.positions), device=latents.device)
        return Conditioning(
            tuple(r.positions), tuple(float(m) for m in r.noise_multipliers), latents.index_select(2, index)
        )

    # ---------------------------------------------------------------- the shared core
    def settings_of(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON record of a resolved request: enough to reproduce the video."""
        record = asdict(replace(request, images=(), video=None))
        record["positions"] = list(request.positions)
        record["noise_multipliers"] = [float(m) for m in request.noise_multipliers]
        record["images"] = []
        if request.task in ("i2v", "frames"):
            record["images"] = [_describe_source(image) for image in request.images]
        if request.task == "v2v" and not request.sources:
            record["sources"] = {"video": _describe_source(request.video)}
        record["model"] = self.identity
        record["lora"] = getattr(getattr(self.lora, "lora", None), "source", None)
        record["pusa_version"] = __version__
        # fp8 weights and the attention kernel change the numbers, so they belong to the record
        record["acceleration"] = {k: v for k, v in self.acceleration.items() if k != "placement"}
        return record

    def generate(
        self, request: GenerationRequest, callback: Callable[[StepInfo], bool | None] | None = None
    ) -> PusaOutput:
        """Run one request. `callback(StepInfo)` after every step; returning False cancels (`Cancelled`)."""
        started = time.perf_counter()
        request = self.resolve(request)
        self.check_inputs(request)
        conditioning = self.conditioning_for(request)
        if self.lora is not None and self.lora.alpha != request.lora_alpha:
            self.lora.set_alpha(request.lora_alpha)

        text = self.encode_prompt(request.prompt)
        negative_text = self.encode_prompt(request.negative_prompt) if request.cfg != 1.0 else None

        _, spatial = self.vae_scale
        shape = (1, self.vae.config.z_dim, num_latent_frames(request.num_frames),
                 request.height // spatial, request.width // spatial)  # fmt: skip
        # Drawn on the CPU so a seed gives the same video on every device.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

        def velocity(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.transformer(x.to(self.dtype), timestep, context, return_dict=False)[0]

        sigmas = flow_sigmas(request.num_inference_steps, request.shift)
        with torch.inference_mode():
            latents = sample(
                velocity, noise, sigmas, conditioning, text, negative_text, request.cfg, callback
            )
        frames = self.decode_latents(latents)

        settings = self.settings_of(request)
        settings["elapsed_s"] = round(time.perf_counter() - started, 3)
        return PusaOutput(frames=frames, settings=settings)
