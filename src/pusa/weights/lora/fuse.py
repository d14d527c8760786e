"""Fusing a LoRA into the DiT's Linear weights with exact alpha (`LoraFuser`, docs/algorithm.md, "LoRA formats and strength"):
`W' = W + alpha * (up @ down)`, always from the pristine `W`; the checks that a LoRA fits a model
(`check_lora_fits`), its per-parameter delta (`lora_delta`, which `weights.stack` sums) and the user's
alpha range (`validate_lora_alpha`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checkpoints import CheckpointError
from ..sources import pristine_source, read_pristine
from .files import LoraWeights

LORA_ALPHA_MIN = 0.1
LORA_ALPHA_MAX = 5.0


def validate_lora_alpha(alpha: float) -> float:
    """The user's LoRA alpha as a float, or a ValueError naming `lora_alpha`, the value and the range."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(alpha, bool) or not LORA_ALPHA_MIN <= value <= LORA_ALPHA_MAX:  # NaN fails the comparison
        raise ValueError(f"lora_alpha must be between {LORA_ALPHA_MIN} and {LORA_ALPHA_MAX}; got {alpha!r}")
    return value


def check_lora_fits(model: nn.Module, lora: LoraWeights) -> dict[tuple[str, str], torch.Tensor]:
    """The parameters `lora` changes, `{(module name, "weight" | "bias"): parameter}`; a `CheckpointError`
    naming the file and the key when it matches nothing in `model` or a delta does not fit its target."""
    # a Linear that holds PEFT adapters already (`AdapterStack`) is looked at as its base Linear
    named = {name: getattr(module, "base_layer", module) for name, module in model.named_modules()}
    names = list(dict.fromkeys([*lora.modules, *lora.diffs]))
    if not any(name in named for name in names):
        first = [lora.file_key(m) for m in names[:3]]
        raise CheckpointError(
            f"LoRA file {lora.source}: none of its {len(names)} keys match the model "
            f"(first keys: {', '.join(first)}); expected Wan/Pusa LoRA keys such as "
            "blocks.0.self_attn.q.lora_A.weight"
        )
    for name, (down, up) in lora.modules.items():
        module = named.get(name)
        key = lora.file_key(name)
        if not isinstance(module, nn.Linear):
            what = "no module" if module is None else f"a {type(module).__name__}, not a Linear"
            raise CheckpointError(
                f"LoRA file {lora.source}: key {key} targets {name}, which is {what} in the model"
            )
        delta_shape = [up.shape[0], down.shape[1]]
        if delta_shape != list(module.weight.shape):
            raise CheckpointError(
                f"LoRA file {lora.source}: key {key} gives {name} a delta of shape {delta_shape} "
                f"(up {list(up.shape)} @ down {list(down.shape)}); the model's {name}.weight is "
                f"{list(module.weight.shape)}"
            )
    for name, deltas in lora.diffs.items():
        module = named.get(name)
        for kind, delta in deltas.items():
            param = getattr(module, kind, None) if module is not None else None
            if not isinstance(param, torch.Tensor) or list(param.shape) != list(delta.shape):
                have = "nothing" if param is None else f"shape {list(getattr(param, 'shape', []))}"
                raise CheckpointError(
                    f"LoRA file {lora.source}: a .diff{'_b' if kind == 'bias' else ''} delta of shape "
                    f"{list(delta.shape)} targets {name}.{kind}, which has {have} in the model"
                )
    targets: dict[tuple[str, str], torch.Tensor] = {
        (name, "weight"): named[name].weight for name in lora.modules
    }
    for name, deltas in lora.diffs.items():
        for kind in deltas:
            targets[(name, kind)] = getattr(named[name], kind)
    return targets


def lora_delta(lora: LoraWeights, name: str, kind: str, device: torch.device) -> torch.Tensor | None:
    """The float32 delta `lora` adds to `name.kind` at strength 1 (`up @ down`, plus any `.diff`), or None."""
    delta = None
    if kind == "weight" and name in lora.modules:
        down, up = lora.modules[name]
        delta = up.to(device, torch.float32) @ down.to(device, torch.float32)  # [out, in]
    extra = lora.diffs.get(name, {}).get(kind)
    if extra is not None:
        extra = extra.to(device, torch.float32)
        delta = extra if delta is None else delta + extra
    return delta


class LoraFuser:
    """Fuses a LoRA into the model's Linear weights at a chosen alpha: `W' = W + alpha * (up @ down)`.

    Each targeted weight is kept pristine (on `pristine_device`), and every `set_alpha` recomputes from
    it in float32, so the weights after any sequence of alphas equal a fresh fuse at the last one.
    """

    def __init__(
        self, model: nn.Module, lora: LoraWeights, pristine_device: str | torch.device = "cpu"
    ) -> None:
        self._targets: dict[tuple[str, str], torch.Tensor] = check_lora_fits(model, lora)
        self.lora = lora
        self._model = model
        # read again from the DiT's files when they reproduce it, else a copy (`sources.pristine_source`)
        self._pristine: dict[tuple[str, str], torch.Tensor | str] | None = {
            target: pristine_source(model, f"{target[0]}.{target[1]}", param, torch.device(pristine_device))
            for target, param in self._targets.items()
        }
        self._alpha = 0.0

    @property
    def alpha(self) -> float:
        """The alpha currently fused (0.0 before the first `set_alpha` and after `remove`)."""
        return self._alpha

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> None:
        """Fuse at `alpha` from the pristine weights (user input is checked by `validate_lora_alpha`)."""
        alpha = float(alpha)
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0; got {alpha}")
        if self._pristine is None:
            raise RuntimeError("this LoraFuser was removed; build a new one")
        for (name, kind), param in self._targets.items():
            delta = torch.zeros((), device=param.device)
            if kind == "weight" and name in self.lora.modules:
                down, up = self.lora.modules[name]
                delta = up.to(param.device, torch.float32) @ down.to(param.device, torch.float32)  # [out, in]
            extra = self.lora.diffs.get(name, {}).get(kind)
            if extra is not None:
                delta = delta + extra.to(param.device, torch.float32)
            pristine = read_pristine(self._model, self._pristine[(name, kind)], param.device)
            fused = pristine.to(torch.float32) + alpha * delta
            param.copy_(fused.to(param.dtype))
        self._alpha = alpha

    @torch.no_grad()
    def remove(self) -> None:
        """Restore the pristine weights bit for bit and drop the copies."""
        if self._pristine is None:
            return
        for target, param in self._targets.items():
            param.copy_(read_pristine(self._model, self._pristine[target], param.device))
        self._pristine = None
        self._alpha = 0.0
