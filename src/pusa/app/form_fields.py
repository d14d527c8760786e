"""The studio form's fields: their keys (the LoRA panel's rows included) and labels, `FormError` (a message
that starts with the field's label as the page shows it), and reading one field's text into numbers and
lists. `app.forms` builds jobs from them; `app.uploads`, `app.lora_form`, `app.long_form`, `app.studio`
and `app.page` use them too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .. import recipes
from ..experts import ALL
from ..params import COMMON, PARAMS, RECIPES, TASK_NAMES, InputError, label_of
from ..request import ModelDefaults

TABS = TASK_NAMES
FORM_RECIPES = ("custom", *RECIPES)


# The LoRA panel: a fixed number of rows, each a file, a strength (blank: LoRA Alpha) and an expert. They
# are form fields (and API parameters) of their own, not declared parameters: they compose into `loras`.
LORA_ROWS = 4


def lora_row_keys(row: int) -> tuple[str, str, str]:
    """The form keys of the LoRA panel's row `row` (1-based): file, strength, expert."""
    return f"lora_file_{row}", f"lora_strength_{row}", f"lora_expert_{row}"


LORA_KEYS = tuple(key for row in range(1, LORA_ROWS + 1) for key in lora_row_keys(row))


def lora_row_blank(key: str) -> Any:
    """What an unused row's field holds on the page: no file, a blank strength, expert "all"."""
    return {"file": None, "strength": "", "expert": ALL}[key.split("_")[1]]


ROW_LABELS = {
    key: f"LoRA {row} {part}"
    for row in range(1, LORA_ROWS + 1)
    for key, part in zip(lora_row_keys(row), ("File", "Strength", "Expert"), strict=True)
}


class FormError(InputError):
    """A form value that cannot be used. `str()` is the message for the page (it starts with the field's
    label), `field` the form's key for it (`steps` for `num_inference_steps`)."""

    def __str__(self) -> str:
        return self.labelled(ROW_LABELS.get(self.param) or label_of(self.param))

    @property
    def field(self) -> str:
        declared = PARAMS.get(self.param)
        return declared.key if declared else self.param

    @classmethod
    def of(cls, error: InputError) -> FormError:
        if isinstance(error, FormError):
            return error
        return cls(error.param, error.value, error.allowed, error.problem, error.show_value)


# The fields every tab has, by their form keys (`Param.key`: "steps" for num_inference_steps). A form is a
# mapping of these keys to what the page sent; a key left out takes its declared default, a blank number
# the model's own (where the declaration says so); seed -1 (or blank) is random.
COMMON_KEYS = tuple(PARAMS[name].key for name in COMMON)


def read_number(param: str, value: Any, integer: bool = False) -> int | float | None:
    """A number from a form field (gradio gives floats for whole numbers); blank is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FormError(param, value, "give a number", "is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise FormError(param, value, "give a number", "is not a number")
    if integer:
        if not float(value).is_integer():
            raise FormError(param, value, "give a whole number", "is not a whole number")
        return int(value)
    return float(value)


def parse_positions(text: str | None) -> list[int]:
    """ "0, 4" -> [0, 4]; blank -> []."""
    parts = [part.strip() for part in (text or "").split(",")]
    if parts == [""]:
        return []
    if any(not re.fullmatch(r"\d+", part) for part in parts):
        raise FormError(
            "positions",
            text,
            "give comma-separated latent frames, e.g. 0,4",
            "is not a list of whole numbers",
        )
    return [int(part) for part in parts]


def parse_multipliers(text: str | None) -> list[float]:
    """ "0.2, 0.5" -> [0.2, 0.5]; blank -> []."""
    parts = [part.strip() for part in (text or "").split(",")]
    if parts == [""]:
        return []
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise FormError(
            "noise_multipliers",
            text,
            "give comma-separated numbers in 0.0..1.0, e.g. 0.2,0.5",
            "is not a list of numbers",
        ) from None
    try:
        PARAMS["noise_multipliers"].check(values)
    except InputError as error:
        raise FormError.of(error) from None
    return values


def format_list(values: Sequence[float]) -> str:
    return ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def check_num_frames(value: Any, defaults: ModelDefaults) -> int:
    """The frame count to use (the model's when blank); must be 4k+1 so latents cover it exactly."""
    num_frames = read_number("num_frames", value, integer=True)
    if num_frames is None:
        return defaults.num_frames
    if num_frames < 1 or (num_frames - 1) % 4:
        raise FormError("num_frames", num_frames, "must be 4k+1, e.g. 17, 33, 49, 81")
    return num_frames


def recipe_fields(recipe: str, num_frames: int) -> tuple[str, str] | None:
    """(positions, noise multipliers) a Video-to-Video recipe fills in; None for "custom"."""
    if recipe == "custom":
        return None
    if recipe not in RECIPES:
        raise FormError("recipe", recipe, f"choose one of {', '.join(FORM_RECIPES)}")
    try:
        plan = recipes.plan(recipe, num_frames)
    except InputError as error:
        raise FormError.of(error) from None
    return format_list(plan.positions), format_list(plan.noise_multipliers)
