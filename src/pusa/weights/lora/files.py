"""LoRA files and key formats: reading a `.pt`/`.pth`/`.safetensors` LoRA in any accepted key style into
`LoraWeights` (diffusers module names), and writing one in `pusa_v1.pt`'s style. The fuser, the adapter
path and the training stage read LoRAs through it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..checkpoints import CheckpointError

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
