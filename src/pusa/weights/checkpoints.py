"""Real weights from local folders, and the Pusa LoRA with exact alpha (pusa-algorithm.md section 3).

Two on-disk layouts are understood, and nothing here touches the network:
- diffusers (e.g. Wan-AI/Wan2.1-T2V-14B-Diffusers): `model_index.json`, `transformer/`, `vae/`,
  `text_encoder/`, `tokenizer/`, each with a `config.json` and safetensors weights (maybe sharded).
- Wan's original (e.g. Wan-AI/Wan2.1-T2V-14B): a Wan `config.json` (`dim`, `num_heads`, ...),
  `diffusion_pytorch_model-0000X-of-0000N.safetensors` shards in Wan's key naming, `Wan2.1_VAE.pth`,
  and a `google/umt5-xxl` folder. Keys are converted with diffusers' own converters.

Every load is strict: a missing, unexpected or wrongly shaped tensor raises `CheckpointError` naming
the file and the keys before any weight is read. Models are built on the meta device and the tensors
assigned shard by shard, so a 14B model is never held twice.

The LoRA is fused into the Linear weights: `W' = W + alpha * (up @ down)`, always recomputed from a
pristine copy of `W`, so a change of alpha never accumulates (upstream's demo does accumulate).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import (
    convert_wan_transformer_to_diffusers,
    convert_wan_vae_to_diffusers,
)
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from pusa.model import PusaTransformer3DModel

__all__ = [
    "LORA_ALPHA_MAX",
    "LORA_ALPHA_MIN",
    "CheckpointError",
    "Components",
    "LoraFuser",
    "LoraWeights",
    "ModelFolder",
    "find_layout",
    "load_components",
    "load_lora",
    "load_text_encoder",
    "load_transformer",
    "load_vae",
    "save_lora_original",
    "to_original_lora_keys",
    "validate_lora_alpha",
]

logger = logging.getLogger(__name__)

LORA_ALPHA_MIN = 0.1
LORA_ALPHA_MAX = 5.0

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
WAN_VAE_NAME = "Wan2.1_VAE.pth"
# Wan's .pth holds weights only; a VAE config may sit beside it under this name (else diffusers' defaults,
# which are Wan2.1's VAE). A `config.json` beside it is used only if it is a VAE config: in Wan's
# original layout the `config.json` there is the DiT's.
WAN_VAE_CONFIG_NAME = "vae_config.json"
_SHARD_NAME = re.compile(r"^diffusion_pytorch_model-(\d+)-of-(\d+)\.safetensors$")
_TEXT_ENCODER_SUBFOLDERS = ("google/umt5-xxl", "umt5-xxl")

_LAYOUTS_HELP = (
    "expected a diffusers-layout folder (config.json + diffusion_pytorch_model*.safetensors) or Wan's "
    "original layout (Wan config.json with dim/num_heads/... + diffusion_pytorch_model-0000X-of-0000N."
    "safetensors shards)"
)
_MAX_LISTED = 5


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, malformed, or does not fit the model it is loaded into."""


# ---------------------------------------------------------------------------------------------------
# Strict loading helpers
# ---------------------------------------------------------------------------------------------------


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _init_kwargs(config: dict[str, Any], reference: type, source: Path) -> dict[str, Any]:
    """The config entries that `reference.__init__` takes; the rest (`_class_name`, ...) are dropped."""
    accepted = set(inspect.signature(reference.__init__).parameters) - {"self"}
    ignored = sorted(k for k in config if k not in accepted and not k.startswith("_"))
    if ignored:
        logger.warning("%s: ignoring config entries %s unknown to %s", source, ignored, reference.__name__)
    return {k: v for k, v in config.items() if k in accepted}


