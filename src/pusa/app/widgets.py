"""The studio's input widgets, made from the parameter declarations (`pusa.params`): range, step,
default (the model's own where declared so), label and info come from one place.

Four gradio components are subclassed here: their preprocessing stood between the page and our one
validation. gradio writes a type stub (`widgets.pyi`) beside any module that subclasses a component, on
import, best-effort; it is git-ignored.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..params import MODEL_OWN, PARAMS
from ..request import ModelDefaults, ModelLimits


class SliderInput(gr.Slider):
    """A slider whose value reaches our validation as sent: gradio's own range check answered API callers
    with "Value 0 is less than minimum value 1." and no field name; ours names the field."""

    is_template = True  # gradio draws it as its own slider

    def preprocess(self, payload: Any) -> Any:
        return payload


class NumberInput(gr.Number):
    """A number box whose value reaches our validation as sent: gradio's own preprocessing rounded it to
    the box's precision first (16.4 became 16, a seed of -1.6 became -2) and answered a non-number with
    its own unnamed conversion error."""

    is_template = True  # gradio draws it as its own number box

    def preprocess(self, payload: Any) -> Any:
        return payload


class RadioInput(gr.Radio):
    """A choice whose value reaches our validation as sent (gradio answered a value outside its choices
    with "Value ... is not in the list of choices", naming no field)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class DropdownInput(gr.Dropdown):
    """A pick among the values a model declares it was trained on (`pusa_model.json` "trained"); API callers
    may send another value, which reaches our validation as sent (it runs with a warning naming the
    parameter) instead of gradio's unnamed "Value ... is not in the list of choices"."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class ImageInput(gr.Image):
    """An image upload handed over as the file itself (`type="filepath"`): gradio's preprocessing opened
    it with Pillow first, so a broken file came back as its internal "Could not preprocess input component"
    text, and a 16-bit or palette image was converted (clipped) before our reader (`video.load_image`,
    which keeps its colours and names what it cannot read) saw it."""

    is_template = True  # gradio draws it as its own image upload

    # No __init__ of its own: gradio builds the page's config from the constructor's parameter names.
    def preprocess(self, payload: Any) -> Any:
        if payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


def default_of(name: str, defaults: ModelDefaults) -> Any:
    """The value a field starts at: the declared default, or the model's own."""
    param = PARAMS[name]
    return getattr(defaults, name) if param.default is MODEL_OWN else param.default


def slider(name: str, defaults: ModelDefaults, **extra: Any) -> gr.Slider:
    """A slider over the declared range, at the declared step."""
    param = PARAMS[name]
    options = dict(
        minimum=param.low, maximum=param.high, value=default_of(name, defaults), step=param.step,
        label=param.label, info=param.help,
    )  # fmt: skip
    return SliderInput(**{**options, **extra})


def trained_choices(name: str, defaults: ModelDefaults) -> list[int]:
    """The values of a clip-size field the model declares it was trained on (none: any allowed value)."""
    if name == "num_frames":
        return sorted(set(defaults.trained_frames))
    index = {"width": 0, "height": 1}.get(name)
    if index is None:
        return []
    return sorted({size[index] for size in defaults.trained_sizes})


def number(
    name: str, defaults: ModelDefaults, limits: ModelLimits | None = None, **extra: Any
) -> gr.Number | gr.Dropdown:
    """A number box; whole numbers for INT parameters. Clip sizes say the model's multiple and limit; where
    the model declares what it was trained on, the field is a pick among those values (`DropdownInput`)."""
    param = PARAMS[name]
    info = param.help
    trained = limits.defaults if limits is not None else defaults
    choices = trained_choices(name, trained) if limits is not None else []
    if choices:
        values = ", ".join(map(str, choices))
        options = dict(
            choices=choices, value=default_of(name, defaults), label=param.label,
            info=f"this model was trained on {values} (the API accepts other values, with a warning)",
        )  # fmt: skip
        return DropdownInput(**{**options, **extra})
    if limits is not None and name in ("width", "height"):
        info = f"a multiple of {limits.size_multiple}, at most {limits.max_side} (this model)"
        if trained.trained_sizes:
            sizes = ", ".join(f"{w}x{h}" for w, h in trained.trained_sizes)
            info += f"; trained at {sizes} (other sizes: a warning)"
    if limits is not None and name == "num_frames":
        info = f"4k+1, e.g. 17, 33, 81; at most {limits.max_frames} (this model)"
        if trained.trained_frames:
            info += f"; trained on {', '.join(map(str, trained.trained_frames))} (others: a warning)"
    options = dict(
        value=default_of(name, defaults), label=param.label, info=info,
        precision=0 if param.kind == "int" else None,
    )  # fmt: skip
    return NumberInput(**{**options, **extra})


def textbox(name: str, defaults: ModelDefaults, **extra: Any) -> gr.Textbox:
    param = PARAMS[name]
    value = default_of(name, defaults)
    options = dict(value="" if value is None else value, label=param.label, info=param.help)
    return gr.Textbox(**{**options, **extra})


def choice(name: str, defaults: ModelDefaults, **extra: Any) -> gr.Radio:
    """A radio of the declared choices, with "none" first for a parameter that may be absent (default None)."""
    param = PARAMS[name]
    value = default_of(name, defaults)
    choices = ["none", *param.choices] if param.default is None else list(param.choices)
    options = dict(
        choices=choices, value="none" if value is None else value, label=param.label, info=param.help,
    )  # fmt: skip
    return gr.Radio(**{**options, **extra})


def image_upload(**options: Any) -> ImageInput:
    """An image upload that hands the file over unconverted (`ImageInput`)."""
    return ImageInput(type="filepath", image_mode=None, **options)
