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
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .checkpoints import CheckpointError
from .sources import pristine_source, read_pristine

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

LORA_ALPHA_MIN = 0.1
LORA_ALPHA_MAX = 5.0


# ---------------------------------------------------------------------------------------------------
# Key formats and files
# ---------------------------------------------------------------------------------------------------

# Wan's original module names -> diffusers', inside `blocks.{i}.`
_BLOCK_MODULES = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    # norms, which some LoRAs (LightX2V's) adjust with full `.diff` tensors
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",  # Wan's cross-attention norm is diffusers' norm2
}
# The Linear layers Pusa's LoRA (pusa_v1.pt) adapts in every block, in diffusers' names: Wan's
# self_attn.{q,k,v,o}, cross_attn.{q,k,v,o}, ffn.0, ffn.2.
PUSA_LORA_TARGETS = tuple(
    _BLOCK_MODULES[name]
    for name in (*(f"{attn}.{x}" for attn in ("self_attn", "cross_attn") for x in "qkvo"), "ffn.0", "ffn.2")
)
# ... and outside the blocks.
_TOP_MODULES = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "head.head": "proj_out",
}
_BLOCK_MODULES_INVERSE = {v: k for k, v in _BLOCK_MODULES.items()}
_TOP_MODULES_INVERSE = {v: k for k, v in _TOP_MODULES.items()}
_BLOCK_MODULE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LORA_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.")
_LORA_MATRIX = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[^.]+))?\.weight$"
)
_LORA_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
# Full-tensor deltas some LoRAs carry beside the low-rank ones: `.diff` (weight) and `.diff_b` (bias).
_LORA_DIFF = re.compile(r"^(?P<module>.+)\.(?P<kind>diff|diff_b)$")
_LORA_KEYS_HELP = (
    "expected keys like blocks.0.self_attn.q.lora_A.default.weight / .lora_B.default.weight (PEFT, with or "
    "without diffusion_model. and .default), .lora_down.weight / .lora_up.weight (+ .alpha), or diffusers "
    "naming blocks.0.attn1.to_q.lora_A.weight; full deltas .diff / .diff_b are accepted too"
)


def _diffusers_module_name(name: str) -> str:
    block = _BLOCK_MODULE.match(name)
    if block:
        return f"blocks.{block[1]}.{_BLOCK_MODULES.get(block[2], block[2])}"
    return _TOP_MODULES.get(name, name)


def _original_module_name(name: str) -> str:
    block = _BLOCK_MODULE.match(name)
    if block and block[2] in _BLOCK_MODULES_INVERSE:
        return f"blocks.{block[1]}.{_BLOCK_MODULES_INVERSE[block[2]]}"
    if name in _TOP_MODULES_INVERSE:
        return _TOP_MODULES_INVERSE[name]
    raise ValueError(f"module {name} has no name in Wan's original naming")


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA as `{diffusers module name: (down [r, in], up [out, r])}`; the delta is `up @ down`, with any
    `.alpha / rank` scale of the file already folded into `up`."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    source: str
    # diffusers module name -> the key of its down matrix in the file, for error messages
    file_keys: dict[str, str] = field(default_factory=dict)
    # full-tensor deltas: {diffusers module name: {"weight" | "bias": delta}}, scaled by alpha like the rest
    diffs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def file_key(self, module: str) -> str:
        return self.file_keys.get(module, module)


