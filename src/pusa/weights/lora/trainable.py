"""The trainable LoRA that the VTA stage of `pusa.train` learns: a float32 delta `up @ down` beside a frozen
Linear (`LoraLinear`, `add_lora`), read out as `{module: (down, up)}` for `save_lora_original`
(`lora_state`). At alpha 1 it is exactly what `LoraFuser` adds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .files import PUSA_LORA_TARGETS


class LoraLinear(nn.Module):
    """`base(x) + x @ down.T @ up.T`: a trainable low-rank delta `up @ down` beside a frozen Linear.

    `up` starts at zero, so the wrapped model starts equal to the base. No rank scaling: the delta is exactly
    what `LoraFuser` adds at alpha 1.
    """

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(
            F.linear(x.to(self.down.dtype), self.down), self.up
        )  # float32 LoRA on any base dtype
        return self.base(x) + delta.to(x.dtype)


def add_lora(
    model: nn.Module, rank: int, targets: Iterable[str] = PUSA_LORA_TARGETS
) -> dict[str, LoraLinear]:
    """Wrap every `blocks.{i}.<target>` Linear of `model` in a `LoraLinear`; returns them by module name."""
    wrapped = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not any(name.endswith("." + t) for t in targets):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lora = LoraLinear(module, rank).to(module.weight.device)
        setattr(parent, child, lora) if not child.isdigit() else parent.__setitem__(int(child), lora)
        wrapped[name] = lora
    if not wrapped:
        raise ValueError(f"no Linear named like {list(targets)} in the model")
    return wrapped


def lora_state(wrapped: dict[str, LoraLinear]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{diffusers module name: (down [r, in], up [out, r])}`, the form `save_lora_original` takes."""
    return {name: (m.down.detach().clone(), m.up.detach().clone()) for name, m in wrapped.items()}
