"""How a `PusaPipeline` is built: from what `--model` names (`from_model`), a built-in model
(`from_builtin`) or a local folder of real weights (`from_pretrained`), offline.

Every constructor takes the same load options (`LoadOptions`: memory tier, attention kernel, compile, fp8,
CFG batching, LoRA mode, text encoder/VAE device, ...) and checks them once, by name, before any weight is
read; then it loads, fuses the model's own LoRA stack and places the model (`runtime.placement`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..lora_specs import check_stack, parse_loras
from ..params import InputError
from ..request import ModelDefaults
from ..runtime.device import check_device, check_text_vae_device
from ..runtime.kernels import check_attention_installed, validate_attention_backend
from ..runtime.memory import validate_memory_tier
from ..runtime.placement import ModelParts, place_model, plan_folder_experts
from ..runtime.prepare import validate_cfg_batch, validate_fp8_compute
from ..weights.folders import load_components
from ..weights.registry import (
    BUILTIN_MODELS,
    PUSA_TINY_DIR,
    TINY_RANDOM_MODELS,
    folder_defaults,
    folder_experts,
    folder_loras,
    resolve_model,
    tiny_random_a14b_components,
    tiny_random_components,
)
from ..weights.stack import check_stack_fits_folder
from .lora import check_lora_mode

if TYPE_CHECKING:
    from .core import PusaPipeline

__all__ = ["LoadOptions", "LoaderMixin", "native_tokens", "vae_compression"]


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded and placed; the same for every constructor (and `pusa generate` / `pusa
    serve`'s flags).

    memory:            "full" | "balanced" (24 GB cards) | "low" (12 GB) | "swap" / "stream" (two experts)
                       | "auto" (from free memory)
    attention:         a diffusers attention backend, or "auto" (the fastest fused kernel that works)
    compile:           torch.compile the repeated blocks
    fp8:               store the DiT weights in float8
    cfg_batch:         "auto" | "on" | "off": CFG's two passes as one batch of 2
    fp8_compute:       "off" | "rowwise" | "tensor": the blocks' matrix products in float8
    host_bytes:        two-expert folders: the host RAM the memory plan may use (None: what is free now)
    lora_mode:         "fuse" (the stack fused into the weights) or "adapter" (unfused PEFT adapters)
    load_text_encoder: False: no text encoder, the pipeline is handed text embeddings (a parallel
                       group's follower ranks)
    text_vae_device:   where the text encoder and VAE run, resident, apart from the DiT (None: with it)
    """

    memory: str = "auto"
    attention: str = "auto"
    compile: bool = False
    fp8: bool = False
    cfg_batch: str = "auto"
    fp8_compute: str = "off"
    host_bytes: int | None = None
    lora_mode: str = "fuse"
    load_text_encoder: bool = True
    text_vae_device: Any = None  # a device name, or once checked a torch.device

    def checked(self, device: str | torch.device) -> LoadOptions:
        """These options with `text_vae_device` parsed, or the error that names the first bad one (and
        `device`): said before any weight is read."""
        check_device(device)
        text_vae_device = self.text_vae_device
        if text_vae_device is not None:
            text_vae_device = check_text_vae_device(text_vae_device)
        validate_memory_tier(self.memory, allow_auto=True)
        validate_attention_backend(self.attention)
        if self.attention != "auto":
            check_attention_installed(self.attention)  # a missing kernel package is said before a 14B load
        validate_cfg_batch(self.cfg_batch)
        validate_fp8_compute(self.fp8_compute)
        check_lora_mode(self.lora_mode)
        return replace(self, text_vae_device=text_vae_device)

    def placement(self) -> dict[str, Any]:
        """The keywords `runtime.placement.place_model` takes from these options."""
        keys = ("memory", "attention", "compile", "fp8", "cfg_batch", "fp8_compute")
        return {key: getattr(self, key) for key in keys}


