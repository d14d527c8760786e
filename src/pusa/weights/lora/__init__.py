"""The Pusa LoRA, all of it: key formats, files, and the three ways its delta `up @ down` is applied.

- Files (`load_lora`, `save_lora_original`, `to_original_lora_keys`): `.pt`/`.pth` or `.safetensors`, with
  keys in PEFT's style (`blocks.0.self_attn.q.lora_A.default.weight` / `.lora_B.default.weight`, with or
  without `diffusion_model.` and `.default`, as in `pusa_v1.pt`), kohya/LightX2V's (`.lora_down.weight` /
  `.lora_up.weight`, with an optional `.alpha`) or diffusers' naming (`blocks.0.attn1.to_q.lora_A.weight`);
  full-tensor deltas `.diff` / `.diff_b` too. Wan's original module names are read as diffusers'.
- `LoraFuser`: fused into the Linear weights with exact alpha (docs/algorithm.md, "LoRA formats and strength"),
  `W' = W + alpha * (up @ down)`, always recomputed from the pristine `W` (read again from the DiT's
  safetensors files when it was loaded from them, else a copy), so a change of alpha never
  accumulates (upstream's demo does accumulate).
- `LoraLinear` / `add_lora` / `lora_state`: the trainable form the VTA stage learns, a float32 delta
  `up @ down` beside a frozen Linear; exactly what `LoraFuser` adds at alpha 1.
- `attach_lora_adapter` / `set_adapter_alpha`: the unfused PEFT adapter path through diffusers, kept to
  compare with the fused one.

The modules: `files` (key formats, reading and writing), `fuse`, `trainable`, `adapter`; every public name is
importable from `pusa.weights.lora`, as `weights.stack`, the training stages, the tests and the benchmarks do.
"""

from __future__ import annotations

from .adapter import attach_lora_adapter, set_adapter_alpha
from .files import PUSA_LORA_TARGETS, LoraWeights, load_lora, save_lora_original, to_original_lora_keys
from .fuse import LORA_ALPHA_MAX, LORA_ALPHA_MIN, LoraFuser, check_lora_fits, lora_delta, validate_lora_alpha
from .trainable import LoraLinear, add_lora, lora_state

__all__ = [
    "LORA_ALPHA_MAX",
    "LORA_ALPHA_MIN",
    "PUSA_LORA_TARGETS",
    "LoraFuser",
    "LoraLinear",
    "LoraWeights",
    "add_lora",
    "attach_lora_adapter",
    "check_lora_fits",
    "load_lora",
    "lora_delta",
    "lora_state",
    "save_lora_original",
    "set_adapter_alpha",
    "to_original_lora_keys",
    "validate_lora_alpha",
]
