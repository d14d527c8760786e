"""The LoRA stack of each DiT of `PusaPipeline`: which LoRAs a request fuses (its own stack, else the
model's, then its speed preset's) and fusing them exactly (`weights.stack`: from the pristine weights, so
a strength change equals a fresh load; per expert for a two-expert model).

`lora_mode` "fuse" writes the stack into the weights (`StackFuser`); "adapter" runs it beside them as PEFT
adapters (`AdapterStack`), the weights never written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..experts import ALL, EXPERTS
from ..lora_specs import LoraSpec, parse_loras
from ..params import InputError
from ..presets import preset_of
from ..request import GenerationRequest, ModelDefaults
from ..weights.checkpoints import CheckpointError
from ..weights.sources import FileChangedError
from ..weights.stack import AdapterStack, StackFuser, load_lora_cached

__all__ = ["LORA_MODES", "LoraStackMixin", "check_lora_mode"]

LORA_MODES = ("fuse", "adapter")  # how a LoRA stack reaches a DiT: fused into its weights, or PEFT adapters


def check_lora_mode(value: str) -> str:
    """`value` itself, or an `InputError` naming `lora_mode` and the allowed modes."""
    if value not in LORA_MODES:
        raise InputError("lora_mode", value, f"choose one of {', '.join(LORA_MODES)}")
    return value


class LoraStackMixin:
    """`lora_stack`, `apply_loras` and the re-fuse of an expert read again from its files."""

    # provided by `PusaPipeline` (pipeline.core)
    lora: tuple[LoraSpec, ...] | None
    lora_mode: str
    defaults: ModelDefaults
    transformer_2: nn.Module | None
    fusers: dict[str, Any]  # DiT name ("all", "high", "low") -> StackFuser / AdapterStack
    fused_loras: tuple[LoraSpec, ...]
    expert_model: Callable[[str], nn.Module]

    def lora_stack(self, request: GenerationRequest) -> tuple[LoraSpec, ...]:
        """What a resolved request fuses: its `loras` (else the model's own stack), then its preset's."""
        stack = parse_loras(request.loras) or (self.lora or ())
        if request.preset is not None:
            stack = (*stack, *parse_loras(preset_of(request.preset, self.defaults.presets).loras))
        return tuple(stack)

    def apply_loras(self, stack: Sequence[LoraSpec], lora_alpha: float) -> None:
        """Fuse `stack` into each DiT it targets (an entry without a strength at `lora_alpha`), from the
        pristine weights; an `InputError` naming `loras` and the file when a LoRA matches nothing; a
        `weights.sources.FileChangedError` naming the DiT's file when it changed since the model was loaded."""
        names = [ALL] if self.transformer_2 is None else list(EXPERTS)
        per_dit: dict[str, list[tuple[Any, float]]] = {name: [] for name in names}
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
            if name not in self.fusers and not per_dit[name]:
                continue  # never touched: nothing to restore
            if name not in self.fusers:
                kind = AdapterStack if self.lora_mode == "adapter" else StackFuser
                self.fusers[name] = kind(self.expert_model(name))
            try:
                self.fusers[name].fuse(per_dit[name])
            except FileChangedError:
                # The model's own file changed on disk, not the request's LoRAs: no parameter of the request
                # is wrong, so it is not an `InputError`; it fails the job with its own message (a ValueError:
                # the queue and the CLI show the message, no traceback), which names the file and says to reload.
                raise
            except CheckpointError as error:
                raise InputError(
                    "loras", [w.source for w, _ in per_dit[name]],
                    f"each LoRA must fit the {'model' if name == ALL else name + '-noise expert'}'s DiT",
                    str(error),
                ) from None  # fmt: skip

    def expert_loaded(self, expert: str) -> None:
        """`runtime.expert_stream` read `expert` from its files again: fuse its LoRA stack into it again."""
        fuser = self.fusers.get(expert)
        if fuser is not None:
            fuser.reloaded()
