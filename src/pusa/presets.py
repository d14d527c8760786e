"""Named speed presets (pure): what `--preset 4-step` sets.

The 4-step mode of LightX2V / Lightning: 4 steps, cfg 1.0 (one DiT forward a step: no negative pass) and
the schedule's shift, with the speed LoRA a model folder names in its `pusa_model.json`:

    "presets": {"4-step": {"shift": 5.0, "loras": [{"file": "lightx2v_4step.safetensors", "strength": 1.0}]}}

A folder that names no speed LoRA still runs the preset's steps, cfg and shift (with a warning in the
sidecar: a model not distilled for 4 steps gives poor videos at 4 steps). The preset's LoRAs are added on
top of the request's stack (the model's own LoRAs by default), so Pusa's LoRA stays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .params import SPEED_PRESETS, InputError


@dataclass(frozen=True)
class Preset:
    name: str
    num_inference_steps: int = 4
    cfg: float = 1.0
    shift: float = 5.0
    loras: str = ""  # a stack in `lora_specs` text form, paths absolute
    declared: bool = False  # named by the model folder (False: the built-in values, no speed LoRA)


BUILTIN = {"4-step": Preset("4-step")}
assert set(BUILTIN) == set(SPEED_PRESETS)


def preset_of(name: str, declared: tuple[Preset, ...] = ()) -> Preset:
    """The model folder's version of preset `name`, else the built-in one; `InputError` for unknown names."""
    for preset in declared:
        if preset.name == name:
            return preset
    if name not in BUILTIN:
        raise InputError("preset", name, f"choose one of {', '.join(SPEED_PRESETS)}")
    return BUILTIN[name]


def preset_from_manifest(name: str, entry: Any, where: str, resolve_path: Any) -> Preset:
    """A manifest's `presets[name]` object -> `Preset` (LoRA files resolved by `resolve_path`)."""
    from .lora_specs import format_loras, parse_loras

    if name not in BUILTIN or not isinstance(entry, dict):
        raise ValueError(f"{where}: presets must map {', '.join(SPEED_PRESETS)} to objects; got {name!r}")
    unknown = sorted(set(entry) - {"num_inference_steps", "cfg", "shift", "loras"})
    if unknown:
        raise ValueError(f"{where}: preset {name!r} has unknown entries {unknown}")
    specs = parse_loras(entry.get("loras") or [], param="presets")
    specs = tuple(replace(spec, path=str(resolve_path(spec.path))) for spec in specs)
    values = {k: entry[k] for k in ("num_inference_steps", "cfg", "shift") if k in entry}
    return replace(BUILTIN[name], **values, loras=format_loras(specs), declared=True)
