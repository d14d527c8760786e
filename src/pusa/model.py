"""Wan2.1 DiT with a per-frame timestep (docs/algorithm.md, "The network").

`PusaTransformer3DModel` is diffusers' `WanTransformer3DModel` with the same parameter names and
config; only the forward pass changes. The timestep may be `[B]` (stock Wan) or `[B, F_lat]` (Pusa),
and the adaptive-norm modulation stays per frame: `[B, F_lat, 6, D]`, broadcast over the `h*w`
tokens of each frame by viewing the hidden states as `[B, F_lat, h*w, D]`. Diffusers' per-token path
would build `[B, L, 6, D]` (gigabytes at 720p) for the same numbers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock
from torch import nn


def _per_frame(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """`[B, L, D]` -> `[B, G, L/G, D]` (a view; tokens are in frame-major raster order)."""
    batch, seq_len, dim = x.shape
    return x.view(batch, num_groups, seq_len // num_groups, dim)


class PusaTransformerBlock(WanTransformerBlock):
    """A Wan block whose modulation `temb` is `[B, G, 6, D]`, one row per latent frame (G = F_lat)
    or a single row for the whole clip (G = 1, stock Wan). Parameters are the parent's."""

    # diffusers annotates rotary_emb as one Tensor; its Wan model passes the (cos, sin) pair typed here
    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,  # [B, L, D]
        encoder_hidden_states: torch.Tensor,  # [B, L_text, D]
        temb: torch.Tensor,  # [B, G, 6, D]
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        num_groups = temb.shape[1]
        # each [B, G, 1, D], float32 as in diffusers
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table.unsqueeze(0) + temb.float()
        ).chunk(6, dim=2)

        def modulate(
            norm: nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
        ) -> torch.Tensor:
            normed = _per_frame(norm(x.float()), num_groups)  # [B, G, hw, D]
            return (normed * (1 + scale) + shift).flatten(1, 2).type_as(x)

        def add_gated(x: torch.Tensor, update: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            out = _per_frame(x.float(), num_groups) + _per_frame(update.float(), num_groups) * gate
            return out.flatten(1, 2).type_as(x)

        # 1. Self-attention
        attn_output = self.attn1(
            modulate(self.norm1, hidden_states, scale_msa, shift_msa), None, None, rotary_emb
        )
        hidden_states = add_gated(hidden_states, attn_output, gate_msa)

        # 2. Cross-attention (not modulated)
        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm_hidden_states, encoder_hidden_states, None, None)

        # 3. Feed-forward
        ff_output = self.ffn(modulate(self.norm3, hidden_states, c_scale_msa, c_shift_msa))
        return add_gated(hidden_states, ff_output, c_gate_msa)


class PusaTransformer3DModel(WanTransformer3DModel):
    """Wan2.1 DiT accepting a per-frame timestep `[B, F_lat]` (0..1000) or a scalar one `[B]`."""

    # class-level in diffusers too, though it leaves out the ClassVar (so mypy sees instance variables)
    _no_split_modules: ClassVar[list[str]] = ["PusaTransformerBlock"]  # type: ignore[misc]
    _repeated_blocks: ClassVar[list[str]] = ["PusaTransformerBlock"]  # type: ignore[misc]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
    ) -> None:
        # The explicit signature (Wan2.1-14B defaults) lets diffusers' config machinery
        # (from_config, from_pretrained) see and record every argument.
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=0,  # the blocks are built below, as Pusa blocks: never build them twice
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        self.register_to_config(num_layers=num_layers)  # the parent recorded 0
        inner_dim = num_attention_heads * attention_head_dim
        # Same constructor arguments as the parent's blocks, so parameter names and shapes match.
        self.blocks = nn.ModuleList(
            [
                # diffusers' block types qk_norm `str`, its model (whose value this is) `str | None`
                PusaTransformerBlock(
                    inner_dim,
                    ffn_dim,
                    num_attention_heads,
                    qk_norm,  # type: ignore[arg-type]
                    cross_attn_norm,
                    eps,
                    added_kv_proj_dim,
                )
                for _ in range(num_layers)
            ]
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """hidden_states `[B, C, F, H, W]`; timestep `[B]` or `[B, F // p_t]`; text `[B, L_text, text_dim]`."""
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config["patch_size"]  # (ConfigMixin types its config a plain dict)
        post_patch_num_frames = num_frames // p_t
        post_patch_height = height // p_h
        post_patch_width = width // p_w

        if timestep.ndim == 1:
            timestep = timestep.unsqueeze(1)  # [B, 1]: one modulation row for the whole clip
        if (
            timestep.ndim != 2
            or timestep.shape[0] != batch_size
            or timestep.shape[1] not in (1, post_patch_num_frames)
        ):
            raise ValueError(
                f"timestep has shape {tuple(timestep.shape)}; expected [{batch_size}] or "
                f"[{batch_size}, {post_patch_num_frames}] (one value per latent frame)"
            )
        num_groups = timestep.shape[1]

        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states)
        hidden_states = hidden_states.flatten(2).transpose(1, 2).contiguous()  # [B, L, D], L = F*h*w

        # temb [B, G, D]; timestep_proj [B, G, 6D]
        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep.flatten(),
            encoder_hidden_states,
            encoder_hidden_states_image,
            timestep_seq_len=num_groups,
        )
        timestep_proj = timestep_proj.unflatten(2, (6, -1))  # [B, G, 6, D]
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        runner = getattr(self, "block_runner", None)  # a `pusa.caching.StepCache` while a cached run samples
        if runner is not None:
            hidden_states = runner(
                self.blocks, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb
            )
        elif torch.is_grad_enabled() and self.gradient_checkpointing:
            for block in self.blocks:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb
                )
        else:
            for block in self.blocks:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)

        # Output head: temb plus the [2, D] table, per frame.
        modulation = self.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)  # [B, G, 2, D]
        shift, scale = modulation.to(hidden_states.device).chunk(2, dim=2)  # [B, G, 1, D]
        normed = _per_frame(self.norm_out(hidden_states.float()), num_groups)
        hidden_states = (normed * (1 + scale) + shift).flatten(1, 2).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(
            batch_size, post_patch_num_frames, post_patch_height, post_patch_width, p_t, p_h, p_w, -1
        )
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # [B, C_out, F, H, W]
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


def modulation_bytes(
    batch: int, num_latent_frames: int, tokens_per_frame: int, dim: int, bytes_per_element: int = 4
) -> dict[str, int]:
    """Bytes of the block modulation tensors (`[.., 6, D]`) per-frame (ours) vs per-token (diffusers)."""
    per_frame = batch * num_latent_frames * 6 * dim * bytes_per_element
    per_token = batch * num_latent_frames * tokens_per_frame * 6 * dim * bytes_per_element
    return {"per_frame": per_frame, "per_token": per_token}
