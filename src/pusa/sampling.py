"""Euler sampling with per-frame sigmas and classifier-free guidance (docs/algorithm.md, "The sampler").

Pure: imports only torch. The denoiser is any callable `velocity(x, timestep, text) -> v` where
`x` is `[B, C, F, h, w]` and `timestep` is `[B, F]` on the 0..1000 scale. Randomness is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .conditioning import Conditioning
from .schedule import sigma_to_timestep

VelocityFn = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What a per-step callback sees: after step `step` (0-based) of `num_steps`."""

    step: int
    num_steps: int
    sigma: float
    latents: torch.Tensor


# A per-step callback: returning False cancels (`Cancelled`).
StepCallback = Callable[[StepInfo], "bool | None"]


class Cancelled(Exception):
    """Raised out of `sample` when the step callback returns False (the user pressed Cancel)."""


def guided_velocity(
    velocity: VelocityFn,
    x: torch.Tensor,
    timestep: torch.Tensor,
    text: object,
    negative_text: object,
    cfg: float,
    batched_text: object = None,
) -> torch.Tensor:
    """`v_neg + cfg * (v_pos - v_neg)`; at cfg 1.0 the negative pass is skipped entirely.

    batched_text: `cfg_text_batch(text, negative_text)`: the two passes run as one forward of batch 2B
    (positive first), the same numbers to float rounding (each sample of a batch is computed alone)."""
    if cfg == 1.0:
        return velocity(x, timestep, text)
    if batched_text is not None:
        v_pos, v_neg = velocity(torch.cat([x, x]), torch.cat([timestep, timestep]), batched_text).chunk(2)
        return v_neg + cfg * (v_pos - v_neg)
    v_pos = velocity(x, timestep, text)
    v_neg = velocity(x, timestep, negative_text)
    return v_neg + cfg * (v_pos - v_neg)


def cfg_text_batch(text: object, negative_text: object) -> torch.Tensor:
    """The positive and negative text embeddings `[B, L, D]` as one batch `[2B, L, D]` (positive first);
    both must be tensors of the same shape (the pipeline pads every prompt to the same length)."""
    if not (isinstance(text, torch.Tensor) and isinstance(negative_text, torch.Tensor)):
        raise TypeError("CFG batching needs the text and negative text as tensors")
    if text.shape != negative_text.shape:
        raise ValueError(
            f"CFG batching needs text embeddings of one shape; got {tuple(text.shape)} and "
            f"{tuple(negative_text.shape)}"
        )
    return torch.cat([text, negative_text])


def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    conditioning: Conditioning,
    text: object,
    negative_text: object = None,
    cfg: float = 1.0,
    callback: StepCallback | None = None,
    velocity_for_step: Callable[[int, float], VelocityFn] | None = None,
    cfg_batch: bool = False,
) -> torch.Tensor:
    """Denoise `noise` `[B, C, F, h, w]` along `sigmas` `[N + 1]` (ending at 0).

    Frame f moves from `scale_f * sigma_i` to `scale_f * sigma_{i+1}` at step i, where `scale_f` is
    the noise multiplier at conditioning slots and 1 elsewhere, so a multiplier-0 frame never moves.
    `callback(StepInfo)` runs after every step; returning False stops with `Cancelled`.
    `velocity_for_step(i, t_i)`, if given, returns the denoiser of step i from its index and its base
    timestep `t_i = 1000 * sigma_i` (before any noise multiplier): a two-expert model's choice
    (`pusa.experts.expert_for`). Both CFG passes of the step use it; without it every step uses `velocity`.
    cfg_batch: run the positive and negative passes as one forward of batch 2B (`guided_velocity`).
    """
    batch, _, num_latent = noise.shape[:3]
    scale = conditioning.sigma_scale(num_latent, dtype=torch.float64)  # [F]
    x = conditioning.initial_latents(noise)
    num_steps = len(sigmas) - 1
    batched_text = cfg_text_batch(text, negative_text) if cfg_batch and cfg != 1.0 else None
    for i in range(num_steps):
        sigma_f = scale * sigmas[i]  # [F], float64
        sigma_next_f = scale * sigmas[i + 1]
        timestep = sigma_to_timestep(sigma_f).to(device=x.device, dtype=torch.float32)
        timestep = timestep.unsqueeze(0).expand(batch, num_latent)  # [B, F]
        step_velocity = velocity
        if velocity_for_step is not None:
            step_velocity = velocity_for_step(i, float(sigma_to_timestep(sigmas[i])))
        v = guided_velocity(step_velocity, x, timestep, text, negative_text, cfg, batched_text)
        dt = (sigma_next_f - sigma_f).to(device=x.device, dtype=torch.float32).view(1, 1, num_latent, 1, 1)
        x = (x.float() + v.float() * dt).to(x.dtype)
        if callback is not None and callback(StepInfo(i, num_steps, float(sigmas[i + 1]), x)) is False:
            raise Cancelled(f"cancelled after step {i + 1} of {num_steps}")
    return x
