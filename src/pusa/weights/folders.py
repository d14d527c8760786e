"""Whole model folders: which layout a downloaded folder has (`find_layout`: diffusers or Wan's original,
see `weights.checkpoints`), where each component lives in it (`ModelFolder`), and all of them loaded
(`load_components`).

Kept apart from `weights.checkpoints`, which loads one component at a time, so that each file stays under
~500 lines; this one is the only other user of its private helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from safetensors import safe_open
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

from pusa.model import PusaTransformer3DModel

from .checkpoints import (
    WAN_VAE_NAME,
    CheckpointError,
    find_text_encoder,
    load_text_encoder_dirs,
    load_tokenizer,
    load_transformer,
    load_vae,
    read_json,
    safetensors_files,
)

__all__ = ["Components", "ModelFolder", "find_layout", "folder_bytes", "load_components"]

_TEXT_ENCODER_SUBFOLDERS = ("google/umt5-xxl", "umt5-xxl")


@dataclass(frozen=True)
class ModelFolder:
    """Where each component of a model folder lives."""

    layout: str  # "diffusers" or "wan-original"
    root: Path
    transformer: Path  # folder: config.json + safetensors
    vae: Path  # diffusers vae/ folder, or Wan2.1_VAE.pth
    text_encoder: Path  # folder: config.json + weights
    tokenizer: Path  # folder: spiece.model / tokenizer.json
    # two-expert models (Wan2.2): `transformer` is the high-noise expert, this the low-noise one
    transformer_2: Path | None = None

    @property
    def identity(self) -> str:
        return f"{self.layout}:{self.root}"


def _weights_problem(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return f"{folder / 'config.json'}"
    try:
        safetensors_files(folder)
    except CheckpointError:
        return f"{folder}/diffusion_pytorch_model*.safetensors"
    return None


def find_layout(model_dir: str | Path, text_encoder_dir: str | Path | None = None) -> ModelFolder:
    """Detect the layout of a downloaded model folder and locate its components.

    `text_encoder_dir` overrides where the umT5 encoder and tokenizer are looked for first (useful for
    Wan's original download, whose google/umt5-xxl folder holds only the tokenizer).
    """
    root = Path(model_dir).expanduser().resolve()
    if not root.is_dir():
        raise CheckpointError(f"model folder {root} does not exist")
    overrides = [Path(text_encoder_dir).expanduser().resolve()] if text_encoder_dir is not None else []

    transformer_2 = None
    expert_problems: list[str] = []
    if (root / "model_index.json").is_file() or (root / "transformer").is_dir():
        layout, transformer, vae = "diffusers", root / "transformer", root / "vae"
        text_candidates = [*overrides, root]
        vae_problem = _weights_problem(vae)
        index = root / "model_index.json"
        named = index.is_file() and bool(read_json(index).get("transformer_2"))
        if named or (root / "transformer_2").is_dir():
            transformer_2 = root / "transformer_2"
            problem = _weights_problem(transformer_2)
            if problem is not None:
                why = f"{index.name} names transformer_2" if named else "transformer_2/ exists"
                expert_problems.append(f"the low-noise expert {problem} ({why}; two-expert models need it)")
    elif (root / _HIGH).is_dir() or (root / _LOW).is_dir():
        # Wan2.2's own download (Wan-AI/Wan2.2-T2V-A14B): one folder per expert
        layout, transformer, transformer_2, vae = (
            "wan-original",
            root / _HIGH,
            root / _LOW,
            root / WAN_VAE_NAME,
        )
        text_candidates = [*overrides, *(root / sub for sub in _TEXT_ENCODER_SUBFOLDERS), root]
        vae_problem = None if vae.is_file() else str(vae)
        for name, which in ((_HIGH, "high"), (_LOW, "low")):
            problem = _weights_problem(root / name)
            if problem is not None:
                expert_problems.append(
                    f"the {which}-noise expert {problem} (a Wan2.2 folder has {_HIGH}/ and {_LOW}/, each "
                    "config.json + diffusion_pytorch_model-*.safetensors)"
                )
    elif (
        (root / "config.json").is_file()
        or (root / WAN_VAE_NAME).is_file()
        or any(root.glob("diffusion_pytorch_model*.safetensors"))
    ):
        layout, transformer, vae = "wan-original", root, root / WAN_VAE_NAME
        text_candidates = [*overrides, *(root / sub for sub in _TEXT_ENCODER_SUBFOLDERS), root]
        vae_problem = None if vae.is_file() else str(vae)
    else:
        raise CheckpointError(
            f"{root} is neither a diffusers layout (model_index.json, transformer/, vae/, text_encoder/, "
            f"tokenizer/) nor Wan's original layout (config.json, diffusion_pytorch_model-*.safetensors, "
            f"{WAN_VAE_NAME}, google/umt5-xxl/)"
        )

    first = None if layout == "wan-original" and transformer_2 is not None else _weights_problem(transformer)
    problems = [p for p in (first, vae_problem) if p is not None] + expert_problems
    text_encoder = tokenizer = None
    try:
        text_encoder, tokenizer = find_text_encoder(text_candidates)
    except CheckpointError as error:
        problems.append(str(error))
    if problems:
        raise CheckpointError(f"{root} ({layout} layout) is missing: " + "; ".join(problems))
    if transformer_2 is not None:
        check_experts_match(transformer / "config.json", transformer_2 / "config.json")
    assert text_encoder is not None and tokenizer is not None  # else a problem was raised above
    return ModelFolder(layout, root, transformer, vae, text_encoder, tokenizer, transformer_2)


_HIGH, _LOW = "high_noise_model", "low_noise_model"
# What must agree between the two experts' configs (diffusers' and Wan's names)
_SHAPE_KEYS = (
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim", "ffn_dim",
    "num_layers", "patch_size", "dim", "num_heads", "in_dim", "out_dim", "freq_dim",
)  # fmt: skip


def check_experts_match(high: Path, low: Path) -> None:
    """Both experts have the same shape (from their config files, before any weight is read); else a
    `CheckpointError` naming both files and what differs."""
    a, b = read_json(high), read_json(low)
    differ = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in _SHAPE_KEYS if a.get(k) != b.get(k)]
    if differ:
        raise CheckpointError(
            f"the experts do not match: {high} (high-noise) and {low} (low-noise) must describe DiTs of the "
            f"same shape; they differ in {'; '.join(differ)}"
        )


@dataclass
class Components:
    """Loaded models of one model folder."""

    transformer: PusaTransformer3DModel
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    identity: str  # e.g. "wan-original:/models/Wan2.1-T2V-14B"
    transformer_2: PusaTransformer3DModel | None = None  # the low-noise expert of a two-expert model


def _weights_bytes(path: Path, dtype: torch.dtype) -> int:
    """Bytes of a component's weights once loaded in `dtype`: its safetensors headers' element counts
    (no tensor read), else the size of its weight files on disk (a .pth, a .bin)."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    files = [f for f in files if f.suffix == ".safetensors"]
    if files:
        numel = 0
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    numel += math.prod(handle.get_slice(key).get_shape())
        return numel * torch.empty((), dtype=dtype).element_size()
    weights = [
        f for f in (path.iterdir() if path.is_dir() else [path]) if f.suffix in (".pth", ".bin", ".pt")
    ]
    return sum(f.stat().st_size for f in weights)


def folder_bytes(model_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """`{"transformer", "transformer_2", "text_encoder", "vae"}` -> bytes in `dtype` (the VAE: float32,
    as the pipeline loads it), from the files' headers and sizes alone: what a memory plan is decided
    from before any weight is read (`runtime.memory.plan_expert_memory`). A one-DiT folder's
    transformer_2 is 0."""
    folder = find_layout(model_dir)
    return {
        "transformer": _weights_bytes(folder.transformer, dtype),
        "transformer_2": 0 if folder.transformer_2 is None else _weights_bytes(folder.transformer_2, dtype),
        "text_encoder": _weights_bytes(folder.text_encoder, dtype),
        "vae": _weights_bytes(folder.vae, torch.float32),
    }


def load_components(
    model_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    text_encoder_dir: str | Path | None = None,
    vae_dtype: torch.dtype | None = None,
    read_transformer_2: bool = True,
    read_text_encoder: bool = True,
    text_vae_device: str | torch.device | None = None,
) -> Components:
    """All components of a model folder (see `find_layout`); the VAE uses `vae_dtype` if given.
    `read_transformer_2` False: the low-noise expert checked and built, its weights not read (placeholders,
    for `runtime.expert_stream`). `read_text_encoder` False: no text encoder (None; the tokenizer is read).
    `text_vae_device`: where the text encoder and VAE are read to (default: `device`)."""
    folder = find_layout(model_dir, text_encoder_dir)
    device = torch.device(device)
    io_device = device if text_vae_device is None else torch.device(text_vae_device)
    if read_text_encoder:
        text_encoder, tokenizer = load_text_encoder_dirs(
            folder.text_encoder, folder.tokenizer, dtype, io_device
        )
    else:
        text_encoder, tokenizer = None, load_tokenizer(folder.tokenizer)
    return Components(
        transformer=load_transformer(folder.transformer, dtype, device),
        vae=load_vae(folder.vae, vae_dtype or dtype, io_device),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        identity=folder.identity,
        transformer_2=(
            load_transformer(folder.transformer_2, dtype, device, read=read_transformer_2)
            if folder.transformer_2 is not None
            else None
        ),
    )
