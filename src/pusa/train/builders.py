"""Builders of the training run's models from their configs: the Wan VAE, the umT5 text encoder, the Pusa DiT
(with `check_dit_width`, its width check), and `load_tokenizer` for a saved tokenizer folder."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from pusa.model import PusaTransformer3DModel
from pusa.train.config import DitConfig, TextEncoderConfig, VaeConfig


def build_vae(
    cfg: VaeConfig, latents_mean: list[float] | None = None, latents_std: list[float] | None = None
):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=cfg.base_dim,
        z_dim=cfg.z_dim,
        dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        temperal_downsample=vae_temporal_downsample(cfg.dim_mult),
        latents_mean=latents_mean or [0.0] * cfg.z_dim,
        latents_std=latents_std or [1.0] * cfg.z_dim,
    )


def build_text_encoder(cfg: TextEncoderConfig, vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **asdict(cfg)))


def vae_temporal_downsample(dim_mult: tuple[int, ...]) -> list[bool]:
    """Which of the VAE's `len(dim_mult) - 1` spatial downsamples also halve time: the last two (4x temporal)."""
    levels = len(dim_mult) - 1
    if levels < 2:
        raise ValueError(
            f"vae.dim_mult={list(dim_mult)} gives {max(levels, 0)} downsample(s); at least 3 entries are needed "
            "(4x temporal compression takes two)"
        )
    return [False] * (levels - 2) + [True, True]


def check_dit_width(cfg: DitConfig, z_dim: int) -> None:
    """The DiT must be at least as wide as the values each token predicts (patch volume x latent channels).

    Its output layer maps the width to those values, so a narrower model predicts velocities in a
    subspace: the starting noise outside it is never removed and every sample stays noisy, however long
    it trains (the 4x-spatial s4 run: 4x4 patches of 16 channels = 256 values from a 128-wide model).
    """
    width = cfg.num_attention_heads * cfg.attention_head_dim
    values = math.prod(cfg.patch_size) * z_dim
    if width < values:
        raise ValueError(
            f"dit: each token predicts {values} values (patch {list(cfg.patch_size)} x vae.z_dim={z_dim}) but the "
            f"transformer is {width} wide (dit.num_attention_heads x dit.attention_head_dim); it could never "
            f"remove all the noise. Widen it to >= {values}, or use a smaller dit.patch_size or vae.z_dim"
        )


def build_transformer(cfg: DitConfig, text_dim: int, z_dim: int = 16) -> PusaTransformer3DModel:
    check_dit_width(cfg, z_dim)
    return PusaTransformer3DModel(
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=text_dim,
        **asdict(cfg),
    )


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
