"""The LoRA panel's form values: its rows (file, strength, expert) checked and composed with the text
field into `GenerationRequest.loras`, and a `loras` error traced back to the row it came from. `app.forms`
uses both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..experts import ALL, LORA_TARGETS
from ..lora_specs import STRENGTH_MAX, STRENGTH_MIN, format_loras, parse_loras
from ..params import InputError
from .form_fields import LORA_ROWS, FormError, lora_row_keys, read_number


def lora_rows(values: Mapping[str, Any]) -> list[dict]:
    """The LoRA panel's rows that name a file, in order, as the stack's mappings (`lora_specs.parse_loras`
    reads them); a bad row is refused naming it ("LoRA 2 Strength: ..."). A row without a file is unused
    (a strength given there without one is refused: it would be lost)."""
    rows = []
    for row in range(1, LORA_ROWS + 1):
        file_key, strength_key, expert_key = lora_row_keys(row)
        path, expert = values.get(file_key), values.get(expert_key)
        strength = read_number(strength_key, values.get(strength_key))
        if path is not None and not isinstance(path, str):
            raise FormError(file_key, path, "give the path of a LoRA file on the server", "is not text")
        path = (path or "").strip()
        if not path:
            if strength is not None:
                raise FormError(file_key, "", "choose the row's LoRA file, or clear its Strength", "is empty")
            continue
        if strength is not None and not STRENGTH_MIN <= strength <= STRENGTH_MAX:
            raise FormError(
                strength_key, strength,
                f"must be a number in {STRENGTH_MIN:g}..{STRENGTH_MAX:g} (blank: LoRA Alpha)",
            )  # fmt: skip
        expert = expert or ALL
        if expert not in LORA_TARGETS:
            raise FormError(expert_key, expert, f"choose one of {', '.join(LORA_TARGETS)}")
        if not Path(path).expanduser().is_file():
            raise FormError(file_key, path, "give an existing LoRA file on the server", "is not a file")
        rows.append({"path": path, "strength": strength, "expert": expert})
    return rows


def compose_loras(rows: Sequence[Mapping[str, Any]], text: str) -> str:
    """The stack a form asks for, as `GenerationRequest.loras` text: the panel's rows, then the entries
    of its text field (blank both: the model's own)."""
    parts = [format_loras(parse_loras(list(rows))), text.strip()]
    return "\n".join(part for part in parts if part)


def lora_row_error(error: InputError, form: Mapping[str, Any]) -> InputError:
    """A `loras` error about an entry that came from one of the panel's rows, as that row's field: its
    Expert for a LoRA bound to an expert the model lacks (the error shows the entry), else its File."""
    for row in range(1, LORA_ROWS + 1):
        file_key, strength_key, expert_key = lora_row_keys(row)
        if not form.get(file_key):
            continue
        strength = form.get(strength_key)
        entry = {
            "path": form[file_key],
            "strength": strength if strength != "" else None,
            "expert": form.get(expert_key),
        }
        if error.value == parse_loras([entry])[0].text():
            return FormError(expert_key, entry["expert"], error.allowed, error.problem)
        if error.value == form[file_key]:
            return FormError(file_key, error.value, error.allowed, error.problem)
    return error