def _safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a folder: an index's shards, a single file, or a complete set of shards."""
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shards that are not in {folder}: {_listed(absent)}")
        return files
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    shards = sorted(
        p for p in folder.glob("diffusion_pytorch_model-*-of-*.safetensors") if _SHARD_NAME.match(p.name)
    )
    if not shards:
        raise CheckpointError(
            f"no {WEIGHTS_NAME}, {WEIGHTS_INDEX_NAME} or diffusion_pytorch_model-0000X-of-0000N.safetensors "
            f"in {folder}: {_LAYOUTS_HELP}"
        )
    totals = {int(_SHARD_NAME.match(p.name).group(2)) for p in shards}
    if len(totals) != 1:
        raise CheckpointError(
            f"{folder} mixes shard sets of different sizes: {_listed([p.name for p in shards])}"
        )
    total = totals.pop()
    present = {int(_SHARD_NAME.match(p.name).group(1)) for p in shards}
    absent = [
        f"diffusion_pytorch_model-{i:05d}-of-{total:05d}.safetensors"
        for i in range(1, total + 1)
        if i not in present
    ]
    if absent:
        raise CheckpointError(f"{folder} is missing shards: {_listed(absent)}")
    return shards


def _read_headers(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """key -> (shape, file), from the safetensors headers only (no tensor is read)."""
    headers: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    if key in headers:
                        raise CheckpointError(f"key {key} is in both {headers[key][1]} and {file}")
                    headers[key] = (tuple(handle.get_slice(key).get_shape()), file)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"cannot read safetensors file {file}: {error}") from error
    return headers


def _check_fit(
    model: nn.Module,
    found: dict[str, tuple[tuple[int, ...], str]],
    where: Path,
    hint: str = "",
) -> None:
    """Raise unless `found` (model key -> (shape, where the key is, in the file's own words)) has exactly
    the model's keys and shapes."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = [f"{name} {list(expected[name])}" for name in expected if name not in found]
    unexpected = [found[name][1] for name in found if name not in expected]
    wrong_shape = [
        f"{origin} is {list(shape)}, the model's {name} is {list(expected[name])}"
        for name, (shape, origin) in found.items()
        if name in expected and shape != expected[name]
    ]
    if not (missing or unexpected or wrong_shape):
        return
    lines = [f"{where} does not fit {type(model).__name__}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s) the model needs: {_listed(missing)}")
    if unexpected:
        lines.append(
            f"  {len(unexpected)} unexpected key(s) the model has no place for: {_listed(unexpected)}"
        )
    if wrong_shape:
        lines.append(f"  {len(wrong_shape)} key(s) with the wrong shape: {_listed(wrong_shape)}")
    if hint:
        lines.append(hint)
    raise CheckpointError("\n".join(lines))


def _cast(name: str, tensor: torch.Tensor, dtype: torch.dtype, keep_in_fp32: list[str]) -> torch.Tensor:
    # The same rule as diffusers' from_pretrained, so both layouts give bit-identical models.
    if not torch.is_floating_point(tensor):
        return tensor
    if any(module in name.split(".") for module in keep_in_fp32):
        return tensor.to(torch.float32)
    return tensor.to(dtype)


def _assign(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    keep_in_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    cast = {name: _cast(name, tensor, dtype, keep_in_fp32) for name, tensor in state.items()}
    model.load_state_dict(cast, strict=False, assign=True)


def _load_safetensors_folder(
    model: nn.Module,
    folder: Path,
    dtype: torch.dtype,
    device: torch.device,
    rename: Mapping[str, str] | None = None,
    hint: str = "",
) -> None:
    """Check every header against the empty model, then read and assign one shard at a time."""
    files = _safetensors_files(folder)
    headers = _read_headers(files)
    rename = rename or {}
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, (shape, file) in headers.items():
        name = rename.get(key, key)
        as_name = f" (read as {name})" if name != key else ""
        found[name] = (shape, f"{key} in {file.name}{as_name}")
    _check_fit(model, found, folder, hint)
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as handle:
            shard = {rename.get(key, key): handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        _assign(model, shard, dtype)


# ---------------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------------


def _diffusers_config_from_wan(
    config: dict[str, Any], headers: Mapping[str, Any], source: Path
) -> dict[str, Any]:
    """Wan's original DiT config (`dim`, `num_heads`, ...) -> `WanTransformer3DModel` keyword arguments."""
    absent = [key for key in ("dim", "num_heads", "num_layers", "ffn_dim") if key not in config]
    if absent:
        raise CheckpointError(f"{source} lacks {', '.join(absent)}: {_LAYOUTS_HELP}")
    dim, num_heads = int(config["dim"]), int(config["num_heads"])
    if dim % num_heads:
        raise CheckpointError(f"{source}: dim {dim} is not a multiple of num_heads {num_heads}")
    text_weight = headers.get("text_embedding.0.weight")
    kwargs: dict[str, Any] = {
        "patch_size": [int(p) for p in config.get("patch_size", (1, 2, 2))],
        "num_attention_heads": num_heads,
        "attention_head_dim": dim // num_heads,
        "in_channels": int(config.get("in_dim", 16)),
        "out_channels": int(config.get("out_dim", 16)),
        "text_dim": int(text_weight[0][1]) if text_weight is not None else 4096,
        "freq_dim": int(config.get("freq_dim", 256)),
        "ffn_dim": int(config["ffn_dim"]),
        "num_layers": int(config["num_layers"]),
        "cross_attn_norm": bool(config.get("cross_attn_norm", True)),
        "qk_norm": "rms_norm_across_heads" if config.get("qk_norm", True) else None,
        "eps": float(config.get("eps", 1e-6)),
        "rope_max_seq_len": 1024,
    }
    image_norm = headers.get("img_emb.proj.0.weight")  # I2V checkpoints: CLIP image features
    if image_norm is not None:
        kwargs["image_dim"] = int(image_norm[0][0])
        kwargs["added_kv_proj_dim"] = dim
    return kwargs


