"""`PusaPipeline`: validate -> encode text / images / video -> condition -> sample -> decode -> save.

One shared core (`generate`) and one method per task. Every parameter that shapes the result is
recorded in `PusaOutput.settings`, which is written beside the mp4 (JSON sidecar) and inside it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, recipes
from .caching import step_cache
from .conditioning import Conditioning
from .experts import ALL, EXPERTS, HIGH, LOW, expert_for, expert_plan
from .lora_specs import LoraSpec, check_stack, parse_loras
from .params import PARAMS, InputError
from .presets import preset_of
from .request import (
    WAN_DEFAULTS,
    GenerationRequest,
    Media,
    ModelDefaults,
    ModelLimits,
    advisories,
    first_chunk,
    listed,
    long_plan,
    validate,
    video_plan,
)
from .sampling import StepInfo, sample
from .schedule import flow_sigmas
from .video import fit_image, fit_video, load_image, read_video, write_video

__all__ = ["LORA_MODES", "ChunkStepInfo", "GenerationRequest", "PusaOutput", "PusaPipeline"]

LORA_MODES = ("fuse", "adapter")  # how a LoRA stack reaches a DiT: fused into its weights, or PEFT adapters


@dataclass(frozen=True)
class ChunkStepInfo(StepInfo):
    """A long video's step: `step`/`num_steps` count over every chunk (one progress bar), `chunk` of
    `num_chunks` (0-based) and `chunk_step` (0-based) of `chunk_steps` within it."""

    chunk: int = 0
    num_chunks: int = 1
    chunk_step: int = 0
    chunk_steps: int = 0

    def text(self) -> str:
        return f"chunk {self.chunk + 1}/{self.num_chunks}, step {self.chunk_step + 1}/{self.chunk_steps}"


def _chunk_progress(
    callback: Callable[[StepInfo], bool | None] | None, chunk: int, num_chunks: int
) -> Callable[[StepInfo], bool | None] | None:
    """A chunk's step callback as one over the whole chain."""
    if callback is None:
        return None

    def on_step(info: StepInfo) -> bool | None:
        return callback(
            ChunkStepInfo(
                chunk * info.num_steps + info.step, num_chunks * info.num_steps, info.sigma, info.latents,
                chunk, num_chunks, info.step, info.num_steps,
            )
        )  # fmt: skip

    return on_step


