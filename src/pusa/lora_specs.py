"""LoRA stacks as users write them: `FILE[:STRENGTH][@EXPERT]`, one entry per `--lora` flag or per line
of the studio's LoRA field. Pure (no torch): parsed and checked before any weights load.

- `STRENGTH` multiplies the LoRA's delta as its format defines it (`weights.lora`); none given: the
  request's `lora_alpha` (the model's own by default), which keeps `--lora FILE --lora-alpha A` working.
- `@high` / `@low` bind the LoRA to one expert of a two-expert model (Wan2.2); `@all` (the default) to
  every DiT. Nothing is guessed from file or folder names.
- `A;B` as the strength (Wan2GP's per-phase form) gives a two-expert model's high expert A and its low
  expert B: `pusa.safetensors:1.5;1.4` is two entries, `@high` at 1.5 and `@low` at 1.4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .experts import ALL, EXPERTS, HIGH, LORA_TARGETS, LOW
from .params import InputError

STRENGTH_MIN, STRENGTH_MAX = 0.0, 5.0
SYNTAX = "FILE[:STRENGTH][@high|@low|@all], STRENGTH a number in 0..5 or A;B (high;low)"


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a stack: its file, its strength (None: the request's `lora_alpha`), its expert."""

    path: str
    strength: float | None = None
    expert: str = ALL

    def text(self) -> str:
        strength = "" if self.strength is None else f":{self.strength:g}"
        return f"{self.path}{strength}" + ("" if self.expert == ALL else f"@{self.expert}")


def _strength(text: str, entry: str, param: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not STRENGTH_MIN <= value <= STRENGTH_MAX:  # NaN fails too
        raise InputError(
            param, entry, f"each strength must be a number in {STRENGTH_MIN:g}..{STRENGTH_MAX:g}",
            f"has strength {text!r}",
        )  # fmt: skip
    return value


def parse_entry(entry: str, param: str = "loras") -> list[LoraSpec]:
    """One `FILE[:STRENGTH][@EXPERT]` -> one spec (two for an `A;B` strength)."""
    text = entry.strip()
    expert = ALL
    head, at, tail = text.rpartition("@")
    if at and "/" not in tail and "\\" not in tail:
        if tail not in LORA_TARGETS:
            raise InputError(param, entry, f"the expert after @ must be one of {', '.join(LORA_TARGETS)}",
                             f"names expert {tail!r}")  # fmt: skip
        text, expert = head, tail
    strengths: list[float | None] = [None]
    head, colon, tail = text.rpartition(":")
    if colon and "/" not in tail and "\\" not in tail:
        parts = tail.split(";")
        strengths = [_strength(part, entry, param) for part in parts]
        if len(parts) > 2:
            raise InputError(param, entry, "A;B gives a two-expert model's high and low strengths",
                             f"has {len(parts)} strengths")  # fmt: skip
        if len(parts) == 2 and expert != ALL:
            raise InputError(param, entry, "A;B already names both experts: drop the @expert",
                             f"binds A;B to @{expert}")  # fmt: skip
        text = head
    if not text:
        raise InputError(param, entry, f"write {SYNTAX}", "names no file")
    if len(strengths) == 2:
        return [LoraSpec(text, strengths[0], HIGH), LoraSpec(text, strengths[1], LOW)]
    return [LoraSpec(text, strengths[0], expert)]


def parse_loras(value: str | Sequence[Any] | None, param: str = "loras") -> tuple[LoraSpec, ...]:
    """A stack from text (entries on separate lines), a list of entry strings, or a list of mappings
    `{"path"|"file", "strength", "expert"}` (the API's and the sidecar's form); `InputError` naming
    `param` for anything else."""
    if value is None or value == "":
        return ()
    items: Iterable[Any] = value.splitlines() if isinstance(value, str) else value
    specs: list[LoraSpec] = []
    for item in items:
        if isinstance(item, LoraSpec):
            specs.append(item)
        elif isinstance(item, str):
            if item.strip():
                specs.extend(parse_entry(item, param))
        elif isinstance(item, dict):
            path = item.get("path", item.get("file"))
            if not isinstance(path, str) or not path:
                raise InputError(param, item, f"each entry needs a file; write {SYNTAX}", "names no file")
            strength = item.get("strength")
            if strength is not None:
                strength = _strength(str(strength), str(item), param)
            expert = item.get("expert") or ALL
            if expert not in LORA_TARGETS:
                raise InputError(param, item, f"expert must be one of {', '.join(LORA_TARGETS)}",
                                 f"names expert {expert!r}")  # fmt: skip
            specs.append(LoraSpec(path, strength, expert))
        else:
            raise InputError(param, item, f"write {SYNTAX}", "is not a LoRA entry")
    return tuple(specs)


def format_loras(specs: Iterable[LoraSpec]) -> str:
    """The stack as text, one entry a line (what `parse_loras` reads back)."""
    return "\n".join(spec.text() for spec in specs)


def check_stack(
    specs: Sequence[LoraSpec], num_experts: int, param: str = "loras", files: bool = True
) -> None:
    """Every entry's expert exists in the model, and (files) every file is there."""
    for spec in specs:
        if spec.expert in EXPERTS and num_experts < 2:
            raise InputError(
                param, spec.text(), "this model has one DiT: drop @high/@low (and A;B strengths)",
                f"binds a LoRA to the {spec.expert}-noise expert",
            )  # fmt: skip
        if files and not Path(spec.path).expanduser().is_file():
            raise InputError(param, spec.path, f"give an existing LoRA file ({SYNTAX})", "is not a file")
