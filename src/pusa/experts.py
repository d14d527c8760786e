"""Which DiT runs a sampling step: Wan2.2's two experts (docs/algorithm.md, "Two experts (Wan2.2)"). Pure (no torch).

A two-expert model (Wan2.2-T2V-A14B) has a high-noise and a low-noise DiT of the same shape, sharing the
text encoder, the VAE and the schedule. Step i runs the high-noise expert while its base timestep
`t_i = 1000 * sigma_i` (the unconditioned frames' timestep, before any noise multiplier) is at least
`boundary * 1000`, the low-noise one when it is strictly below. Both CFG passes and the conditioned frames
use the step's expert. A one-expert model has nothing to choose.
"""

from __future__ import annotations

from collections.abc import Sequence

HIGH, LOW = "high", "low"
EXPERTS = (HIGH, LOW)
ALL = "all"  # a LoRA bound to every DiT of the model
LORA_TARGETS = (ALL, *EXPERTS)
DEFAULT_BOUNDARY = 0.875  # Wan2.2-T2V-A14B's (diffusers' boundary_ratio)
NUM_TRAIN_TIMESTEPS = 1000


def expert_for(base_timestep: float, boundary: float) -> str:
    """ "high" while `base_timestep >= boundary * 1000`, "low" when strictly below."""
    return HIGH if float(base_timestep) >= boundary * NUM_TRAIN_TIMESTEPS else LOW


def expert_plan(sigmas: Sequence[float], boundary: float) -> list[str]:
    """The expert of each of the `len(sigmas) - 1` steps along a schedule ending at 0."""
    return [expert_for(NUM_TRAIN_TIMESTEPS * float(s), boundary) for s in list(sigmas)[:-1]]
