"""`PusaPipeline`: validate -> encode text / images / video -> condition -> sample -> decode -> record.

The class holds the models and the state a run needs (the text cache, the LoRA fusers, the counters);
its other faces live beside it, one concern a module: the constructors (`loading`), the LoRA stacks
(`lora`), the task methods (`tasks`), long videos (`long`) and the record (`record`). Every parameter
that shapes the result is recorded in `PusaOutput.settings`, which is written beside the mp4 (JSON
sidecar) and inside it. The numerics are the ones `docs/algorithm.md` states.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .. import __version__, recipes
from ..caching import step_cache
from ..conditioning import Conditioning
from ..experts import ALL, EXPERTS, LOW, expert_for, expert_plan
from ..lora_specs import LoraSpec, parse_loras
from ..params import InputError
from ..request import (
    WAN_DEFAULTS,
    GenerationRequest,
    Media,
    ModelDefaults,
    ModelLimits,
    advisories,
    validate,
    video_plan,
)
from ..runtime.placement import ExpertSwitch, Placement
from ..sampling import StepCallback, sample
from ..schedule import flow_sigmas
from ..video import fit_image, fit_video, load_image, read_video
from ..weights.stack import file_sha256
from .loading import LoaderMixin, vae_compression
from .long import LongVideoMixin
from .lora import LoraStackMixin, check_lora_mode
from .record import CounterSnapshot, PusaOutput, SamplingRun, request_record
from .tasks import TaskMixin

__all__ = ["PusaPipeline"]


class PusaPipeline(LoaderMixin, LoraStackMixin, TaskMixin, LongVideoMixin):
    """Pusa V1 (Wan2.1 DiT with per-frame timesteps) for every task.

    Build it from components (`PusaPipeline(transformer, vae, text_encoder, tokenizer)`), from what
    `--model` names (`PusaPipeline.from_model("pusa-tiny")`), a local folder
    (`PusaPipeline.from_pretrained(dir, lora=file)`) or a built-in model (`from_builtin("tiny-random")`).
    """

    def __init__(
        self,
        transformer: Any,  # PusaTransformer3DModel (diffusers' config attributes are untyped)
        vae: Any,  # AutoencoderKLWan
        text_encoder: nn.Module | None,  # None: handed text embeddings (a parallel follower rank)
        tokenizer: Any,
        lora: Any = None,
        identity: str = "custom",
        defaults: ModelDefaults = WAN_DEFAULTS,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        transformer_2: Any = None,
        lora_mode: str = "fuse",
        text_vae_device: str | torch.device | None = None,
    ) -> None:
        check_lora_mode(lora_mode)
        # "fuse": each DiT's stack fused into its weights (`weights.stack.StackFuser`); "adapter": unfused
        # PEFT adapters (`weights.stack.AdapterStack`), the weights never written
        self.lora_mode = lora_mode
        self.transformer = transformer  # the only DiT, or a two-expert model's high-noise expert
        self.transformer_2 = transformer_2  # the low-noise expert of a two-expert model (Wan2.2), or None
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        # the model's own LoRA stack (lora_specs.LoraSpec, or a file for one LoRA at lora_alpha), or None
        self.lora: tuple[LoraSpec, ...] | None = (
            (parse_loras([str(lora)] if isinstance(lora, (str, Path)) else lora) or None) if lora else None
        )
        self.fusers: dict[str, Any] = {}  # expert ("all" for one DiT) -> StackFuser / AdapterStack
        self.dit_forwards = 0  # DiT forward passes so far (benchmarks count them)
        self.fused_loras: tuple[LoraSpec, ...] = ()  # the stack `apply_loras` fused last, strengths filled
        self.identity = identity
        self.defaults = defaults
        self.device = torch.device(device)
        # where the text encoder and VAE run (default: the DiT's device); tensors cross between the two
        self.text_vae_device = self.device if text_vae_device is None else torch.device(text_vae_device)
        self.dtype = dtype
        self._text_cache: dict[tuple[str, int], torch.Tensor] = {}
        self.sampling_runs: list[SamplingRun] = []  # each sampling run's record (`sample_latents`)
        # what the placement did (memory tier, attention, ...): JSON, the record's "acceleration"
        self.acceleration: dict[str, Any] = {}
        # moves a two-expert model's experts at the boundary (`runtime.placement`), or None
        self.expert_switch: ExpertSwitch | None = None
        # pusa.parallel sets it: wrapper(velocities, text, negative_text, cfg) -> the velocities `sample`
        # calls; both are {DiT name: velocity} ("all" for one DiT, "high"/"low" for two experts)
        self.velocity_wrapper: Callable[..., Any] | None = None

    def adopt_placement(self, placement: Placement) -> None:
        """Take what `runtime.placement.place_model` did: its report and its expert switch."""
        self.acceleration = placement.report
        self.expert_switch = placement.expert_switch

    # ---------------------------------------------------------------- model facts
    @property
    def vae_scale(self) -> tuple[int, int]:
        """(temporal, spatial) compression of the VAE."""
        return vae_compression(self.vae)

    @property
    def limits(self) -> ModelLimits:
        """What this model takes (sizes, frames) and its own defaults: what `validate` checks against."""
        config = self.transformer.config
        return ModelLimits.of(
            config.patch_size, self.vae_scale[1], config.rope_max_seq_len, self.defaults, self.num_experts
        )

    @property
    def num_experts(self) -> int:
        """1, or 2 for a two-expert model (Wan2.2: high-noise `transformer`, low-noise `transformer_2`)."""
        return 1 if self.transformer_2 is None else 2

    def expert_model(self, expert: str) -> nn.Module:
        """The DiT of `expert` ("high" / "low"; a one-expert model has one for both)."""
        return self.transformer_2 if expert == LOW and self.transformer_2 is not None else self.transformer

    def num_latent_frames(self, num_frames: int | None = None) -> int:
        return recipes.num_latent_frames(num_frames or self.defaults.num_frames)

    # ---------------------------------------------------------------- encoders
    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """umT5 embeddings `[1, L_max, text_dim]`; padding positions are zero, as Wan was trained."""
        max_length = self.defaults.max_sequence_length
        key = (prompt, max_length)
        if key not in self._text_cache:
            tokens = self.tokenizer(
                [prompt], padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                return_attention_mask=True, return_tensors="pt",
            )  # fmt: skip
            ids = tokens.input_ids.to(self.text_vae_device)
            mask = tokens.attention_mask.to(self.text_vae_device)
            if self.text_encoder is None:
                raise RuntimeError(
                    "this pipeline was loaded without its text encoder (load_text_encoder=False): it runs "
                    "on text embeddings it is handed and cannot encode a prompt"
                )
            hidden = self.text_encoder(ids, attention_mask=mask).last_hidden_state
            embeddings = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(self.device, self.dtype)
            if len(self._text_cache) >= 16:
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[key] = embeddings
        return self._text_cache[key]

    def _latents_mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent statistics, on the VAE's device."""
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape)
        std = torch.tensor(config.latents_std, dtype=torch.float32).view(shape)
        return mean.to(self.text_vae_device), std.to(self.text_vae_device)

    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """`[F, H, W, 3]` uint8 (F = 4k+1) -> normalized latents `[1, 16, k+1, H/8, W/8]` (float32)."""
        pixels = torch.from_numpy(np.array(frames, dtype=np.uint8, copy=True)).to(self.text_vae_device)
        pixels = pixels.permute(3, 0, 1, 2).unsqueeze(0).to(self.vae.dtype) / 127.5 - 1.0  # [1, 3, F, H, W]
        latents = self.vae.encode(pixels).latent_dist.mode().float()
        mean, std = self._latents_mean_std()
        return ((latents - mean) / std).to(self.device)  # to the DiT's device

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Normalized latents `[1, 16, F_lat, h, w]` -> `[F, H, W, 3]` uint8."""
        mean, std = self._latents_mean_std()
        latents = latents.to(self.text_vae_device).float()  # from the DiT's device
        pixels = self.vae.decode((latents * std + mean).to(self.vae.dtype)).sample  # [1, 3, F, H, W]
        pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels[0].permute(1, 2, 3, 0).cpu().numpy()

    def conditioning_for(self, request: GenerationRequest) -> Conditioning:
        """Clean latents for a validated request's positions: each image alone as a one-frame video; a
        video's conditioning clip (`recipes.RecipePlan.conditioning_clip`) encoded once, up to its last
        conditioned latent (the VAE is causal, so later frames cannot change them)."""
        r = request
        if not r.positions:
            return Conditioning.none()
        width, height = cast(int, r.width), cast(int, r.height)  # resolved
        multipliers = tuple(float(m) for m in r.noise_multipliers)
        if r.task in ("i2v", "frames"):
            parameter = "images" if r.task == "frames" else "image"
            latents = [
                self.encode_frames(fit_image(load_image(image, parameter), width, height)[None])
                for image in r.images
            ]
            return Conditioning(tuple(r.positions), multipliers, torch.cat(latents, dim=2))
        video, _ = read_video(cast(Media, r.video), parameter="video")
        end = read_video(r.end_video, parameter="end_video")[0] if r.end_video is not None else None
        plan = video_plan(r, len(video), None if end is None else len(end))
        sources = {"video": video} if end is None else {"video": video, "end_video": end}
        # Only the frames the plan uses are fitted to the output size; the rest stay black (unused).
        fitted = {
            name: np.zeros((len(frames), height, width, 3), np.uint8) for name, frames in sources.items()
        }
        for span in plan.spans:
            clip = sources[span.source][span.start : span.stop]
            fitted[span.source][span.start : span.stop] = fit_video(clip, width, height)
        clip_latents = self.encode_frames(plan.conditioning_clip(fitted))
        index = torch.tensor(list(plan.positions), device=clip_latents.device)
        return Conditioning(tuple(plan.positions), multipliers, clip_latents.index_select(2, index))

    # ---------------------------------------------------------------- the shared core
    def generate(self, request: GenerationRequest, callback: StepCallback | None = None) -> PusaOutput:
        """Run one request. `callback(StepInfo)` after every step; returning False cancels (`Cancelled`)."""
        started = time.perf_counter()
        request = validate(request, self.limits)
        before = self.snapshot()
        if request.task == "long":
            return self.generate_long(request, callback, started, before)
        conditioning = self.conditioning_for(request)
        latents = self.sample_latents(request, conditioning, callback)
        return self.output_of(request, self.decode_latents(latents), started, before)

    def snapshot(self) -> CounterSnapshot:
        """DiT forwards, sampling runs and expert swaps so far: `output_of` records what a request added."""
        switch = self.expert_switch
        del self.sampling_runs[: max(0, len(self.sampling_runs) - 64)]  # only the current request's are read
        swaps = (switch.swaps, switch.seconds) if switch is not None else None
        return CounterSnapshot(self.dit_forwards, len(self.sampling_runs), swaps)

    def sample_latents(
        self, request: GenerationRequest, conditioning: Conditioning, callback: StepCallback | None = None
    ) -> torch.Tensor:
        """The clean latents `[1, C, F_lat, h, w]` of a validated request (its `num_frames`, `seed`)."""
        # the fields `validate` resolved (typed as optional on the request)
        steps, seed = cast(int, request.num_inference_steps), cast(int, request.seed)
        width, height, num_frames = (
            cast(int, request.width),
            cast(int, request.height),
            cast(int, request.num_frames),
        )
        boundary = cast(float, request.boundary)
        self.apply_loras(self.lora_stack(request), cast(float, request.lora_alpha))

        text = self.encode_prompt(request.prompt)
        negative_text = self.encode_prompt(request.negative_prompt) if request.cfg != 1.0 else None

        _, spatial = self.vae_scale
        shape = (
            1,
            self.vae.config.z_dim,
            recipes.num_latent_frames(num_frames),
            height // spatial,
            width // spatial,
        )
        # Drawn on the CPU so a seed gives the same video on every device.
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

        def velocity_of(model: nn.Module) -> Callable[..., torch.Tensor]:
            def velocity(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                self.dit_forwards += 1
                return model(x.to(self.dtype), timestep, context, return_dict=False)[0]

            return velocity

        sigmas = flow_sigmas(steps, request.shift)
        parallel = self.velocity_wrapper is not None
        if request.cache != "off" and (parallel or self.transformer_2 is not None):
            # other ranks would run the blocks rank 0 skips; a second expert has no residual to reuse
            raise InputError(
                "cache", request.cache,
                "turn it off for a pipeline split over several processes or a two-expert model",
                "runs on one process and one DiT only",
            )  # fmt: skip
        # CFG batching makes one call of the two passes, which the ranks split their own way
        cfg_batch = bool(self.acceleration.get("cfg_batch", False)) and not parallel
        # the velocity of each DiT: {"all": ...} for one, {"high": ..., "low": ...} for a two-expert model
        names = [ALL] if self.transformer_2 is None else list(EXPERTS)
        velocities = {name: velocity_of(self.expert_model(name)) for name in names}
        if self.velocity_wrapper is not None:  # several ranks share each DiT call (pusa.parallel)
            velocities = self.velocity_wrapper(velocities, text, negative_text, request.cfg)
        main_velocity = velocities[names[0]]
        cache = step_cache(request.cache, request.cache_threshold, steps)
        if cache is not None:  # the transformer runs its blocks through the cache for this run only
            main_velocity = cache.wrap(main_velocity)
            self.transformer.block_runner = cache
        switch = self.expert_switch

        def chooser(step: int, timestep: float) -> Callable[..., torch.Tensor]:
            name = expert_for(timestep, boundary)
            if switch is not None:
                switch.activate(name)  # the other expert back to pinned CPU memory (or freed)
            return velocities[name]

        try:
            with torch.inference_mode():
                latents = sample(
                    main_velocity, noise, sigmas, conditioning, text, negative_text, request.cfg, callback,
                    velocity_for_step=chooser if self.transformer_2 is not None else None, cfg_batch=cfg_batch,
                )  # fmt: skip
        finally:
            if cache is not None:
                self.transformer.block_runner = None
        # what this sampling run did, for the record (`output_of`; a long video has one run per chunk)
        self.sampling_runs.append(SamplingRun(cfg_batch, cache.report() if cache is not None else None))
        return latents

    # ---------------------------------------------------------------- the record
    def settings_of(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON record of a resolved request: enough to reproduce the video."""
        record = request_record(request)
        record["model"] = self.identity
        stack = self.lora_stack(request)
        record["lora_stack"] = [
            {
                "path": str(Path(spec.path).expanduser().resolve()),
                "sha256": file_sha256(spec.path),
                "strength": request.lora_alpha if spec.strength is None else spec.strength,
                "expert": spec.expert,
            }
            for spec in stack
        ]
        record["lora"] = stack[0].path if stack else None
        record["lora_mode"] = self.lora_mode
        record["experts"] = self.num_experts
        record["pusa_version"] = __version__
        # fp8 weights and the attention kernel change the numbers, so they belong to the record
        record["acceleration"] = {k: v for k, v in self.acceleration.items() if k != "placement"}
        return record

    def output_of(
        self,
        request: GenerationRequest,
        frames: np.ndarray,
        started: float,
        before: CounterSnapshot | None = None,
    ) -> PusaOutput:
        """The frames with their settings (the sidecar); `before` (`snapshot()` when the request began)
        gives the DiT forwards and expert swaps it made."""
        before = before if before is not None else self.snapshot()
        settings = self.settings_of(request)
        plan = None
        if self.transformer_2 is not None:  # the experts of one sampling run (each chunk's, for long)
            sigmas = flow_sigmas(cast(int, request.num_inference_steps), request.shift)
            plan = expert_plan(sigmas.tolist(), cast(float, request.boundary))
        settings["expert_steps"] = plan  # None for a one-expert model
        settings["dit_forwards"] = self.dit_forwards - before.dit_forwards
        switch = self.expert_switch
        if before.swaps is not None and switch is not None:
            settings["expert_swaps"] = {
                "swaps": switch.swaps - before.swaps[0], "seconds": round(switch.seconds - before.swaps[1], 4)
            }  # fmt: skip
        settings["warnings"] = [str(note) for note in advisories(request, self.defaults)]
        runs = self.sampling_runs[before.runs :]
        if "cfg_batch" in settings["acceleration"] and runs:
            settings["acceleration"]["cfg_batch"] = runs[-1].cfg_batch  # what ran
        reports = [run.step_cache for run in runs if run.step_cache is not None]
        if reports:  # one sampling run: its report; a long video: one per chunk
            settings["step_cache"] = reports[0] if len(runs) == 1 else reports
        settings["elapsed_s"] = round(time.perf_counter() - started, 3)
        return PusaOutput(frames=frames, settings=settings)