def vae_compression(vae: Any) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE, from its config."""
    return 2 ** sum(vae.config.temperal_downsample), 2 ** len(vae.config.temperal_downsample)


def native_tokens(transformer: Any, vae: Any, defaults: ModelDefaults) -> int:
    """DiT tokens of one clip at the model's native size: the sequence length attention runs at."""
    temporal, spatial = vae_compression(vae)
    p_t, p_h, p_w = transformer.config.patch_size
    frames = (defaults.num_frames - 1) // temporal + 1
    return (frames // p_t) * (defaults.height // spatial // p_h) * (defaults.width // spatial // p_w)


class LoaderMixin:
    """The constructors of `PusaPipeline`."""

    @classmethod
    def from_model(  # type: ignore[misc]  # cls is PusaPipeline, of which this is a mixin
        cls: type[PusaPipeline],
        model: str | Path = "pusa-tiny",
        lora: str | Path | None = "auto",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **options: Any,
    ) -> PusaPipeline:
        """What `--model` names: a built-in model (`pusa-tiny`, `tiny-random`, `tiny-random-a14b`) or a
        local folder.

        lora: "auto" = the LoRA the folder ships with (pusa-tiny's VTA LoRA; none for a plain Wan folder),
        None = no LoRA (pusa-tiny's base T2V model), or a LoRA file. `options`: `LoadOptions`' fields."""
        resolved = resolve_model(model, lora)  # the device is checked by from_builtin / from_pretrained
        if resolved in TINY_RANDOM_MODELS:
            return cls.from_builtin(str(resolved), device=device, dtype=dtype, **options)
        pipe = cls.from_pretrained(resolved, lora=lora, device=device, dtype=dtype, **options)
        if Path(resolved) == PUSA_TINY_DIR:
            pipe.identity = "pusa-tiny" + ("" if pipe.lora is not None else " (base, no LoRA)")
        return pipe

    @classmethod
    def from_builtin(  # type: ignore[misc]  # cls is PusaPipeline, of which this is a mixin
        cls: type[PusaPipeline],
        name: str = "tiny-random",
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **options: Any,
    ) -> PusaPipeline:
        """A built-in model. `options`: `LoadOptions`' fields.

        "pusa-tiny" is the shipped demo model with its VTA LoRA; "tiny-random" a seeded random model of the
        same structure (`seed` picks it); "tiny-random-a14b" a seeded random two-expert model (Wan2.2's
        structure: high- and low-noise DiTs sharing the VAE and text encoder)."""
        if name == "pusa-tiny":
            return cls.from_model("pusa-tiny", device=device, dtype=dtype, **options)
        load = LoadOptions(**options).checked(device)
        if name not in TINY_RANDOM_MODELS:
            raise InputError(
                "model", name, f"choose one of {', '.join(BUILTIN_MODELS)}", "is not a built-in model"
            )
        if load.memory == "stream":
            raise InputError("memory", "stream", f"{name} is built in memory; the stream tier reads the experts from "
                             "a model folder's files (weights.wan_original.write_two_expert_folder writes one)")  # fmt: skip
        build = tiny_random_components if name == "tiny-random" else tiny_random_a14b_components
        components = build(seed)
        if not load.load_text_encoder:
            components["text_encoder"] = None
        if dtype != torch.float32:
            for part in ("transformer", "transformer_2", "text_encoder"):
                if components.get(part) is not None:
                    components[part].to(dtype)
        placement = place_model(
            ModelParts.of(components), device, text_vae_device=load.text_vae_device, compute_dtype=dtype,
            **load.placement(),
        )  # fmt: skip
        pipe = cls(
            **components,
            device=device,
            dtype=dtype,
            lora_mode=load.lora_mode,
            text_vae_device=load.text_vae_device,
        )
        pipe.adopt_placement(placement)
        return pipe

    # The old name of `from_builtin` ("preset" now means a speed preset, `--preset 4-step`).
    from_preset = from_builtin

    @classmethod
    def from_pretrained(  # type: ignore[misc]  # cls is PusaPipeline, of which this is a mixin
        cls: type[PusaPipeline],
        model_dir: str | Path,
        lora: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        defaults: ModelDefaults | None = None,
        **options: Any,
    ) -> PusaPipeline:
        """Real weights from a local folder (diffusers layout or Wan's original layout), offline.

        lora: a LoRA file (at the request's lora_alpha), a stack (`lora_specs`: text or `LoraSpec`s), None, or
            "auto" (the stack named by the folder's `pusa_model.json`, if any);
        defaults: native clip settings (default: the folder's `pusa_model.json`, else Wan2.1's);
        options: `LoadOptions`' fields. For two-expert folders "auto" and "balanced"/"low" read the inactive
            expert from its files where pinning both would not fit in `host_bytes` of host RAM
            (`runtime.memory.plan_expert_memory`; the record's acceleration says which and why).
        """
        load = LoadOptions(**options).checked(device)  # names are checked before a 14B load, not after
        if defaults is None:
            defaults = folder_defaults(model_dir)
        if isinstance(lora, str) and lora == "auto":
            lora = folder_loras(model_dir)
        stack = parse_loras([str(lora)] if isinstance(lora, (str, Path)) else lora)
        two_experts = bool(folder_experts(model_dir))
        check_stack(stack, 2 if two_experts else 1, param="lora")
        check_stack_fits_folder(stack, model_dir, param="lora")  # headers only: before the DiT loads
        memory = load.memory
        if memory == "stream" and not two_experts:
            raise InputError(
                "memory", "stream", "the stream tier is for two-expert models; this model has one DiT"
            )
        plan = None
        if two_experts:  # decided from the files' sizes, before any weight is read
            plan = plan_folder_experts(
                model_dir, memory, device, dtype, load.host_bytes, streamable=not load.fp8
            )
            memory = plan.tier
        streamed = plan is not None and plan.inactive_expert == "files"
        # other tiers place the weights themselves; "stream" loads the high-noise expert resident; a streamed
        # inactive expert is not read until the boundary
        load_device = device if memory in ("full", "stream") else "cpu"
        # The VAE stays in float32: its decode is a small share of the time and bf16 bands the colors.
        components = load_components(model_dir, dtype=dtype, device=load_device, vae_dtype=torch.float32,
                                     read_transformer_2=not streamed, read_text_encoder=load.load_text_encoder,
                                     text_vae_device=load.text_vae_device)  # fmt: skip
        pipe = cls(
            components.transformer, components.vae, components.text_encoder, components.tokenizer,
            lora=stack or None, identity=components.identity, defaults=defaults, device=device, dtype=dtype,
            transformer_2=components.transformer_2, lora_mode=load.lora_mode, text_vae_device=load.text_vae_device,
        )  # fmt: skip
        # Fused before fp8 could round the pristine copies (the stack's strengths: the model's own alpha).
        pipe.apply_loras(stack, defaults.lora_alpha)
        placement = place_model(
            ModelParts.of(components), device, text_vae_device=load.text_vae_device,
            stream_inactive=plan is not None and plan.stream_inactive, compute_dtype=dtype,
            attention_tokens=native_tokens(components.transformer, components.vae, defaults),
            **{**load.placement(), "memory": memory},
        )  # fmt: skip
        if plan is not None:  # recorded: which tier, where the inactive expert lives, and why
            placement.report.update(inactive_expert=plan.inactive_expert, memory_reason=plan.reason)
        pipe.adopt_placement(placement)
        if streamed and placement.expert_switch is not None:
            placement.expert_switch.on_load = pipe.expert_loaded  # type: ignore[attr-defined]
        return pipe
