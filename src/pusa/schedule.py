"""Shifted flow-matching noise schedule (docs/algorithm.md, "The schedule"). Pure: imports only torch (and the
parameter declarations, for the default shift)."""

from __future__ import annotations

import torch

from .params import PARAMS

__all__ = ["DEFAULT_SHIFT", "NUM_TRAIN_TIMESTEPS", "flow_sigmas", "shift_sigmas", "sigma_to_timestep"]

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = PARAMS["shift"].default  # Wan2.1 T2V sample_shift


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the timestep shift `s*u / (1 + (s-1)*u)` that spends more steps at high noise."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def flow_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Sigmas for `num_steps` Euler steps, float64, shape `[num_steps + 1]`, from 1.0 down to a final 0.

    `u_i = linspace(1, 0, N + 1)[:N]`, `sigma_i = shift(u_i)`, and `sigma_N = 0`.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be at least 1")
    if shift <= 0:
        raise ValueError(f"shift={shift!r} must be positive")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:num_steps]
    return torch.cat([shift_sigmas(u, shift), torch.zeros(1, dtype=torch.float64)])


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """Model timestep scale: 0 (clean) .. 1000 (pure noise). Kept as float, never truncated."""
    return sigma * NUM_TRAIN_TIMESTEPS