def _read_lora_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"LoRA file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"LoRA file {path}: unknown extension; expected .safetensors, .pt or .pth")
    except CheckpointError:
        raise
    except Exception as error:  # torch/safetensors raise many types for a bad file
        raise CheckpointError(f"cannot read LoRA file {path}: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"LoRA file {path} holds a {type(state).__name__}, not a state dict")
    return state


def load_lora(path: str | Path) -> LoraWeights:
    """A LoRA file (`.pt`/`.pth` or `.safetensors`) in any of the accepted key styles (see module doc)."""
    path = Path(path).expanduser()
    state = _read_lora_file(path)
    if not state:
        raise CheckpointError(f"LoRA file {path} is empty")

    matrices: dict[tuple[str, str], tuple[torch.Tensor, str]] = {}  # (module, "down"/"up") -> (tensor, key)
    file_keys: dict[str, str] = {}
    alphas: dict[str, tuple[float, str]] = {}
    diffs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"LoRA file {path}: key {key} holds a {type(value).__name__}, not a tensor")
        name = next((key[len(p) :] for p in _LORA_PREFIXES if key.startswith(p)), key)
        matrix, alpha, diff = _LORA_MATRIX.match(name), _LORA_ALPHA.match(name), _LORA_DIFF.match(name)
        if diff:
            module = _diffusers_module_name(diff["module"])
            diffs.setdefault(module, {})["weight" if diff["kind"] == "diff" else "bias"] = value
            file_keys.setdefault(module, key)
        elif matrix:
            module = _diffusers_module_name(matrix["module"])
            role = "down" if matrix["kind"] in ("lora_A", "lora_down") else "up"
            if value.ndim != 2:
                raise CheckpointError(
                    f"LoRA file {path}: key {key} has shape {list(value.shape)}; expected a matrix"
                )
            if (module, role) in matrices:
                raise CheckpointError(
                    f"LoRA file {path}: keys {matrices[(module, role)][1]} and {key} both give the {role} matrix of {module}"
                )
            matrices[(module, role)] = (value, key)
        elif alpha:
            if value.numel() != 1:
                raise CheckpointError(
                    f"LoRA file {path}: key {key} should be a scalar alpha, has shape {list(value.shape)}"
                )
            alphas[_diffusers_module_name(alpha["module"])] = (float(value), key)
        else:
            raise CheckpointError(f"LoRA file {path}: key {key} is not a LoRA weight; {_LORA_KEYS_HELP}")

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in dict.fromkeys(m for m, _ in matrices):
        if (module, "down") not in matrices or (module, "up") not in matrices:
            present, absent = ("down", "up") if (module, "down") in matrices else ("up", "down")
            raise CheckpointError(
                f"LoRA file {path}: key {matrices[(module, present)][1]} has no matching {absent} matrix "
                "(lora_B/lora_up for lora_A/lora_down and vice versa)"
            )
        (down, down_key), (up, up_key) = matrices[(module, "down")], matrices[(module, "up")]
        rank = down.shape[0]
        if up.shape[1] != rank:
            raise CheckpointError(
                f"LoRA file {path}: {down_key} {list(down.shape)} and {up_key} {list(up.shape)} disagree on the rank"
            )
        if module in alphas:
            # LightX2V/kohya convention: the delta is (alpha / rank) * up @ down.
            up = up.float() * (alphas.pop(module)[0] / rank)
        modules[module] = (down, up)
        file_keys[module] = down_key
    if alphas:
        key = next(iter(alphas.values()))[1]
        raise CheckpointError(f"LoRA file {path}: key {key} is an alpha with no lora_down/lora_up matrices")
    return LoraWeights(modules=modules, source=str(path), file_keys=file_keys, diffs=diffs)


def to_original_lora_keys(
    lora: LoraWeights | Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """`{diffusers module: (down, up)}` -> PEFT keys in Wan's original naming, as in `pusa_v1.pt`
    (`blocks.{i}.self_attn.q.lora_A.default.weight` = down, `...lora_B.default.weight` = up)."""
    modules = lora.modules if isinstance(lora, LoraWeights) else lora
    state: dict[str, torch.Tensor] = {}
    for module, (down, up) in modules.items():
        original = _original_module_name(module)
        state[f"{original}.lora_A.default.weight"] = down.contiguous()
        state[f"{original}.lora_B.default.weight"] = up.contiguous()
    return state


def save_lora_original(
    lora: LoraWeights | Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path
) -> None:
    """Write a LoRA in `pusa_v1.pt`'s key style: `.safetensors` by extension, else a torch file."""
    path = Path(path)
    state = to_original_lora_keys(lora)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


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


# ---------------------------------------------------------------------------------------------------
# Trainable (the VTA stage of pusa.train)
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Unfused LoRA (PEFT adapter through diffusers)
# ---------------------------------------------------------------------------------------------------


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
