"""The unfused LoRA path: a LoRA loaded as a PEFT adapter through diffusers (`attach_lora_adapter`) and its
strength set (`set_adapter_alpha`). `weights.stack` uses it for stacks kept unfused; the benchmarks
compare it with the fused path.
"""

from __future__ import annotations

import collections
import math

import torch
from torch import nn

from .files import LoraWeights


def attach_lora_adapter(
    transformer: nn.Module, lora: LoraWeights, alpha: float, adapter_name: str = "pusa"
) -> str:
    """Load `lora` as an unfused PEFT adapter through diffusers (`load_lora_adapter`) and set its strength
    to `alpha`, so each targeted Linear computes `W x + alpha * up @ (down @ x)`: PEFT's scale is
    `weight * lora_alpha / r` and the adapter is created with `lora_alpha = r`, hence no division by rank.
    Returns the adapter name. Full-tensor `.diff` deltas have no adapter form and are refused.
    """
    if lora.diffs:
        names = ", ".join(list(lora.diffs)[:3])
        raise ValueError(
            f"LoRA {lora.source} has full-tensor .diff deltas ({names}, ...), which a PEFT adapter cannot "
            "hold; fuse it with pusa.weights.lora.LoraFuser instead"
        )
    named = dict(transformer.named_modules())
    for name, (down, up) in lora.modules.items():
        module = named.get(name)
        module = getattr(
            module, "base_layer", module
        )  # a Linear that holds an adapter already (PEFT's wrapper)
        if not isinstance(module, nn.Linear) or [up.shape[0], down.shape[1]] != list(module.weight.shape):
            have = (
                "nothing"
                if module is None
                else f"a {type(module).__name__} {list(getattr(module, 'weight', torch.empty(0)).shape)}"
            )
            raise ValueError(
                f"LoRA {lora.source}: {lora.file_key(name)} gives {name} a delta of shape "
                f"{[up.shape[0], down.shape[1]]}, but the model has {have} there"
            )
    state = {}
    ranks = {}
    for name, (down, up) in lora.modules.items():
        state[f"{name}.lora_A.weight"] = down
        state[f"{name}.lora_B.weight"] = up
        ranks[name] = down.shape[0]
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    # Same pattern keys as diffusers' own config inference (`^` anchors at the module name).
    others = {f"^{name}": r for name, r in ranks.items() if r != rank}
    config = {
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": others,
        "alpha_pattern": dict(others),
        "target_modules": sorted(ranks),
    }
    transformer.load_lora_adapter(
        state, adapter_name=adapter_name, prefix=None, metadata=config, low_cpu_mem_usage=True
    )
    set_adapter_alpha(transformer, alpha, adapter_name)
    return adapter_name


def set_adapter_alpha(transformer: nn.Module, alpha: float, adapter_name: str = "pusa") -> None:
    """Set the adapter's strength to `alpha` (recomputed, never accumulated: PEFT sets
    `scaling = alpha * lora_alpha / r`)."""
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha}")
    transformer.set_adapters([adapter_name], weights=[alpha])
