"""Per-frame conditioning (docs/algorithm.md, "Conditioning"). Pure: imports only torch.

A `Conditioning` says, for every latent frame, how strongly its noise level is scaled
(`sigma_scale`: 1 for a free frame, the noise multiplier `m` for a conditioning frame) and which
clean latents sit at the conditioning slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        assert self.latents is not None  # __post_init__: latents come with positions
        z = self.latents.to(device=noise.device, dtype=noise.dtype)
        for j, (position, m) in enumerate(zip(self.positions, self.noise_multipliers, strict=True)):
            if m == 0.0:
                x[:, :, position] = z[:, :, j]
            else:
                x[:, :, position] = (1.0 - m) * z[:, :, j] + m * noise[:, :, position]
        return x
