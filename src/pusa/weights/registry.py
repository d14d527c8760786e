"""Built-in models, no download needed, and how a `--model` argument is resolved.

- `pusa-tiny` (the default): a small model of the real architecture shipped in `assets/pusa-tiny/`, trained
  by `pusa train demo` (`pusa.train.run`) on the procedural world, with its VTA LoRA. A diffusers-layout folder plus
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

# The built-in models' names are declared with the other flag values (`--model`'s help reads them there).
from ..params import BUILTIN_MODELS, TINY_RANDOM_MODELS
from ..params import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported: callers read it here
from ..presets import preset_from_manifest
from ..request import WAN_DEFAULTS, ModelDefaults, ModelLimits

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_TOKENIZER_DIR = ASSETS / "tiny_tokenizer"
PUSA_TINY_DIR = ASSETS / "pusa-tiny"
MODEL_MANIFEST = "pusa_model.json"  # in a model folder: native clip settings, the LoRA file it ships with
# Deprecated names, kept for callers of the old API: "preset" now means a speed preset only (`--preset`).
PRESETS = BUILTIN_MODELS
TINY_RANDOM_PRESETS = TINY_RANDOM_MODELS

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
    """Transformer, VAE, text encoder and tokenizer of the `tiny-random` built-in model, reproducible from `seed`."""
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


# tiny-random-a14b: two experts of tiny-random's DiT (rope table as Wan's original configs load it), and a
# Wan2.1-structured VAE (the structure diffusers' Wan VAE converter assumes), so that it can be written in
# Wan2.2's original layout too (`weights.wan_original.write_two_expert_folder`).
TINY_A14B_TRANSFORMER_CONFIG = {**TINY_TRANSFORMER_CONFIG, "rope_max_seq_len": 1024}
TINY_A14B_VAE_CONFIG = {**TINY_VAE_CONFIG, "base_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2}


def tiny_random_a14b_components(seed: int = 0) -> dict:
    """The `tiny-random-a14b` built-in model: high-noise and low-noise experts (different random weights), one VAE,
    one text encoder, reproducible from `seed`."""
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    from ..model import PusaTransformer3DModel

    torch.manual_seed(seed)
    experts = []
    for _ in range(2):
        model = PusaTransformer3DModel(**TINY_A14B_TRANSFORMER_CONFIG).eval()
        with torch.no_grad():  # the defaults zero some tables: random values make every weight matter
            for param in model.parameters():
                param.copy_(torch.randn_like(param) * 0.2)
        experts.append(model)
    vae = AutoencoderKLWan(**TINY_A14B_VAE_CONFIG).eval()
    text_encoder = UMT5EncoderModel(UMT5Config(**TINY_TEXT_ENCODER_CONFIG)).eval()
    tokenizer = T5Tokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), extra_ids=0)
    return dict(
        transformer=experts[0],
        transformer_2=experts[1],
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        identity=f"tiny-random-a14b(seed={seed})",
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
    # "trained" and "presets" have their own entries
    allowed = {f.name for f in fields(ModelDefaults)} - {"trained_frames", "trained_sizes", "presets"}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(
            f"{Path(model_dir) / MODEL_MANIFEST}: defaults {unknown} are not settings; allowed: {sorted(allowed)}"
        )
    trained = manifest.get("trained") or {}
    declared_presets = manifest.get("presets") or {}
    boundary = _folder_boundary(model_dir)
    if boundary is not None and "boundary" not in given:
        given = {**given, "boundary": boundary}
    if not given and not trained and not declared_presets:
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
    where = str(Path(model_dir) / MODEL_MANIFEST)
    if not isinstance(declared_presets, dict):
        raise ValueError(f"{where}: presets must be an object, not {declared_presets!r}")
    presets = tuple(
        preset_from_manifest(name, entry, where, lambda file: _manifest_file(model_dir, file, "presets"))
        for name, entry in declared_presets.items()
    )
    return ModelDefaults(**given, **declared, presets=presets)


def _folder_boundary(model_dir: str | Path) -> float | None:
    """diffusers' `boundary_ratio` of a two-expert folder's model_index.json, if it has one."""
    index = _json_or_none(Path(model_dir) / "model_index.json") or {}
    ratio = index.get("boundary_ratio")
    return float(ratio) if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) else None


def _manifest_file(model_dir: str | Path, name: str, entry: str) -> Path:
    path = Path(model_dir) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{Path(model_dir) / MODEL_MANIFEST} names the LoRA {name!r} ({entry}) but {path} is missing"
        )
    return path


def folder_loras(model_dir: str | Path) -> tuple:
    """The LoRA stack a model folder ships with (`lora_specs.LoraSpec`s, paths absolute): its manifest's
    "loras" (`[{"file", "strength", "expert"}]`, e.g. Pusa Wan2.2's high 1.5 + low 1.4), else its one
    "lora" (strength: the request's lora_alpha), else none."""
    from dataclasses import replace

    from ..lora_specs import LoraSpec, parse_loras

    manifest = read_manifest(model_dir) or {}
    if manifest.get("loras"):
        specs = parse_loras(manifest["loras"], param="loras")
        return tuple(replace(s, path=str(_manifest_file(model_dir, s.path, "loras"))) for s in specs)
    single = folder_lora(model_dir)
    return (LoraSpec(str(single)),) if single is not None else ()


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
    if name in TINY_RANDOM_MODELS:
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
        f"{prefix}model={name!r} is neither a folder nor a built-in model ({', '.join(BUILTIN_MODELS)})"
    )


def model_defaults(model: str | Path, prefix: str = "") -> ModelDefaults:
    """Native clip settings of a `--model` value, known before any weights load (the studio needs them at once)."""
    resolved = resolve_model(model, prefix=prefix)
    return TINY_DEFAULTS if resolved in TINY_RANDOM_MODELS else folder_defaults(resolved)


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
    if resolved in TINY_RANDOM_MODELS:
        spatial = 2 ** len(TINY_VAE_CONFIG["temperal_downsample"])
        config = TINY_TRANSFORMER_CONFIG
        experts = 2 if resolved == "tiny-random-a14b" else 1
        return ModelLimits.of(
            config["patch_size"], spatial, config["rope_max_seq_len"], TINY_DEFAULTS, experts
        )
    folder = Path(resolved)
    experts = 2 if folder_experts(folder) else 1
    dit = (
        _json_or_none(folder / "transformer" / "config.json")
        or _json_or_none(folder / "high_noise_model" / "config.json")
        or _json_or_none(folder / "config.json")
        or {}
    )
    vae = _json_or_none(folder / "vae" / "config.json") or {}
    spatial = 2 ** len(vae["temperal_downsample"]) if "temperal_downsample" in vae else _WAN_SPATIAL
    return ModelLimits.of(
        dit.get("patch_size", _WAN_PATCH),
        spatial,
        dit.get("rope_max_seq_len", _WAN_ROPE),
        folder_defaults(folder),
        experts,
    )


def folder_experts(folder: str | Path) -> bool:
    """Whether a folder holds two experts (Wan2.2: high_noise_model/ + low_noise_model/, or diffusers'
    transformer_2/ or a model_index.json naming one); the loader says what is missing."""
    folder = Path(folder)
    index = _json_or_none(folder / "model_index.json") or {}
    return (
        (folder / "high_noise_model").is_dir()
        or (folder / "low_noise_model").is_dir()
        or (folder / "transformer_2").is_dir()
        or bool(index.get("transformer_2"))
    )