def match_colours(frames: np.ndarray, seen: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`frames` shifted per channel so that `seen` (its overlap frames) has the mean colour of `target`
    (the same frames as the video so far has them): a re-encoded chunk keeps the video's colours."""
    shift = target.reshape(-1, 3).astype(np.float64).mean(0) - seen.reshape(-1, 3).astype(np.float64).mean(0)
    return np.clip(frames.astype(np.float64) + shift, 0, 255).round().astype(np.uint8)


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


def vae_compression(vae: Any) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE, from its config."""
    return 2 ** sum(vae.config.temperal_downsample), 2 ** len(vae.config.temperal_downsample)


def native_tokens(transformer: Any, vae: Any, defaults: ModelDefaults) -> int:
    """DiT tokens of one clip at the model's native size: the sequence length attention runs at."""
    temporal, spatial = vae_compression(vae)
    p_t, p_h, p_w = transformer.config.patch_size
    frames = (defaults.num_frames - 1) // temporal + 1
    return (frames // p_t) * (defaults.height // spatial // p_h) * (defaults.width // spatial // p_w)


def _dit_only(components: Any) -> Any:
    """The components a memory tier places when the text encoder and VAE live on their own device."""
    if isinstance(components, dict):
        return {**components, "text_encoder": None, "vae": None}
    return replace(components, text_encoder=None, vae=None)


def _place_text_vae(components: Any, device: torch.device, report: dict[str, Any]) -> None:
    """`--text-vae-device`: the text encoder and VAE resident on `device` (the DiT's tier leaves them be)."""
    placement = report.setdefault("placement", {})
    for name in ("text_encoder", "vae"):
        module = components.get(name) if isinstance(components, dict) else getattr(components, name)
        if module is not None:
            module.to(device)
            placement[name] = f"resident on {device} (text_vae_device)"
    report["text_vae_device"] = str(device)


def _prepare(components: Any, device: str | torch.device, **options: Any) -> dict[str, Any]:
    """`runtime.prepare.prepare_for_device` for the model and, for a two-expert model, its low-noise expert:
    "auto" counts both experts; "swap" (or "auto" on a card that holds one expert but not two) keeps the
    active expert resident and the other in pinned CPU memory (`runtime.expert_swap`); the other tiers
    place both experts alike. The second expert's placement is the report's "transformer_2"."""
    from .runtime.prepare import prepare_for_device

    second = components.get("transformer_2") if isinstance(components, dict) else components.transformer_2
    if second is None:
        if options.get("memory") in ("swap", "stream"):
            raise ValueError(
                f"memory tier {options['memory']!r} is for two-expert models; this model has one DiT"
            )
        return prepare_for_device(components, device, **options)
    first = components["transformer"] if isinstance(components, dict) else components.transformer
    memory = options.get("memory", "auto")
    if memory == "auto":
        memory = _expert_tier(components, first, device)
    if memory == "stream":
        return _prepare_stream(components, first, second, device, **options)
    if options.pop("stream_inactive", False):
        return _prepare_offloaded_stream(components, first, second, device, **{**options, "memory": memory})
    if memory != "swap":
        report = prepare_for_device(components, device, **{**options, "memory": memory})
        expert = prepare_for_device({"transformer": second}, device, **{**options, "memory": memory})
        report["transformer_2"] = expert["placement"].get("transformer")
        return report
    from .runtime.expert_swap import ExpertSwap
    from .runtime.kernels import apply_attention_backend, compile_blocks, enable_fp8_weights

    if options.get("fp8"):  # before the host copies, so that float8 bytes cross the bus
        enable_fp8_weights(second, compute_dtype=options.get("compute_dtype") or second.dtype)
    swap = ExpertSwap({LOW: second}, device)  # the low-noise expert to pinned host memory first
    report = prepare_for_device(components, device, **{**options, "memory": "full"})
    apply_attention_backend(second, report["attention"], device, seq_len=options.get("attention_tokens"))
    if options.get("fp8_compute", "off") != "off":
        from .runtime.kernels import enable_fp8_compute

        enable_fp8_compute(second, options["fp8_compute"])
    if options.get("compile"):
        compile_blocks(second, **(options.get("compile_kwargs") or {}))
    swap.adopt(HIGH, first)  # resident now; swapped out when the sampler crosses the boundary
    report["memory_tier"] = "swap"
    report["transformer_2"] = "in pinned CPU memory, swapped with the high-noise expert at the boundary"
    report["expert_swap"] = swap
    return report


def _prepare_stream(components: Any, first: Any, second: Any, device: Any, **options: Any) -> dict[str, Any]:
    """The "stream" tier: the high-noise expert resident ("full"), the low-noise one not in memory."""
    from .runtime.expert_stream import ExpertStream
    from .runtime.kernels import apply_attention_backend, compile_blocks
    from .runtime.prepare import prepare_for_device

    if options.get("fp8"):
        raise ValueError("memory tier 'stream' does not take fp8: each expert is read again from its files")
    stream = ExpertStream({HIGH: first, LOW: second}, device, active=HIGH)  # frees the low-noise one
    report = prepare_for_device(components, device, **{**options, "memory": "full"})
    apply_attention_backend(second, report["attention"], device, seq_len=options.get("attention_tokens"))
    if options.get("compile"):
        compile_blocks(second, **(options.get("compile_kwargs") or {}))
    report["memory_tier"] = "stream"
    report["transformer_2"] = (
        "not in memory: read from its safetensors files at the boundary, the other freed"
    )
    report["expert_swap"] = stream
    return report


def _prepare_offloaded_stream(
    components: Any, first: Any, second: Any, device: Any, **options: Any
) -> dict[str, Any]:
    """ "balanced" / "low" with the inactive expert in no memory: the active expert offloaded as the tier
    does it; at the boundary it is freed (its offloading hooks removed) and the other read from its files,
    its LoRA stack fused, then offloaded the same way (`runtime.expert_stream.ExpertStream` with `place`)."""
    from .runtime.expert_stream import ExpertStream
    from .runtime.kernels import apply_attention_backend, compile_blocks
    from .runtime.memory import apply_memory_tier
    from .runtime.prepare import prepare_for_device

    if options.get("fp8"):
        raise ValueError(
            "a streamed inactive expert does not take fp8: each expert is read again from its files"
        )
    tier = options["memory"]
    report = prepare_for_device(
        components, device, **options
    )  # the high-noise expert offloaded, as the tier says

    def place(module: Any) -> None:
        apply_memory_tier({"transformer": module}, tier, device)

    stream = ExpertStream({HIGH: first, LOW: second}, device, active=HIGH, place=place)
    apply_attention_backend(second, report["attention"], device, seq_len=options.get("attention_tokens"))
    if options.get("compile"):
        compile_blocks(second, **(options.get("compile_kwargs") or {}))
    report["transformer_2"] = (
        f"not in memory: read from its safetensors files at the boundary and offloaded as {tier} does, the "
        "other freed"
    )
    report["expert_swap"] = stream
    return report


def _expert_plan(
    model_dir: str | Path,
    memory: str,
    device: Any,
    dtype: torch.dtype,
    host_bytes: int | None,
    streamable: bool,
) -> Any:
    """`runtime.memory.plan_expert_memory` for a two-expert folder, from its files' sizes, the device's
    free memory and the host RAM (`host_bytes`, else what is available now). fp8 (not `streamable`): the
    experts cannot be read again from their files, so nothing is streamed."""
    from .runtime.memory import available_host_bytes, free_device_bytes, plan_expert_memory
    from .weights.folders import folder_bytes

    sizes = folder_bytes(model_dir, dtype)
    host = available_host_bytes() if host_bytes is None else host_bytes
    plan = plan_expert_memory(
        memory, max(sizes["transformer"], sizes["transformer_2"]), sizes["text_encoder"], sizes["vae"],
        free_device_bytes(device), host,
    )  # fmt: skip
    if not streamable and plan.inactive_expert == "files" and memory in ("auto", "balanced", "low"):
        from dataclasses import replace as replaced

        tier = {"stream": "swap"}.get(plan.tier, plan.tier)
        plan = replaced(plan, tier=tier, stream_inactive=False,
                        reason=plan.reason + "; fp8: the experts cannot be read again from their files, so both stay pinned")  # fmt: skip
    return plan


def _expert_tier(components: Any, first: torch.nn.Module, device: str | torch.device) -> str:
    """The tier "auto" means for a two-expert model on `device` (both experts counted)."""
    from .runtime.expert_swap import choose_expert_tier
    from .runtime.memory import WORKING_BYTES, component_bytes, free_device_bytes, module_bytes

    free = free_device_bytes(device)
    if free is None:
        return "full"
    sizes = component_bytes(components)
    return choose_expert_tier(free, sizes, module_bytes(first), WORKING_BYTES)


class PusaPipeline:
    """Pusa V1 (Wan2.1 DiT with per-frame timesteps) for every task.

    Build it from components (`PusaPipeline(transformer, vae, text_encoder, tokenizer)`), from a local
    folder (`PusaPipeline.from_pretrained(dir, lora=file)`) or from a preset (`from_preset("tiny-random")`).
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module | None,  # None: handed text embeddings (a parallel follower rank)
        tokenizer: Any,
        lora: Any = None,
        identity: str = "custom",
        defaults: ModelDefaults = WAN_DEFAULTS,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        transformer_2: torch.nn.Module | None = None,
        lora_mode: str = "fuse",
        text_vae_device: str | torch.device | None = None,
    ) -> None:
        if lora_mode not in LORA_MODES:
            raise ValueError(f"lora_mode={lora_mode!r} is not allowed; choose one of {', '.join(LORA_MODES)}")
        # "fuse": each DiT's stack fused into its weights (`weights.stack.StackFuser`); "adapter": unfused
        # PEFT adapters (`weights.stack.AdapterStack`), the weights never written
        self.lora_mode = lora_mode
        self.transformer = transformer  # the only DiT, or a two-expert model's high-noise expert
        self.transformer_2 = transformer_2  # the low-noise expert of a two-expert model (Wan2.2), or None
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        # the model's own LoRA stack (lora_specs.LoraSpec, or a file for one LoRA at lora_alpha), or None
        self.lora = (
            (parse_loras([str(lora)] if isinstance(lora, (str, Path)) else lora) or None) if lora else None
        )
        self._fusers: dict[str, Any] = {}  # expert ("all" for one DiT) -> StackFuser / AdapterStack
        self.dit_forwards = 0  # DiT forward passes so far (benchmarks count them)
        self.fused_loras: tuple[LoraSpec, ...] = ()  # the stack `apply_loras` fused last, strengths filled
        self.identity = identity
        self.defaults = defaults
        self.device = torch.device(device)
        # where the text encoder and VAE run (default: the DiT's device); tensors cross between the two
        self.text_vae_device = self.device if text_vae_device is None else torch.device(text_vae_device)
        self.dtype = dtype
        self._text_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._runs: list[dict[str, Any]] = []  # each sampling run's record (`sample_latents`)
        self.acceleration: dict[str, Any] = {}  # what prepare_for_device did (memory tier, attention, ...)
        # pusa.parallel sets it: wrapper(velocities, text, negative_text, cfg) -> the velocities `sample`
        # calls; both are {DiT name: velocity} ("all" for one DiT, "high"/"low" for two experts)
        self.velocity_wrapper: Callable[..., Any] | None = None

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
        from .weights.registry import PUSA_TINY_DIR, resolve_model

        resolved = resolve_model(model, lora)  # the device is checked by from_preset / from_pretrained
        if resolved in ("tiny-random", "tiny-random-a14b"):
            return cls.from_preset(str(resolved), device=device, dtype=dtype, **acceleration)
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
        """A built-in model; `acceleration` takes `memory`, `attention`, `compile`, `fp8`, `cfg_batch`, `fp8_compute` (see
        `from_pretrained`).

        "pusa-tiny" is the shipped demo model with its VTA LoRA; "tiny-random" a seeded random model of the
        same structure (`seed` picks it); "tiny-random-a14b" a seeded random two-expert model (Wan2.2's
        structure: high- and low-noise DiTs sharing the VAE and text encoder)."""
        from .runtime.device import check_device
        from .weights.registry import PRESETS, tiny_random_a14b_components, tiny_random_components

        check_device(device)
        if name == "pusa-tiny":
            return cls.from_model("pusa-tiny", device=device, dtype=dtype, **acceleration)
        if name not in ("tiny-random", "tiny-random-a14b"):
            raise ValueError(f"model={name!r} is not a built-in model; available: {', '.join(PRESETS)}")
        if acceleration.get("memory") == "stream":
            raise ValueError(f"memory tier 'stream' reads the experts from a model folder's files; {name} is "
                             "built in memory (weights.wan_original.write_two_expert_folder writes it to one)")  # fmt: skip
        lora_mode = acceleration.pop("lora_mode", "fuse")
        load_text_encoder = acceleration.pop("load_text_encoder", True)
        text_vae_device = acceleration.pop("text_vae_device", None)
        if text_vae_device is not None:
            from .runtime.device import check_text_vae_device

            text_vae_device = check_text_vae_device(text_vae_device)
        build = tiny_random_components if name == "tiny-random" else tiny_random_a14b_components
        components = build(seed)
        if not load_text_encoder:
            components["text_encoder"] = None
        if dtype != torch.float32:
            for part in ("transformer", "transformer_2", "text_encoder"):
                if components.get(part) is not None:
                    components[part].to(dtype)
        placed = components if text_vae_device is None else _dit_only(components)
        report = _prepare(placed, device, compute_dtype=dtype, **acceleration)
        if text_vae_device is not None:
            _place_text_vae(components, text_vae_device, report)
        pipe = cls(
            **components, device=device, dtype=dtype, lora_mode=lora_mode, text_vae_device=text_vae_device
        )
        pipe.acceleration = report
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        lora: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        defaults: ModelDefaults | None = None,
        memory: str = "auto",
        attention: str = "auto",
        compile: bool = False,
        fp8: bool = False,
        cfg_batch: str = "auto",
        fp8_compute: str = "off",
        host_bytes: int | None = None,
        lora_mode: str = "fuse",
        load_text_encoder: bool = True,
        text_vae_device: str | torch.device | None = None,
    ) -> PusaPipeline:
        """Real weights from a local folder (diffusers layout or Wan's original layout), offline.

        lora: a LoRA file (at the request's lora_alpha), a stack (`lora_specs`: text or `LoraSpec`s), None, or
            "auto" (the stack named by the folder's `pusa_model.json`, if any);
        defaults: native clip settings (default: the folder's `pusa_model.json`, else Wan2.1's);
        memory: "full" | "balanced" (24 GB cards) | "low" (12 GB) | "auto" (from free VRAM);
        attention: a diffusers attention backend or "auto" (the fastest fused kernel that works);
        compile: torch.compile the repeated blocks; fp8: store the DiT weights in float8;
        cfg_batch: "auto" | "on" | "off": CFG's two passes as one batch of 2 (`runtime.prepare.resolve_cfg_batch`);
        fp8_compute: "off" | "rowwise" | "tensor": the DiT blocks' matrix products in float8 with those scales.
        host_bytes: two-expert folders: the host RAM the memory plan may use (None: what is available now);
            "auto" and "balanced"/"low" read the inactive expert from its files where pinning both would not
            fit (`runtime.memory.plan_expert_memory`; the record's acceleration says which and why).
        lora_mode: "fuse" (the stack fused into the weights) or "adapter" (unfused PEFT adapters: an expert
            read again from its files needs no re-fuse; full-tensor .diff LoRAs refused).
        load_text_encoder: False: no text encoder (umT5-XXL, 11 GB in bf16, not read): a pipeline that is
            handed the text embeddings, as a parallel group's follower ranks are (`pusa.parallel.launch`).
        text_vae_device: where the text encoder and the VAE run, resident, apart from the DiT (default: with
            it, placed by the memory tier): "cuda:1" with device "cuda:0" is the two-GPU set-up of Pusa's
            original demo (the DiT's GPU keeps its memory for the DiT; the memory tier counts the DiT only).
        """
        from .runtime.device import check_device
        from .runtime.kernels import check_attention_installed, validate_attention_backend
        from .runtime.memory import validate_memory_tier
        from .runtime.prepare import validate_cfg_batch, validate_fp8_compute
        from .weights.folders import load_components
        from .weights.registry import folder_defaults, folder_experts, folder_loras
        from .weights.stack import check_stack_fits_folder

        # Names are checked before a 14B load, not after.
        check_device(device)
        if text_vae_device is not None:
            from .runtime.device import check_text_vae_device

            text_vae_device = check_text_vae_device(text_vae_device)
        validate_memory_tier(memory, allow_auto=True)
        validate_attention_backend(attention)
        if attention != "auto":
            check_attention_installed(attention)  # a missing kernel package is said before a 14B load
        validate_cfg_batch(cfg_batch)
        validate_fp8_compute(fp8_compute)
        if defaults is None:
            defaults = folder_defaults(model_dir)
        if isinstance(lora, str) and lora == "auto":
            lora = folder_loras(model_dir)
        stack = parse_loras([str(lora)] if isinstance(lora, (str, Path)) else lora)
        check_stack(stack, 2 if folder_experts(model_dir) else 1, param="lora")
        check_stack_fits_folder(stack, model_dir, param="lora")  # headers only: before the DiT loads
        if memory == "stream" and not folder_experts(model_dir):
            raise ValueError("memory tier 'stream' is for two-expert models; this model has one DiT")
        plan = None
        if folder_experts(model_dir):  # decided from the files' sizes, before any weight is read
            plan = _expert_plan(model_dir, memory, device, dtype, host_bytes, streamable=not fp8)
            memory = plan.tier
        streamed = plan is not None and plan.inactive_expert == "files"
        # other tiers place the weights themselves; "stream" loads the high-noise expert resident; a streamed
        # inactive expert is not read until the boundary
        load_device = device if memory in ("full", "stream") else "cpu"
        # The VAE stays in float32: its decode is a small share of the time and bf16 bands the colors.
        components = load_components(model_dir, dtype=dtype, device=load_device, vae_dtype=torch.float32,
                                     read_transformer_2=not streamed, read_text_encoder=load_text_encoder,
                                     text_vae_device=text_vae_device)  # fmt: skip
        pipe = cls(
            components.transformer,
            components.vae,
            components.text_encoder,
            components.tokenizer,
            lora=stack or None,
            identity=components.identity,
            defaults=defaults,
            device=device,
            dtype=dtype,
            transformer_2=components.transformer_2,
            lora_mode=lora_mode,
            text_vae_device=text_vae_device,
        )
        # Fused before fp8 could round the pristine copies (the stack's strengths: the model's own alpha).
        pipe.apply_loras(stack, defaults.lora_alpha)
        report = _prepare(
            components if text_vae_device is None else _dit_only(components),
            device,
            memory=memory,
            attention=attention,
            fp8=fp8,
            compile=compile,
            compute_dtype=dtype,
            attention_tokens=native_tokens(components.transformer, components.vae, defaults),
            cfg_batch=cfg_batch,
            fp8_compute=fp8_compute,
            **({"stream_inactive": True} if plan is not None and plan.stream_inactive else {}),
        )
        if text_vae_device is not None:
            _place_text_vae(components, text_vae_device, report)
        if plan is not None:  # recorded: which tier, where the inactive expert lives, and why
            report.update(inactive_expert=plan.inactive_expert, memory_reason=plan.reason)
        pipe.acceleration = report
        if streamed:
            report["expert_swap"].on_load = pipe._expert_loaded
        return pipe

    def _expert_loaded(self, expert: str) -> None:
        """`runtime.expert_stream` loaded `expert` from its files: fuse its LoRA stack into it again."""
        fuser = self._fusers.get(expert)
        if fuser is not None:
            fuser.reloaded()

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

    def expert_model(self, expert: str) -> torch.nn.Module:
        """The DiT of `expert` ("high" / "low"; a one-expert model has one for both)."""
        return self.transformer_2 if expert == LOW and self.transformer_2 is not None else self.transformer

    # ---------------------------------------------------------------- LoRA stacks
    def lora_stack(self, request: GenerationRequest) -> tuple[LoraSpec, ...]:
        """What a resolved request fuses: its `loras` (else the model's own stack), then its preset's."""
        stack = parse_loras(request.loras) or (self.lora or ())
        if request.preset is not None:
            stack = (*stack, *parse_loras(preset_of(request.preset, self.defaults.presets).loras))
        return tuple(stack)

    def apply_loras(self, stack: Sequence[LoraSpec], lora_alpha: float) -> None:
        """Fuse `stack` into each DiT it targets (an entry without a strength at `lora_alpha`), from the
        pristine weights; an `InputError` naming `loras` and the file when a LoRA matches nothing."""
        from .weights.checkpoints import CheckpointError
        from .weights.stack import AdapterStack, StackFuser, load_lora_cached

        names = [ALL] if self.transformer_2 is None else list(EXPERTS)
        per_dit: dict[str, list] = {name: [] for name in names}
        # what is fused, strengths filled in: other ranks of a parallel group fuse the same (pusa.parallel)
        self.fused_loras = tuple(
            LoraSpec(spec.path, lora_alpha if spec.strength is None else spec.strength, spec.expert)
            for spec in stack
        )
        for spec in stack:
            try:
                weights = load_lora_cached(spec.path)
            except CheckpointError as error:
                raise InputError(
                    "loras", spec.path, "give a LoRA file in a known format", str(error)
                ) from None
            strength = lora_alpha if spec.strength is None else spec.strength
            for name in names:
                if spec.expert in (ALL, name):
                    per_dit[name].append((weights, strength))
        for name in names:
            if name not in self._fusers and not per_dit[name]:
                continue  # never touched: nothing to restore
            if name not in self._fusers:
                kind = AdapterStack if self.lora_mode == "adapter" else StackFuser
                self._fusers[name] = kind(self.expert_model(name))
            fuser = self._fusers[name]
            try:
                fuser.fuse(per_dit[name])
            except CheckpointError as error:
                raise InputError(
                    "loras", [w.source for w, _ in per_dit[name]],
                    f"each LoRA must fit the {'model' if name == ALL else name + '-noise expert'}'s DiT",
                    str(error),
                ) from None  # fmt: skip

    def num_latent_frames(self, num_frames: int | None = None) -> int:
        return recipes.num_latent_frames(num_frames or self.defaults.num_frames)

    # ---------------------------------------------------------------- tasks
    def text_to_video(self, prompt: str, **common: Any) -> PusaOutput:
        return self._submit(task="t2v", prompt=prompt, **common)

    def image_to_video(
        self,
        image: Media,
        prompt: str,
        noise_multiplier: float = PARAMS["noise_multiplier"].default,
        **common: Any,
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

        Defaults (`recipes.spread_positions`, `recipes.keyframe_multipliers`): images spread evenly from
        the first to the last latent frame; multiplier 0.2 for the first and 0.5 for the rest (the
        original demo's "0,20" / "0.2,0.5" at 81 frames).
        """
        images = listed("images", images)
        if positions is None:
            positions = recipes.spread_positions(
                len(images), common.get("num_frames") or self.defaults.num_frames
            )
        positions = listed("positions", positions)
        if noise_multipliers is None:
            noise_multipliers = recipes.keyframe_multipliers(len(positions))
        return self._submit(
            task="frames",
            prompt=prompt,
            images=images,
            positions=positions,
            noise_multipliers=listed("noise_multipliers", noise_multipliers),
            **common,
        )

    def video_to_video(
        self,
        video: Media,
        prompt: str,
        positions: Sequence[int] = (),
        noise_multipliers: Sequence[float] | None = None,
        recipe: str | None = None,
        end_video: Media | None = None,
        **common: Any,
    ) -> PusaOutput:
        """Latent frames `positions` of the source video condition the new one (multiplier default 0.2),
        or a recipe's (`recipes`: "extension", "completion", "transition" with `end_video`)."""
        return self._submit(
            task="v2v",
            prompt=prompt,
            video=video,
            end_video=end_video,
            positions=listed("positions", positions),
            noise_multipliers=listed(
                "noise_multipliers", () if noise_multipliers is None else noise_multipliers
            ),
            recipe=recipe,
            **common,
        )

    def extend_video(
        self, video: Media, prompt: str, noise_multipliers: Sequence[float] | None = None, **common: Any
    ) -> PusaOutput:
        """Continue a clip: its last `4*len(noise_multipliers)-3` frames (13 by default) become the start
        of the new video (latent frames 0..k-1), the rest is generated (`recipes.extension`)."""
        return self.video_to_video(video, prompt, (), noise_multipliers, recipe="extension", **common)

    def complete_video(
        self, video: Media, prompt: str, noise_multipliers: Sequence[float] | None = None, **common: Any
    ) -> PusaOutput:
        """Regenerate the middle of a clip from its first frame and its last 4 frames (`recipes.completion`)."""
        return self.video_to_video(video, prompt, (), noise_multipliers, recipe="completion", **common)

    def transition(
        self,
        start_video: Media,
        end_video: Media,
        prompt: str,
        noise_multipliers: Sequence[float] | None = None,
        **common: Any,
    ) -> PusaOutput:
        """Bridge two clips: the end of `start_video` opens the new video, the start of `end_video` closes
        it, the middle is generated (`recipes.transition`: 9 + 12 frames at 81 frames, 1 + 4 at 17)."""
        return self.video_to_video(
            start_video, prompt, (), noise_multipliers, recipe="transition", end_video=end_video, **common
        )

    def _submit(self, callback: Callable[[StepInfo], bool | None] | None = None, **fields: Any) -> PusaOutput:
        return self.generate(GenerationRequest(**fields), callback)

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
        multipliers = tuple(float(m) for m in r.noise_multipliers)
        if r.task in ("i2v", "frames"):
            parameter = "images" if r.task == "frames" else "image"
            latents = [
                self.encode_frames(fit_image(load_image(image, parameter), r.width, r.height)[None])
                for image in r.images
            ]
            return Conditioning(tuple(r.positions), multipliers, torch.cat(latents, dim=2))
        video, _ = read_video(r.video, parameter="video")
        end = read_video(r.end_video, parameter="end_video")[0] if r.end_video is not None else None
        plan = video_plan(r, len(video), None if end is None else len(end))
        sources = {"video": video} if end is None else {"video": video, "end_video": end}
        # Only the frames the plan uses are fitted to the output size; the rest stay black (unused).
        fitted = {
            name: np.zeros((len(frames), r.height, r.width, 3), np.uint8) for name, frames in sources.items()
        }
        for span in plan.spans:
            clip = sources[span.source][span.start : span.stop]
            fitted[span.source][span.start : span.stop] = fit_video(clip, r.width, r.height)
        latents = self.encode_frames(plan.conditioning_clip(fitted))
        index = torch.tensor(list(plan.positions), device=latents.device)
        return Conditioning(tuple(plan.positions), multipliers, latents.index_select(2, index))

    # ---------------------------------------------------------------- the shared core
    def settings_of(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON record of a resolved request: enough to reproduce the video."""
        record = asdict(replace(request, images=(), video=None, end_video=None, sources={}))
        record["positions"] = list(request.positions)
        record["noise_multipliers"] = [float(m) for m in request.noise_multipliers]
        record["chunk_multipliers"] = [float(m) for m in request.chunk_multipliers]
        record["images"] = []
        if request.task in ("i2v", "frames", "long"):
            record["images"] = [_describe_source(image) for image in request.images]
        sources = dict(request.sources)
        if request.task in ("v2v", "long"):
            for name in ("video", "end_video"):
                value = getattr(request, name)
                if value is not None and name not in sources:
                    sources[name] = _describe_source(value)
        record["sources"] = sources
        record["model"] = self.identity
        from .weights.stack import file_sha256

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
        record["acceleration"] = {
            k: v for k, v in self.acceleration.items() if k not in ("placement", "expert_swap")
        }
        return record

    def generate(
        self, request: GenerationRequest, callback: Callable[[StepInfo], bool | None] | None = None
    ) -> PusaOutput:
        """Run one request. `callback(StepInfo)` after every step; returning False cancels (`Cancelled`)."""
        started = time.perf_counter()
        request = validate(request, self.limits)
        counters = self._counters()
        if request.task == "long":
            return self._long(request, callback, started, counters)
        conditioning = self.conditioning_for(request)
        latents = self.sample_latents(request, conditioning, callback)
        return self.output_of(request, self.decode_latents(latents), started, counters)

    # ---------------------------------------------------------------- the stages of generate
    def _counters(self) -> tuple[int, tuple[int, float] | None, int]:
        """DiT forwards, expert swaps and sampling runs so far: `output_of` records what one request added."""
        swap = self.acceleration.get("expert_swap")
        swaps = (swap.swaps, swap.seconds) if swap is not None else None
        del self._runs[: max(0, len(self._runs) - 64)]  # only the current request's runs are read
        return self.dit_forwards, swaps, len(self._runs)

    def sample_latents(
        self,
        request: GenerationRequest,
        conditioning: Conditioning,
        callback: Callable[[StepInfo], bool | None] | None = None,
    ) -> torch.Tensor:
        """The clean latents `[1, C, F_lat, h, w]` of a validated request (its `num_frames`, `seed`)."""
        self.apply_loras(self.lora_stack(request), request.lora_alpha)

        text = self.encode_prompt(request.prompt)
        negative_text = self.encode_prompt(request.negative_prompt) if request.cfg != 1.0 else None

        _, spatial = self.vae_scale
        shape = (1, self.vae.config.z_dim, recipes.num_latent_frames(request.num_frames),
                 request.height // spatial, request.width // spatial)  # fmt: skip
        # Drawn on the CPU so a seed gives the same video on every device.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

        def velocity_of(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
            def velocity(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                self.dit_forwards += 1
                return model(x.to(self.dtype), timestep, context, return_dict=False)[0]

            return velocity

        sigmas = flow_sigmas(request.num_inference_steps, request.shift)
        parallel = self.velocity_wrapper is not None
        if request.cache != "off" and (parallel or self.transformer_2 is not None):
            # other ranks would run the blocks rank 0 skips; a second expert has no residual to reuse
            raise InputError(
                "cache", request.cache,
                "turn it off for a pipeline split over several processes or a two-expert model",
                "runs on one process and one DiT only;",
            )  # fmt: skip
        # CFG batching makes one call of the two passes, which the ranks split their own way
        cfg_batch = bool(self.acceleration.get("cfg_batch", False)) and not parallel
        # the velocity of each DiT: {"all": ...} for one, {"high": ..., "low": ...} for a two-expert model
        names = [ALL] if self.transformer_2 is None else list(EXPERTS)
        velocities = {name: velocity_of(self.expert_model(name)) for name in names}
        if parallel:  # several ranks share each DiT call (pusa.parallel), each on the step's DiT
            velocities = self.velocity_wrapper(velocities, text, negative_text, request.cfg)
        main_velocity = velocities[names[0]]
        cache = step_cache(request.cache, request.cache_threshold, request.num_inference_steps)
        if cache is not None:  # the transformer runs its blocks through the cache for this run only
            main_velocity = cache.wrap(main_velocity)
            self.transformer.block_runner = cache
        boundary = request.boundary
        swap = self.acceleration.get("expert_swap")

        def chooser(step: int, timestep: float) -> Callable[..., torch.Tensor]:
            name = expert_for(timestep, boundary)
            if swap is not None:
                swap.activate(name)  # the other expert back to pinned CPU memory
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
        # what this sampling run did, for the sidecar (`output_of`; a long video has one run per chunk)
        self._runs.append(
            {"cfg_batch": cfg_batch, "step_cache": cache.report() if cache is not None else None}
        )
        return latents

    def output_of(
        self,
        request: GenerationRequest,
        frames: np.ndarray,
        started: float,
        counters: tuple[int, tuple[int, float] | None, int] | None = None,
    ) -> PusaOutput:
        """The frames with their settings (the sidecar); `counters` (`_counters()` when the request began)
        give the DiT forwards and expert swaps it made."""
        forwards_before, swaps_before, runs_before = counters if counters is not None else self._counters()
        settings = self.settings_of(request)
        plan = None
        if self.transformer_2 is not None:  # the experts of one sampling run (each chunk's, for long)
            sigmas = flow_sigmas(request.num_inference_steps, request.shift)
            plan = expert_plan(sigmas.tolist(), request.boundary)
        settings["expert_steps"] = plan  # None for a one-expert model
        settings["dit_forwards"] = self.dit_forwards - forwards_before
        swap = self.acceleration.get("expert_swap")
        if swaps_before is not None and swap is not None:
            settings["expert_swaps"] = {
                "swaps": swap.swaps - swaps_before[0], "seconds": round(swap.seconds - swaps_before[1], 4)
            }  # fmt: skip
        settings["warnings"] = [str(note) for note in advisories(request, self.defaults)]
        runs = self._runs[runs_before:]
        if "cfg_batch" in settings["acceleration"] and runs:
            settings["acceleration"]["cfg_batch"] = runs[-1]["cfg_batch"]  # what ran
        reports = [run["step_cache"] for run in runs if run["step_cache"] is not None]
        if reports:  # one sampling run: its report; a long video: one per chunk
            settings["step_cache"] = reports[0] if len(runs) == 1 else reports
        settings["elapsed_s"] = round(time.perf_counter() - started, 3)
        return PusaOutput(frames=frames, settings=settings)

    # ---------------------------------------------------------------- the long task
    def long_video(
        self,
        prompt: str,
        num_frames: int,
        image: Media | None = None,
        video: Media | None = None,
        noise_multiplier: float = PARAMS["noise_multiplier"].default,
        context_latents: int = PARAMS["context_latents"].default,
        chunk_multipliers: Sequence[float] | None = None,
        chunk_frames: int | None = None,
        chain: str = PARAMS["chain"].default,
        **common: Any,
    ) -> PusaOutput:
        """One video of `num_frames` frames, chained from clips of the model's own length
        (`recipes.long_video`): the first from the prompt, `image` (latent 0, like i2v) or the end of
        `video` (like the extension recipe); each next one opens on the last `context_latents` latents
        of the one before. `chain`: "pixel" (default, the least drift measured: each chunk decoded and
        its end encoded again), "pixel-matched" (pixel, each chunk's colours shifted to match the
        overlap), "latent" (the overlap is the previous chunk's own latents; decoded once at the end),
        "anchored" (latent, the overlap's first latent made from its last frame alone)."""
        extra: dict[str, Any] = {}
        if image is not None:
            extra = dict(images=[image], positions=[0], noise_multipliers=[noise_multiplier])
        return self._submit(
            task="long", prompt=prompt, num_frames=num_frames, video=video, chunk_frames=chunk_frames,
            context_latents=context_latents, chunk_multipliers=list(chunk_multipliers or ()), chain=chain,
            **extra, **common,
        )  # fmt: skip

    def _long(
        self,
        request: GenerationRequest,
        callback: Callable[[StepInfo], bool | None] | None,
        started: float,
        counters: tuple[int, tuple[int, float] | None, int] | None = None,
    ) -> PusaOutput:
        """The chain: one progress over every chunk's steps (`ChunkStepInfo`), cancel at any step."""
        plan = long_plan(request)
        if request.chain in ("latent", "anchored"):
            video = self.decode_latents(self.chain_latents(request, callback, validated=True))
        else:
            video = self._chain_pixels(request, plan, callback)
        output = self.output_of(request, video, started, counters)
        output.settings["chunks"] = plan.record()
        return output

    def _chunk_latents(
        self,
        request: GenerationRequest,
        chunk: recipes.Chunk,
        count: int,
        conditioning: Conditioning | None,
        callback: Callable[[StepInfo], bool | None] | None,
    ) -> torch.Tensor:
        """One chunk's clean latents: the first conditioned as its request says (`first_chunk`), the
        others by `conditioning` (the overlap)."""
        clip = replace(first_chunk(request), seed=chunk.seed)
        if chunk.index == 0:
            conditioning = self.conditioning_for(clip)
        else:
            clip = replace(
                clip, task="t2v", images=(), video=None, recipe=None, positions=(), noise_multipliers=()
            )
        return self.sample_latents(clip, conditioning, _chunk_progress(callback, chunk.index, count))

    def chain_latents(
        self,
        request: GenerationRequest,
        callback: Callable[[StepInfo], bool | None] | None = None,
        validated: bool = False,
    ) -> torch.Tensor:
        """A long request's latents, chained in latent space: chunk k's overlap (its latents
        0..context-1) is chunk k-1's last `context` clean latents themselves, not decoded and encoded
        again, and the long video takes them from chunk k-1; `[1, C, F_lat, h, w]` for all its frames.
        "anchored": the same, but the overlap's latent 0 is its last pixel frame encoded alone (a clip's
        latent 0 is one frame; the chained latent there covers 4)."""
        request = request if validated else validate(request, self.limits)
        plan = long_plan(request)
        kept: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for chunk, before in zip(plan.chunks, (None, *plan.chunks), strict=False):
            conditioning = None
            if chunk.index:
                latents = previous[:, :, -plan.context :]
                if request.chain == "anchored":
                    # Latent 0 of a clip is one frame: the overlap's last frame, encoded alone.
                    frame = self.decode_latents(previous)[chunk.first_frame - before.first_frame]
                    latents = torch.cat([self.encode_frames(frame[None]), latents[:, :, 1:]], dim=2)
                conditioning = Conditioning(plan.positions, plan.noise_multipliers, latents)
            previous = self._chunk_latents(request, chunk, len(plan.chunks), conditioning, callback)
            kept.append(previous[:, :, chunk.keep_from : chunk.keep_to])
        return torch.cat(kept, dim=2)

    def _chain_pixels(
        self,
        request: GenerationRequest,
        plan: recipes.LongPlan,
        callback: Callable[[StepInfo], bool | None] | None,
    ) -> np.ndarray:
        """A long video chained in pixels: each chunk decoded; the next opens on its last frames encoded
        again (as the extension recipe does); "pixel-matched" shifts each chunk's colours so that its
        overlap has the colours the video so far has there."""
        video = np.zeros((0,), np.uint8)
        for chunk in plan.chunks:
            conditioning = None
            if chunk.index:
                head = video[chunk.first_frame : chunk.first_frame + plan.overlap_frames]
                conditioning = Conditioning(plan.positions, plan.noise_multipliers, self.encode_frames(head))
            frames = self.decode_latents(
                self._chunk_latents(request, chunk, len(plan.chunks), conditioning, callback)
            )
            first, last = chunk.frames
            if chunk.index and request.chain == "pixel-matched":
                target = video[chunk.first_frame : chunk.first_frame + plan.overlap_frames]
                frames = match_colours(frames, frames[: plan.overlap_frames], target)
            part = frames[first - chunk.first_frame : last - chunk.first_frame + 1]
            video = part if chunk.index == 0 else np.concatenate([video, part])
        return video
