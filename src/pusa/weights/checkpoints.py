"""Real weights from local folders: the checkpoint layouts, and each component (transformer, VAE, text
encoder) loaded on its own; a whole model folder at once is `weights.folders`.

Two on-disk layouts are understood, and nothing here touches the network:
- diffusers (e.g. Wan-AI/Wan2.1-T2V-14B-Diffusers): `model_index.json`, `transformer/`, `vae/`,
  `text_encoder/`, `tokenizer/`, each with a `config.json` and safetensors weights (maybe sharded).
- Wan's original (e.g. Wan-AI/Wan2.1-T2V-14B): a Wan `config.json` (`dim`, `num_heads`, ...),
  `diffusion_pytorch_model-0000X-of-0000N.safetensors` shards in Wan's key naming, `Wan2.1_VAE.pth`,
  and a `google/umt5-xxl` folder. Keys are converted with diffusers' own converters.

Every load is strict: a missing, unexpected or wrongly shaped tensor raises `CheckpointError` naming
the file and the keys before any weight is read. Models are built on the meta device and the tensors
assigned shard by shard, so a 14B model is never held twice.

The Pusa LoRA (files, key formats, fusing with exact alpha) is `weights.lora`.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Mapping
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
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from pusa.model import PusaTransformer3DModel

from .sources import CheckpointError, FileIdentity, FileWeights, loader_cast, placeholder, record_file_weights

__all__ = [
    "CheckpointError",
    "find_text_encoder",
    "load_text_encoder",
    "load_text_encoder_dirs",
    "load_tokenizer",
    "load_transformer",
    "load_vae",
    "read_headers",
    "read_json",
    "safetensors_files",
]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
WAN_VAE_NAME = "Wan2.1_VAE.pth"
# Wan's .pth holds weights only; a VAE config may sit beside it under this name (else diffusers' defaults,
# which are Wan2.1's VAE). A `config.json` beside it is used only if it is a VAE config: in Wan's
# original layout the `config.json` there is the DiT's.
WAN_VAE_CONFIG_NAME = "vae_config.json"
_SHARD_NAME = re.compile(r"^diffusion_pytorch_model-(\d+)-of-(\d+)\.safetensors$")

_LAYOUTS_HELP = (
    "expected a diffusers-layout folder (config.json + diffusion_pytorch_model*.safetensors) or Wan's "
    "original layout (Wan config.json with dim/num_heads/... + diffusion_pytorch_model-0000X-of-0000N."
    "safetensors shards)"
)
_MAX_LISTED = 5


# ---------------------------------------------------------------------------------------------------
# Strict loading helpers
# ---------------------------------------------------------------------------------------------------


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def read_json(path: Path) -> dict[str, Any]:
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


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a folder: an index's shards, a single file, or a complete set of shards."""
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
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


def read_headers(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
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


def _assign(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    keep_in_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    cast = {name: loader_cast(name, tensor, dtype, keep_in_fp32) for name, tensor in state.items()}
    model.load_state_dict(cast, strict=False, assign=True)


def _load_safetensors_folder(
    model: nn.Module,
    folder: Path,
    dtype: torch.dtype,
    device: torch.device,
    rename: Mapping[str, str] | None = None,
    hint: str = "",
    read: bool = True,
) -> dict[str, tuple[Path, str]]:
    """Check every header against the empty model, then read and assign one shard at a time (`read`
    False: nothing is read, every parameter points at a placeholder, `sources.placeholder`). Returns
    where each state name is: (file, key in the file)."""
    files = safetensors_files(folder)
    headers = read_headers(files)
    rename = rename or {}
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, (shape, file) in headers.items():
        name = rename.get(key, key)
        as_name = f" (read as {name})" if name != key else ""
        found[name] = (shape, f"{key} in {file.name}{as_name}")
    _check_fit(model, found, folder, hint)
    where = {rename.get(key, key): (file, key) for key, (_, file) in headers.items()}
    if not read:
        keep_in_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
        for name, param in list(model.named_parameters()):
            owner, _, key = name.rpartition(".")
            dtype_of = loader_cast(name, torch.empty(0, dtype=param.dtype), dtype, keep_in_fp32).dtype
            shaped = placeholder(param.shape, dtype_of)
            model.get_submodule(owner)._parameters[key] = nn.Parameter(shaped, requires_grad=False)
        return where
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as handle:
            shard = {rename.get(key, key): handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        _assign(model, shard, dtype)
    return where


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
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    read: bool = True,
) -> PusaTransformer3DModel:
    """The DiT from a diffusers `transformer/` folder or a folder in Wan's original layout, loaded strictly.
    It records where each weight is in the files (`sources.file_weights`), so that it can be read again
    rather than copied. `read=False`: checked against the headers, nothing read (placeholder weights, for
    `runtime.expert_stream` to load at its boundary).

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
    config = read_json(config_path)

    if "num_attention_heads" in config:
        kwargs = _init_kwargs(config, WanTransformer3DModel, config_path)
        rename: dict[str, str] = {}
        hint = ""
    elif "dim" in config:
        headers = read_headers(safetensors_files(folder))
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
    # each file's identity before it is read: a file replaced during the load is refused at the next re-read
    identities = {file: FileIdentity.of(file) for file in safetensors_files(folder)}
    where = _load_safetensors_folder(model, folder, dtype, device, rename, hint, read=read)
    keep_in_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    record_file_weights(model, FileWeights(where, dtype, keep_in_fp32, identities))
    return (model.to(device) if read else model).eval()


# ---------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------


def _is_vae_config(config: dict[str, Any]) -> bool:
    return config.get("_class_name") == "AutoencoderKLWan" or "base_dim" in config


def _wan_vae_config(pth: Path) -> tuple[dict[str, Any], Path | None]:
    for candidate in (pth.parent / WAN_VAE_CONFIG_NAME, pth.parent / "config.json"):
        if candidate.is_file():
            config = read_json(candidate)
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
    if path.is_dir() and (path / "config.json").is_file() and _is_vae_config(read_json(path / "config.json")):
        config_path = path / "config.json"
        with init_empty_weights():
            model = AutoencoderKLWan(**_init_kwargs(read_json(config_path), AutoencoderKLWan, config_path))
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
    if not config.is_file() or "d_model" not in read_json(config):
        return False
    return any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _is_tokenizer_dir(folder: Path) -> bool:
    return (folder / "spiece.model").is_file() or (folder / "tokenizer.json").is_file()


def find_text_encoder(candidates: list[Path]) -> tuple[Path, Path]:
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


def load_tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot load the tokenizer from {tokenizer_dir}: {error}") from error


def load_text_encoder_dirs(
    encoder_dir: Path, tokenizer_dir: Path, dtype: torch.dtype, device: torch.device
) -> tuple[UMT5EncoderModel, PreTrainedTokenizerBase]:
    try:
        encoder, info = UMT5EncoderModel.from_pretrained(
            encoder_dir, local_files_only=True, dtype=dtype, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
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
    encoder_dir, tokenizer_dir = find_text_encoder([folder])
    return load_text_encoder_dirs(encoder_dir, tokenizer_dir, dtype, torch.device(device))
