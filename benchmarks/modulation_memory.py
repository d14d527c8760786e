"""Bytes of the adaptive-norm modulation at Wan2.1-14B dims: per-frame (ours) vs per-token (diffusers).

No GPU needed: both models run on PyTorch's meta device (shapes only), and forward hooks read the
shape and dtype of the modulation each block receives. Run: `python benchmarks/modulation_memory.py`.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from diffusers.utils import logging as diffusers_logging

from pusa.model import PusaTransformer3DModel, modulation_bytes
from pusa.weights.registry import WAN_14B_TRANSFORMER_CONFIG

WAN_14B = {**WAN_14B_TRANSFORMER_CONFIG, "num_layers": 1}  # one block: the modulation is per block
SIZES = {"480x832x81": (21, 60, 104), "720x1280x81": (21, 90, 160)}  # latent frames, h, w (8x VAE)


def block_temb_bytes(
    model: torch.nn.Module, hidden: torch.Tensor, timestep: torch.Tensor
) -> tuple[tuple, int]:
    """Shape and bytes of the modulation tensor handed to the first block (meta device: no compute)."""
    seen = {}

    def hook(module, args):
        temb = args[2]
        seen["shape"] = tuple(temb.shape)
        seen["bytes"] = temb.numel() * temb.element_size()

    handle = model.blocks[0].register_forward_pre_hook(hook)
    with torch.no_grad():
        model(hidden, timestep, torch.zeros(1, 512, 4096, device="meta", dtype=hidden.dtype))
    handle.remove()
    return seen["shape"], seen["bytes"]


def main() -> None:
    diffusers_logging.set_verbosity_error()
    dtype = torch.bfloat16
    with torch.device("meta"):
        ours = PusaTransformer3DModel(**WAN_14B).to(dtype)
        stock = WanTransformer3DModel(**WAN_14B).to(dtype)
    print("Wan2.1-14B dims (D=5120), bf16 weights, batch 1, one CFG branch")
    header = f"{'size':<13}{'tokens':>8} | {'ours shape':<20}{'ours':>10} | {'per-token shape':<24}{'per-token':>11} | {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for name, (frames, h, w) in SIZES.items():
        hidden = torch.zeros(1, 16, frames, h, w, device="meta", dtype=dtype)
        tokens = frames * (h // 2) * (w // 2)
        per_frame_t = torch.full((1, frames), 500.0, device="meta")
        ours_shape, ours_bytes = block_temb_bytes(ours, hidden, per_frame_t)
        per_token_t = torch.full((1, tokens), 500.0, device="meta")
        stock_shape, stock_bytes = block_temb_bytes(stock, hidden, per_token_t)
        computed = modulation_bytes(1, frames, tokens // frames, 5120, bytes_per_element=2)
        assert ours_bytes == computed["per_frame"] and stock_bytes == computed["per_token"]
        print(
            f"{name:<13}{tokens:>8} | {ours_shape!s:<20}{ours_bytes / 2**20:>8.2f}MB | {stock_shape!s:<24}"
            f"{stock_bytes / 2**30:>9.2f}GB | {stock_bytes / ours_bytes:>6.0f}x"
        )
        # Each block also adds its [6, D] table in float32: a temporary of the same element count.
        print(
            f"{'':<21} + per-block fp32 temporary: ours {computed['per_frame'] * 2 / 2**20:.2f} MB, "
            f"per-token {computed['per_token'] * 2 / 2**30:.2f} GB"
        )


if __name__ == "__main__":
    main()
