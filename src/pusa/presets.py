"""Model presets that need no download: `tiny-random`, a seeded random model of the real architecture.

Its weights are noise, so its videos are noise too; it exists so every code path (CLI, studio, tests)
runs on any machine. Sizes follow the real model's structure: 16 latent channels, 8x spatial and 4x
temporal VAE compression, patch (1, 2, 2), a umT5 text encoder with a sentencepiece tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from .model import PusaTransformer3DModel

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_TOKENIZER_DIR = ASSETS / "tiny_tokenizer"


@dataclass(frozen=True)
class ModelDefaults:
    """Native clip settings of a model; the CLI and studio defaults come from here."""

    num_frames: int = 81
    width: int = 832
    height: int = 480
    num_inference_steps: int = 10
    fps: float = 16.0
    max_sequence_length: int = 512


WAN_DEFAULTS = ModelDefaults()
TINY_DEFAULTS = ModelDefaults(
    num_frames=17, width=64, height=64, num_inference_steps=4, fps=8.0, max_sequence_length=32
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
