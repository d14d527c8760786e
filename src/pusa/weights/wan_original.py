"""Writing models in Wan's original layout (the inverse of diffusers' key converters, which the loader uses),
and the built-in two-expert test model `tiny-random-a14b` written to a folder in either layout.

Used to build folders that every loading path reads without real weights: Wan2.2's original layout
(`high_noise_model/` + `low_noise_model/`, each sharded `diffusion_pytorch_model-*.safetensors` +
`config.json`, `Wan2.1_VAE.pth`, `google/umt5-xxl/`) and diffusers' (`transformer/` + `transformer_2/`,
`model_index.json` with `boundary_ratio`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

__all__ = ["original_dit_key", "original_vae_key", "write_dit_original", "write_two_expert_folder"]

_DIT_TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "patch_embedding": "patch_embedding",
    "proj_out": "head.head",
}
_DIT_BLOCK = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",  # diffusers' norm2 is the cross-attention norm: Wan calls it norm3
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}  # fmt: skip
_VAE_RESNET = {
    "norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias",
}  # fmt: skip


def original_dit_key(key: str) -> str:
    """A diffusers `WanTransformer3DModel` state key in Wan's original naming."""
    if key == "scale_shift_table":
        return "head.modulation"
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if block:
        if block[2] == "scale_shift_table":
            return f"blocks.{block[1]}.modulation"
        module, param = block[2].rsplit(".", 1)
        return f"blocks.{block[1]}.{_DIT_BLOCK[module]}.{param}"
    module, param = key.rsplit(".", 1)
    return f"{_DIT_TOP[module]}.{param}"


def original_vae_key(key: str) -> str:
    """A diffusers `AutoencoderKLWan` state key in `Wan2.1_VAE.pth`'s naming (Wan2.1's VAE structure)."""
    if key.startswith("quant_conv."):
        return key.replace("quant_conv.", "conv1.")
    if key.startswith("post_quant_conv."):
        return key.replace("post_quant_conv.", "conv2.")
    part, rest = key.split(".", 1)  # encoder / decoder
    for diffusers_name, wan_name in (
        ("conv_in.", "conv1."),
        ("norm_out.", "head.0."),
        ("conv_out.", "head.2."),
    ):
        if rest.startswith(diffusers_name):
            return f"{part}.{wan_name}{rest[len(diffusers_name) :]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
        return f"{part}.middle.{2 * int(m[1])}.{_VAE_RESNET[m[2]]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{part}.middle.1.{m[1]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest):
        return f"encoder.downsamples.{m[1]}.{_VAE_RESNET.get(m[2], m[2])}"
    # Wan's decoder is flat: per level 3 residual blocks then the upsampler, 4 entries a level.
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_VAE_RESNET[m[3]]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    raise ValueError(f"no Wan-original name for VAE key {key}")


def wan_dit_config(model: nn.Module) -> dict[str, Any]:
    """Wan's original `config.json` of a diffusers-config DiT."""
    c: Any = model.config  # diffusers' FrozenDict, read by attribute (nn.Module types it Tensor | Module)
    return {
        "_class_name": "WanModel", "model_type": "t2v",
        "dim": c.num_attention_heads * c.attention_head_dim, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
        "in_dim": c.in_channels, "out_dim": c.out_channels, "num_heads": c.num_attention_heads,
        "num_layers": c.num_layers, "text_len": 512, "eps": c.eps,
    }  # fmt: skip


def write_dit_original(model: nn.Module, folder: Path, num_shards: int = 2) -> None:
    """`config.json` + `diffusion_pytorch_model-0000i-of-0000N.safetensors` in Wan's naming."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {original_dit_key(k): v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    for shard in range(num_shards):
        part = {k: state[k] for k in keys[shard::num_shards]}
        name = f"diffusion_pytorch_model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file(part, str(folder / name))
    (folder / "config.json").write_text(json.dumps(wan_dit_config(model), indent=1))


def write_vae_original(vae: nn.Module, pth: Path) -> None:
    """`Wan2.1_VAE.pth` in Wan's naming, with its config beside it (`vae_config.json`)."""
    pth.parent.mkdir(parents=True, exist_ok=True)
    torch.save({original_vae_key(k): v.contiguous() for k, v in vae.state_dict().items()}, pth)
    vae_config: Any = vae.config  # diffusers' FrozenDict (nn.Module types it Tensor | Module)
    config = {k: v for k, v in dict(vae_config).items() if not k.startswith("_")}
    (pth.parent / "vae_config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **config}))


def write_two_expert_folder(
    folder: str | Path, layout: str = "wan-original", seed: int = 0, manifest: dict[str, Any] | None = None
) -> Path:
    """The `tiny-random-a14b` model (seeded) as a model folder in `layout` ("wan-original": Wan2.2's own
    download layout; "diffusers": transformer/ + transformer_2/ + model_index.json with boundary_ratio).

    A `pusa_model.json` gives it the built-in model's native clip (so the folder makes its videos), plus
    `manifest`'s entries (e.g. "loras", "presets")."""
    from ..experts import DEFAULT_BOUNDARY
    from .registry import tiny_random_a14b_components

    if layout not in ("wan-original", "diffusers"):
        raise ValueError(f"layout={layout!r}: choose wan-original or diffusers")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    parts = tiny_random_a14b_components(seed)
    if layout == "diffusers":
        parts["transformer"].save_pretrained(root / "transformer")
        parts["transformer_2"].save_pretrained(root / "transformer_2")
        parts["vae"].save_pretrained(root / "vae")
        parts["text_encoder"].save_pretrained(root / "text_encoder")
        parts["tokenizer"].save_pretrained(root / "tokenizer")
        index = {
            "_class_name": "WanPipeline",
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": ["diffusers", "WanTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "boundary_ratio": DEFAULT_BOUNDARY,
        }
        (root / "model_index.json").write_text(json.dumps(index, indent=1))
    else:
        write_dit_original(parts["transformer"], root / "high_noise_model")
        write_dit_original(parts["transformer_2"], root / "low_noise_model")
        write_vae_original(parts["vae"], root / "Wan2.1_VAE.pth")
        umt5 = root / "google" / "umt5-xxl"
        parts["text_encoder"].save_pretrained(umt5)
        parts["tokenizer"].save_pretrained(umt5)
    defaults = {k: v for k, v in asdict(parts["defaults"]).items() if k in _CLIP}
    (root / "pusa_model.json").write_text(
        json.dumps({"name": "tiny-random-a14b", "defaults": defaults, **(manifest or {})}, indent=1)
    )
    return root


_CLIP = ("num_frames", "width", "height", "num_inference_steps", "fps", "max_sequence_length")