def load_transformer(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> PusaTransformer3DModel:
    """The DiT from a diffusers `transformer/` folder or a folder in Wan's original layout, loaded strictly.

    Parameters that diffusers keeps in float32 (`time_embedder`, `scale_shift_table`, `norm2`, ...) stay
    float32 whatever `dtype` is, exactly as `from_pretrained` does.
    """
    folder = Path(path).expanduser()
    device = torch.device(device)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"transformer folder {folder} does not exist: {_LAYOUTS_HELP}")
    if not config_path.is_file():
        nested = " (did you mean its transformer/ subfolder?)" if (folder / "transformer").is_dir() else ""
        raise CheckpointError(f"no config.json in {folder}{nested}: {_LAYOUTS_HELP}")
    config = _read_json(config_path)

    if "num_attention_heads" in config:
        kwargs = _init_kwargs(config, WanTransformer3DModel, config_path)
        rename: dict[str, str] = {}
        hint = ""
    elif "dim" in config:
        headers = _read_headers(_safetensors_files(folder))
        kwargs = _diffusers_config_from_wan(config, headers, config_path)
        # The converter renames by substring; it is fed the key names alone to learn the renaming.
        converted = convert_wan_transformer_to_diffusers({key: key for key in headers})
        rename = {original: name for name, original in converted.items()}
        if len(rename) != len(headers):
            raise CheckpointError(
                f"{folder}: diffusers' Wan converter split or merged keys; unsupported checkpoint"
            )
        hint = f"(converted from Wan's original naming with {kwargs})"
    else:
        raise CheckpointError(f"{config_path} has neither num_attention_heads nor dim: {_LAYOUTS_HELP}")

    with init_empty_weights():  # parameters on meta; buffers (rope tables) real
        model = PusaTransformer3DModel(**kwargs)
    _load_safetensors_folder(model, folder, dtype, device, rename, hint)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------


def _is_vae_config(config: dict[str, Any]) -> bool:
    return config.get("_class_name") == "AutoencoderKLWan" or "base_dim" in config


def _wan_vae_config(pth: Path) -> tuple[dict[str, Any], Path | None]:
    for candidate in (pth.parent / WAN_VAE_CONFIG_NAME, pth.parent / "config.json"):
        if candidate.is_file():
            config = _read_json(candidate)
            if _is_vae_config(config):
                return _init_kwargs(config, AutoencoderKLWan, candidate), candidate
    return {}, None


