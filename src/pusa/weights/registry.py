"""Built-in models, no download needed, and how a `--model` argument is resolved.

- `pusa-tiny` (the default): a small model of the real architecture shipped in `assets/pusa-tiny/`, trained
  by `pusa.train.recipe` on the procedural world, with its VTA LoRA. A diffusers-layout folder plus
  `pusa_model.json` (its native clip settings and the LoRA file), so every real-model code path loads it.
- `tiny-random`: a seeded random model of the same structure; its videos are noise. It exists so every code
  path runs without trained weights (tests of the engine).

`tiny-random` follows the real model's structure: 16 latent channels, 8x spatial and 4x temporal VAE
compression, patch (1, 2, 2), a umT5 text encoder with a sentencepiece tokenizer. `pusa-tiny` has the same
classes with a 4x spatial VAE of 4 latent channels and patch (1, 4, 4) (the same tokens per clip): at 64x64
Wan's 8x spatial VAE turned every shape into a round blob.

Importing this module is cheap (no torch): the CLI and the studio read names, defaults and limits from it at once.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..request import WAN_DEFAULTS, ModelDefaults, ModelLimits

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_TOKENIZER_DIR = ASSETS / "tiny_tokenizer"
PUSA_TINY_DIR = ASSETS / "pusa-tiny"
MODEL_MANIFEST = "pusa_model.json"  # in a model folder: native clip settings, the LoRA file it ships with
PRESETS = ("pusa-tiny", "tiny-random")
DEFAULT_MODEL = "pusa-tiny"

TINY_DEFAULTS = ModelDefaults(
    num_frames=17, width=64, height=64, num_inference_steps=4, fps=8.0, max_sequence_length=32
)

# Wan2.1-T2V-14B's transformer (the model Pusa V1 adapts): benchmarks and FLOP counts build it on the meta device.
WAN_14B_TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    rope_max_seq_len=1024,
)

TINY_TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=32,
)
TINY_VAE_CONFIG = dict(
    base_dim=8,
    z_dim=16,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    latents_mean=[0.0] * 16,
    latents_std=[1.0] * 16,
)
TINY_TEXT_ENCODER_CONFIG = dict(
    vocab_size=160, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8
)


def tiny_random_components(seed: int = 0) -> dict:
    """Transformer, VAE, text encoder and tokenizer of the `tiny-random` preset, reproducible from `seed`."""
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    from ..model import PusaTransformer3DModel

    torch.manual_seed(seed)
    transformer = PusaTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    vae = AutoencoderKLWan(**TINY_VAE_CONFIG).eval()
    text_encoder = UMT5EncoderModel(UMT5Config(**TINY_TEXT_ENCODER_CONFIG)).eval()
    tokenizer = T5Tokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), extra_ids=0)
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        identity=f"tiny-random(seed={seed})",
        defaults=TINY_DEFAULTS,
    )


# ------------------------------------------------------------------------------------------- model names
def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The folder's `pusa_model.json` (None if it has none, as real Wan folders)."""
    path = Path(model_dir) / MODEL_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return manifest


def folder_defaults(model_dir: str | Path) -> ModelDefaults:
    """Native clip settings of a model folder: its manifest's `defaults`, else Wan2.1's (81 x 832x480)."""
    manifest = read_manifest(model_dir) or {}
    given = manifest.get("defaults") or {}
    allowed = {f.name for f in fields(ModelDefaults)} - {"trained_frames", "trained_sizes"}  # under "trained"
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(
            f"{Path(model_dir) / MODEL_MANIFEST}: defaults {unknown} are not settings; allowed: {sorted(allowed)}"
        )
    trained = manifest.get("trained") or {}
    if not given and not trained:
        return WAN_DEFAULTS
    try:
        declared = dict(
            trained_frames=tuple(int(n) for n in trained.get("num_frames", ())),
            trained_sizes=tuple((int(w), int(h)) for w, h in trained.get("sizes", ())),
        )
    except (TypeError, ValueError):
        raise ValueError(
            f'{Path(model_dir) / MODEL_MANIFEST}: trained must be {{"num_frames": [17, ...], '
            f'"sizes": [[64, 64], ...]}}, not {trained!r}'
        ) from None
    return ModelDefaults(**given, **declared)


def folder_lora(model_dir: str | Path) -> Path | None:
    """The LoRA file a model folder ships with (named by its manifest), or None."""
    manifest = read_manifest(model_dir) or {}
    name = manifest.get("lora")
    if not name:
        return None
    path = Path(model_dir) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{Path(model_dir) / MODEL_MANIFEST} names the LoRA {name!r} but {path} is missing"
        )
    return path


def resolve_model(model: str | Path, lora: str | Path | None = None, prefix: str = "") -> str | Path:
    """A model name -> "tiny-random" or a model folder `Path` (`pusa-tiny` is the shipped folder).

    Checks `lora` against it too (a file, "auto" or None). Raises ValueError naming the argument (`prefix` +
    "model" / "lora", so the CLI says `--model`), the value and what is allowed."""
    name = str(model)
    if name == "tiny-random":
        if lora is not None and str(lora) != "auto":
            raise ValueError(
                f"{prefix}lora={str(lora)!r}: the tiny-random model takes no LoRA; "
                f"use {prefix}model DIR for real weights"
            )
        return name
    if lora is not None and str(lora) != "auto" and not Path(lora).is_file():
        raise ValueError(f"{prefix}lora={str(lora)!r}: no such file")
    if name == "pusa-tiny":
        if read_manifest(PUSA_TINY_DIR) is None:
            raise ValueError(
                f"{prefix}model='pusa-tiny': the built-in model is missing from {PUSA_TINY_DIR} (a broken "
                "install?); reinstall pusa, or build it with `pusa train demo`"
            )
        return PUSA_TINY_DIR
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    raise ValueError(
        f"{prefix}model={name!r} is neither a folder nor a built-in model ({', '.join(PRESETS)})"
    )


def model_defaults(model: str | Path, prefix: str = "") -> ModelDefaults:
    """Native clip settings of a `--model` value, known before any weights load (the studio needs them at once)."""
    resolved = resolve_model(model, prefix=prefix)
    return TINY_DEFAULTS if resolved == "tiny-random" else folder_defaults(resolved)


# Wan2.1's DiT and VAE, for a folder whose config files cannot be read (its load then says what is wrong).
_WAN_PATCH, _WAN_ROPE, _WAN_SPATIAL = (1, 2, 2), 1024, 8


def _json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def model_limits(model: str | Path, prefix: str = "") -> ModelLimits:
    """What a `--model` value takes (sizes, frames) and its defaults, from its config files alone: the
    CLI and the studio check a request against these before any weights load."""
    resolved = resolve_model(model, prefix=prefix)
    if resolved == "tiny-random":
        spatial = 2 ** len(TINY_VAE_CONFIG["temperal_downsample"])
        config = TINY_TRANSFORMER_CONFIG
        return ModelLimits.of(config["patch_size"], spatial, config["rope_max_seq_len"], TINY_DEFAULTS)
    folder = Path(resolved)
    dit = _json_or_none(folder / "transformer" / "config.json") or _json_or_none(folder / "config.json") or {}
    vae = _json_or_none(folder / "vae" / "config.json") or {}
    spatial = 2 ** len(vae["temperal_downsample"]) if "temperal_downsample" in vae else _WAN_SPATIAL
    return ModelLimits.of(
        dit.get("patch_size", _WAN_PATCH),
        spatial,
        dit.get("rope_max_seq_len", _WAN_ROPE),
        folder_defaults(folder),
    )
