"""Starting a training run from a trained model folder (`RunConfig.init`) instead of random weights.

The tokenizer and the VAE are copied (the VAE stage is written as finished at step 0, with the folder's
latents_mean/std as the run's latent statistics, so every latent keeps the meaning the folder's DiT learned);
the decoder, base and VTA stages start from the folder's decoder, DiT + text encoder and LoRA and fine-tune
them. pusa-tiny v5 is v4 fine-tuned this way on 17, 33 and 49 frames.

A folder whose parts do not fit the run's config is refused by name before anything trains.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from pusa.train.config import RunConfig
from pusa.train.loop import RunLog, atomic_save, checkpoint_path

PARTS = ("tokenizer", "vae", "transformer", "text_encoder")


def resolve_init(init: str) -> Path:
    """`init` ("pusa-tiny" or a folder of the training run's export layout) as a folder, or a ValueError naming it."""
    from pusa.weights.registry import PUSA_TINY_DIR

    folder = PUSA_TINY_DIR if init == "pusa-tiny" else Path(init).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"init={init!r}: no such folder (give a model folder exported by pusa train demo, or pusa-tiny)"
        )
    missing = [part for part in PARTS if not (folder / part).is_dir()]
    if missing:
        raise ValueError(
            f"init={init!r}: {folder} lacks {', '.join(f'{m}/' for m in missing)}; an exported model has "
            f"{', '.join(f'{p}/' for p in PARTS)}"
        )
    return folder


def init_tokenizer(run_dir: Path, folder: Path) -> Path:
    out = run_dir / "tokenizer"
    if not out.is_dir():
        shutil.copytree(folder / "tokenizer", out)
    return out


def init_vae(run_dir: Path, cfg: RunConfig, folder: Path, log: RunLog) -> None:
    """Write the VAE stage as finished from the folder's VAE, and its latent statistics."""
    from diffusers import AutoencoderKLWan

    from pusa.train.builders import build_vae

    path = checkpoint_path(run_dir, "vae")
    if path.is_file():
        return
    source = AutoencoderKLWan.from_pretrained(str(folder / "vae"), local_files_only=True)
    vae = build_vae(cfg.vae)
    try:
        vae.load_state_dict(source.state_dict())
    except RuntimeError as error:
        raise ValueError(
            f"init={str(folder)!r}: its vae/ does not fit the run's vae.* settings (base_dim, z_dim, dim_mult, "
            f"num_res_blocks): {str(error).splitlines()[0]}"
        ) from error
    stats = {"latents_mean": list(source.config.latents_mean), "latents_std": list(source.config.latents_std)}
    (run_dir / "latent_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"stage": "vae", "step": 0, "steps": 0, "finished": True, "elapsed_s": 0.0, "init": str(folder),
             "modules": {"vae": vae.state_dict()}, "optimizer": None, "ema": None,
             "torch_rng": torch.get_rng_state()}  # fmt: skip
    atomic_save(state, path)
    log.write(stage="vae", event="init", folder=str(folder), **stats)


def _load_part(module: nn.Module, state: dict, folder: Path, part: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"init={str(folder)!r}: its {part}/ does not fit the run's settings: {str(error).splitlines()[0]}"
        ) from error


def init_base(folder: Path, transformer: nn.Module, text_encoder: nn.Module) -> None:
    """Load the folder's DiT and text encoder into the base stage's fresh models."""
    from transformers import UMT5EncoderModel

    from pusa.model import PusaTransformer3DModel

    for module, part, cls in ((transformer, "transformer", PusaTransformer3DModel),
                              (text_encoder, "text_encoder", UMT5EncoderModel)):  # fmt: skip
        trained = cls.from_pretrained(str(folder / part), local_files_only=True)
        _load_part(module, trained.state_dict(), folder, part)


def init_lora(folder: Path, wrapped: dict) -> None:
    """Start the VTA stage's LoRA from the folder's (same modules and rank), or refuse by name."""
    from pusa.weights.lora import load_lora
    from pusa.weights.registry import folder_lora

    path = folder_lora(folder)
    if path is None:
        raise ValueError(
            f"init={str(folder)!r}: its pusa_model.json names no LoRA to start the vta stage from"
        )
    modules = load_lora(path).modules
    if set(modules) != set(wrapped):
        odd = sorted(set(modules) ^ set(wrapped))[:3]
        raise ValueError(
            f"init={str(folder)!r}: {path.name} and the run's LoRA differ in modules, e.g. {odd}"
        )
    with torch.no_grad():
        for name, lora in wrapped.items():
            down, up = modules[name]
            if down.shape != lora.down.shape or up.shape != lora.up.shape:
                raise ValueError(
                    f"init={str(folder)!r}: {path.name} has rank {down.shape[0]} at {name}; the run's vta.rank is "
                    f"{lora.down.shape[0]}"
                )
            lora.down.copy_(down)
            lora.up.copy_(up)