def load_vae(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> AutoencoderKLWan:
    """The Wan VAE from a diffusers `vae/` folder, or Wan's original `Wan2.1_VAE.pth` (the file or its
    folder), loaded strictly."""
    path = Path(path).expanduser()
    device = torch.device(device)
    if (
        path.is_dir()
        and (path / "config.json").is_file()
        and _is_vae_config(_read_json(path / "config.json"))
    ):
        config_path = path / "config.json"
        with init_empty_weights():
            model = AutoencoderKLWan(**_init_kwargs(_read_json(config_path), AutoencoderKLWan, config_path))
        _load_safetensors_folder(model, path, dtype, device)
        return model.to(device).eval()

    pth = path / WAN_VAE_NAME if path.is_dir() else path
    if not pth.is_file() or pth.suffix not in (".pth", ".pt"):
        raise CheckpointError(
            f"no VAE at {path}: expected a diffusers vae/ folder (config.json with AutoencoderKLWan + "
            f"{WEIGHTS_NAME}) or Wan's original {WAN_VAE_NAME}"
        )
    try:
        checkpoint = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad pickle
        raise CheckpointError(f"cannot read {pth} as a weights-only torch file: {error}") from error
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{pth} is not a state dict of tensors")
    state = convert_wan_vae_to_diffusers(checkpoint)
    config, config_path = _wan_vae_config(pth)
    with init_empty_weights():
        model = AutoencoderKLWan(**config)
    config_note = (
        f"the config in {config_path}" if config_path else "diffusers' default AutoencoderKLWan config"
    )
    found = {name: (tuple(t.shape), f"{name} (converted from {pth.name})") for name, t in state.items()}
    _check_fit(
        model,
        found,
        pth,
        f"(built with {config_note}; diffusers' converter assumes Wan2.1's VAE structure: "
        "dim_mult [1, 2, 4, 4], num_res_blocks 2)",
    )
    _assign(model, state, dtype)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------------


def _is_text_encoder_dir(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file() or "d_model" not in _read_json(config):
        return False
    return any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _is_tokenizer_dir(folder: Path) -> bool:
    return (folder / "spiece.model").is_file() or (folder / "tokenizer.json").is_file()


def _find_text_encoder(candidates: list[Path]) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder): each candidate may hold `text_encoder/` + `tokenizer/`, or be a
    `google/umt5-xxl`-style folder with both in it."""
    encoder_dirs = [d for c in candidates for d in (c / "text_encoder", c)]
    tokenizer_dirs = [d for c in candidates for d in (c / "tokenizer", c)]
    encoder = next((d for d in encoder_dirs if _is_text_encoder_dir(d)), None)
    tokenizer = next((d for d in tokenizer_dirs if _is_tokenizer_dir(d)), None)
    problems = []
    if encoder is None:
        problems.append(
            "no umT5 encoder (config.json with d_model + model*.safetensors or pytorch_model*.bin) in any of "
            + ", ".join(str(d) for d in encoder_dirs)
            + ". Wan's models_t5_umt5-xxl-enc-bf16.pth has no converter: use the text_encoder/ folder of "
            "Wan-AI/Wan2.1-T2V-14B-Diffusers or a full google/umt5-xxl download"
        )
    if tokenizer is None:
        problems.append(
            "no tokenizer (spiece.model or tokenizer.json) in any of " + ", ".join(map(str, tokenizer_dirs))
        )
    if problems:
        raise CheckpointError("; ".join(problems))
    return encoder, tokenizer


def _load_text_encoder_dirs(
    encoder_dir: Path, tokenizer_dir: Path, dtype: torch.dtype, device: torch.device
) -> tuple[UMT5EncoderModel, PreTrainedTokenizerBase]:
    try:
        encoder, info = UMT5EncoderModel.from_pretrained(
            encoder_dir, local_files_only=True, dtype=dtype, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"cannot load the text encoder from {encoder_dir} / {tokenizer_dir}: {error}"
        ) from error
    # A full umt5-xxl (encoder-decoder) checkpoint carries a decoder we do not need.
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(("decoder.", "lm_head."))]
    missing = sorted(info["missing_keys"])
    mismatched = [str(entry) for entry in info["mismatched_keys"]]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{encoder_dir} does not fit UMT5EncoderModel: missing {_listed(missing) or 'none'}; "
            f"unexpected {_listed(sorted(unexpected)) or 'none'}; wrong shape {_listed(mismatched) or 'none'}"
        )
    return encoder.to(device).eval(), tokenizer


def load_text_encoder(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[UMT5EncoderModel, PreTrainedTokenizerBase]:
    """umT5 encoder + tokenizer from a folder with `text_encoder/` + `tokenizer/` subfolders (diffusers)
    or a `google/umt5-xxl`-style folder holding config, weights and tokenizer files together."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(
            f"text encoder folder {folder} does not exist: expected text_encoder/ + tokenizer/ subfolders "
            "or a google/umt5-xxl-style folder"
        )
    encoder_dir, tokenizer_dir = _find_text_encoder([folder])
    return _load_text_encoder_dirs(encoder_dir, tokenizer_dir, dtype, torch.device(device))


