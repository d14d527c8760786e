"""Per-frame conditioning (pusa-algorithm.md sections 5 and 6). Pure: imports only torch.

A `Conditioning` says, for every latent frame, how strongly its noise level is scaled
(`sigma_scale`: 1 for a free frame, the noise multiplier `m` for a conditioning frame) and which
clean latents sit at the conditioning slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def num_latent_frames(num_frames: int) -> int:
    """Wan's causal VAE: pixel frame 0 alone, then 4 pixel frames per latent frame."""
    return (num_frames - 1) // 4 + 1


def pixel_frames_of_latent(latent_index: int) -> tuple[int, int]:
    """Inclusive pixel-frame range covered by one latent frame: 0 -> (0, 0), k >= 1 -> (4k-3, 4k)."""
    if latent_index == 0:
        return (0, 0)
    return (4 * latent_index - 3, 4 * latent_index)


def validate_positions(positions: Sequence[int], noise_multipliers: Sequence[float], num_latent: int) -> None:
    """Raise ValueError naming the parameter, the value and what is allowed."""
    positions = list(positions)
    noise_multipliers = list(noise_multipliers)
    if len(positions) != len(noise_multipliers):
        raise ValueError(
            f"noise_multipliers={noise_multipliers} has {len(noise_multipliers)} values but "
            f"positions={positions} has {len(positions)}; give one noise multiplier per position"
        )
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < num_latent:
            raise ValueError(
                f"positions contains {p!r}; positions are latent frame indices, whole numbers in "
                f"0..{num_latent - 1} for this video ({num_latent} latent frames)"
            )
    duplicates = sorted({p for p in positions if positions.count(p) > 1})
    if duplicates:
        raise ValueError(
            f"positions={positions} repeats {duplicates}; each latent frame can be conditioned once"
        )
    for m in noise_multipliers:
        if not isinstance(m, (int, float)) or isinstance(m, bool) or not 0.0 <= float(m) <= 1.0:
            raise ValueError(f"noise_multipliers contains {m!r}; each must be a number in [0, 1]")


@dataclass(frozen=True)
class Conditioning:
    """Conditioning latents at latent-frame slots.

    positions:         latent frame indices, each in `0..F_lat-1`, no duplicates
    noise_multipliers: one per position in [0, 1]; 0 keeps the frame exactly clean
    latents:           clean latents `[B, C, len(positions), h, w]`, in the order of `positions`
    """

    positions: tuple[int, ...]
    noise_multipliers: tuple[float, ...]
    latents: torch.Tensor | None

    @staticmethod
    def none() -> Conditioning:
        return Conditioning((), (), None)

    def __post_init__(self) -> None:
        assert len(self.positions) == len(self.noise_multipliers)
        if self.positions:
            assert self.latents is not None and self.latents.shape[2] == len(self.positions)

    def sigma_scale(self, num_latent: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """`[F_lat]`: 1 for free frames, the noise multiplier at conditioning slots."""
        scale = torch.ones(num_latent, dtype=dtype)
        for position, multiplier in zip(self.positions, self.noise_multipliers, strict=True):
            scale[position] = multiplier
        return scale

    def initial_latents(self, noise: torch.Tensor) -> torch.Tensor:
        """`x_0`: the noise, with each conditioning slot set to `(1-m)*z + m*eps` (`m=0` -> exactly `z`)."""
        x = noise.clone()
        if not self.positions:
            return x
        z = self.latents.to(device=noise.device, dtype=noise.dtype)
        for j, (position, m) in enumerate(zip(self.positions, self.noise_multipliers, strict=True)):
            if m == 0.0:
                x[:, :, position] = z[:, :, j]
            else:
                x[:, :, position] = (1.0 - m) * z[:, :, j] + m * noise[:, :, position]
        return x
