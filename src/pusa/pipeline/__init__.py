"""The pipeline: `PusaPipeline` runs every Pusa task on a loaded model, `PusaOutput` is what it returns.

A package by concern, the way diffusers separates a pipeline from its loader mixins: `core` (the class:
encode, condition, sample, decode, record), `loading` (the constructors and their `LoadOptions`), `lora`
(the LoRA stack of each DiT), `tasks` (one method per task, `CommonOptions`), `long` (long videos) and
`record` (`PusaOutput`, the settings record). Placement on devices is `pusa.runtime.placement`.
"""

from ..request import GenerationRequest
from .core import PusaPipeline
from .loading import LoadOptions, native_tokens, vae_compression
from .long import ChunkStepInfo, match_colours
from .lora import LORA_MODES
from .record import PusaOutput
from .tasks import CommonOptions

__all__ = [
    "LORA_MODES",
    "ChunkStepInfo",
    "CommonOptions",
    "GenerationRequest",
    "LoadOptions",
    "PusaOutput",
    "PusaPipeline",
    "match_colours",
    "native_tokens",
    "vae_compression",
]