# ---------------------------------------------------------------------------------------------------
# Whole model folders
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFolder:
    """Where each component of a model folder lives."""

    layout: str  # "diffusers" or "wan-original"
    root: Path
    transformer: Path  # folder: config.json + safetensors
    vae: Path  # diffusers vae/ folder, or Wan2.1_VAE.pth
    text_encoder: Path  # folder: config.json + weights
    tokenizer: Path  # folder: spiece.model / tokenizer.json

    @property
    def identity(self) -> str:
        return f"{self.layout}:{self.root}"


def _weights_problem(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return f"{folder / 'config.json'}"
    try:
        _safetensors_files(folder)
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

    if (root / "model_index.json").is_file() or (root / "transformer").is_dir():
        layout, transformer, vae = "diffusers", root / "transformer", root / "vae"
        text_candidates = [*overrides, root]
        vae_problem = _weights_problem(vae)
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

    problems = [p for p in (_weights_problem(transformer), vae_problem) if p is not None]
    text_encoder = tokenizer = None
    try:
        text_encoder, tokenizer = _find_text_encoder(text_candidates)
    except CheckpointError as error:
        problems.append(str(error))
    if problems:
        raise CheckpointError(f"{root} ({layout} layout) is missing: " + "; ".join(problems))
    return ModelFolder(layout, root, transformer, vae, text_encoder, tokenizer)


@dataclass
class Components:
    """Loaded models of one model folder."""

    transformer: PusaTransformer3DModel
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    identity: str  # e.g. "wan-original:/models/Wan2.1-T2V-14B"


def load_components(
    model_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    text_encoder_dir: str | Path | None = None,
    vae_dtype: torch.dtype | None = None,
) -> Components:
    """All components of a model folder (see `find_layout`); the VAE uses `vae_dtype` if given."""
    folder = find_layout(model_dir, text_encoder_dir)
    device = torch.device(device)
    text_encoder, tokenizer = _load_text_encoder_dirs(folder.text_encoder, folder.tokenizer, dtype, device)
    return Components(
        transformer=load_transformer(folder.transformer, dtype, device),
        vae=load_vae(folder.vae, vae_dtype or dtype, device),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        identity=folder.identity,
    )


# ---------------------------------------------------------------------------------------------------
# LoRA
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


def _pristine_copy(param: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of `param` on `device`; page-locked when it is a CPU copy of a CUDA weight, so that a re-fuse
    reads it back at bus speed (a 14B DiT's targets are ~27 GB)."""
    copy = param.detach().to(device, copy=True)
    if device.type == "cpu" and param.device.type == "cuda":
        copy = copy.pin_memory()
    return copy


class LoraFuser:
    """Fuses a LoRA into the model's Linear weights at a chosen alpha: `W' = W + alpha * (up @ down)`.

    Each targeted weight is kept pristine (on `pristine_device`), and every `set_alpha` recomputes from
    it in float32, so the weights after any sequence of alphas equal a fresh fuse at the last one.
    """

    def __init__(
        self, model: nn.Module, lora: LoraWeights, pristine_device: str | torch.device = "cpu"
    ) -> None:
        named = dict(model.named_modules())
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
        self.lora = lora
        # (module name, "weight" | "bias") -> the parameter it changes
        self._targets: dict[tuple[str, str], torch.Tensor] = {
            (name, "weight"): named[name].weight for name in lora.modules
        }
        for name, deltas in lora.diffs.items():
            for kind in deltas:
                self._targets[(name, kind)] = getattr(named[name], kind)
        self._pristine: dict[tuple[str, str], torch.Tensor] | None = {
            target: _pristine_copy(param, torch.device(pristine_device))
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
            pristine = self._pristine[(name, kind)].to(param.device, non_blocking=True)
            fused = pristine.to(torch.float32) + alpha * delta
            param.copy_(fused.to(param.dtype))
        self._alpha = alpha

    @torch.no_grad()
    def remove(self) -> None:
        """Restore the pristine weights bit for bit and drop the copies."""
        if self._pristine is None:
            return
        for target, param in self._targets.items():
            param.copy_(self._pristine[target])
        self._pristine = None
        self._alpha = 0.0
