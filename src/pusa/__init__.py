"""pusa: Pusa video generation (Wan video diffusion with a noise level per frame) as a studio, a CLI and a
Python API.

The public API is imported on first use, so that `import pusa` (and `pusa --help`) stays free of torch:

    from pusa import PusaPipeline
    pipe = PusaPipeline.from_model("pusa-tiny")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "PusaPipeline": "pusa.pipeline",
    "PusaOutput": "pusa.pipeline",
    "GenerationRequest": "pusa.request",
    "InputError": "pusa.params",
}

__all__ = ["GenerationRequest", "InputError", "PusaOutput", "PusaPipeline", "__version__"]

if TYPE_CHECKING:
    from .params import InputError
    from .pipeline import PusaOutput, PusaPipeline
    from .request import GenerationRequest


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'pusa' has no attribute {name!r}")
