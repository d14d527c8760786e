"""Step caching for the Pusa DiT: skip the transformer blocks on steps whose input barely changed.

Pure: imports only torch. `StepCache` is two things that work together while one `sampling.sample` runs:

- `cache.wrap(velocity)`: the velocity function, which tells the cache which guidance branch (the text
  embedding: positive, negative, or the CFG batch of both) each call belongs to;
- `cache` itself, the DiT's block runner (`PusaTransformer3DModel.block_runner`): called with the block
  stack and its inputs, it either runs the blocks (and keeps their residual, output - input) or returns
  the input plus the residual its branch kept last time. The patch embedding, the time embedding and the
  output head always run, with this step's per-frame timesteps.

The criterion (TeaCache's idea, made Pusa-aware): block 0's modulated input (the normed hidden states
scaled and shifted by each frame's own timestep embedding) is compared with the previous call's, per
latent frame: mean |m_f - m'_f| / mean |m'_f|. Frames whose timestep did not change since the last call
(conditioned frames at noise multiplier 0 never move) are left out, and the largest change among the
others counts, so one fast frame is not averaged away by many still ones. The changes accumulate over
skipped steps; a step is skipped while the sum stays under `threshold`, never in the first
`warmup_steps` steps, never in the last step, and never more than `max_skips` times in a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

CACHE_MODES = ("off", "pusa")
WARMUP_FRACTION = 0.2  # the first 20% of the steps (at least one) are always computed
MAX_CONSECUTIVE_SKIPS = 2


def warmup_steps_for(num_steps: int) -> int:
    return max(1, math.ceil(WARMUP_FRACTION * num_steps))


@dataclass
class _Branch:
    calls: int = 0
    previous: torch.Tensor | None = None  # block 0's modulated input at the last call, [B, G, hw, D]
    previous_temb: torch.Tensor | None = None  # [B, G, 6, D]
    residual: torch.Tensor | None = None  # blocks' output - input at the last computed call, [B, L, D]
    accumulated: float = 0.0
    consecutive: int = 0


@dataclass
class StepCache:
    """Block-residual reuse across sampling steps (see the module docstring). One per sampling run."""

    threshold: float
    num_steps: int
    warmup_steps: int | None = None  # None: `warmup_steps_for(num_steps)`
    max_skips: int = MAX_CONSECUTIVE_SKIPS
    forwards: int = 0
    skipped: int = 0
    skipped_steps: list[int] = field(default_factory=list)  # step index of each skipped forward
    distances: list[list[float]] = field(default_factory=list)  # per step: each branch's change
    _branches: dict[Hashable, _Branch] = field(default_factory=dict)
    _branch: Hashable = None

    def __post_init__(self) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = warmup_steps_for(self.num_steps)

    # ------------------------------------------------------------------ the velocity side
    def wrap(self, velocity: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """`velocity(x, timestep, text, ...)` that marks which branch (text embedding) each call is."""

        def cached_velocity(
            x: torch.Tensor, timestep: torch.Tensor, text: Any, *args: Any, **kwargs: Any
        ) -> torch.Tensor:
            self._branch = (id(text), tuple(x.shape))
            return velocity(x, timestep, text, *args, **kwargs)

        return cached_velocity

    # ------------------------------------------------------------------ the model side
    def __call__(
        self,
        blocks: Sequence[torch.nn.Module],
        hidden_states: torch.Tensor,  # [B, L, D]
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,  # [B, G, 6, D]
        rotary_emb: Any,
    ) -> torch.Tensor:
        state = self._branches.setdefault(self._branch, _Branch())
        step = state.calls
        state.calls += 1
        self.forwards += 1
        modulated = modulated_input(blocks[0], hidden_states, temb)
        skip = False
        assert self.warmup_steps is not None  # set by __post_init__
        if state.previous is not None and state.previous.shape == modulated.shape:
            distance = frame_change(modulated, state.previous, temb, state.previous_temb)
            while len(self.distances) <= step:
                self.distances.append([])
            self.distances[step].append(distance)
            state.accumulated += distance
            skip = (
                state.residual is not None
                and state.residual.shape == hidden_states.shape
                and self.warmup_steps <= step < self.num_steps - 1
                and state.consecutive < self.max_skips
                and state.accumulated < self.threshold
            )
        state.previous, state.previous_temb = modulated, temb
        if skip and state.residual is not None:  # `skip` implies a residual; the test narrows its type
            state.consecutive += 1
            self.skipped += 1
            self.skipped_steps.append(step)
            return hidden_states + state.residual
        output = hidden_states
        for block in blocks:
            output = block(output, encoder_hidden_states, temb, rotary_emb)
        state.residual = output - hidden_states
        state.accumulated, state.consecutive = 0.0, 0
        return output

    def report(self) -> dict[str, Any]:
        """What the sidecar records: the settings that shaped the skips and how many there were."""
        return {
            "threshold": self.threshold,
            "warmup_steps": self.warmup_steps,
            "max_consecutive_skips": self.max_skips,
            "dit_forwards": self.forwards,
            "dit_forwards_skipped": self.skipped,
            "skipped_steps": sorted(set(self.skipped_steps)),
            # per step from the second: the largest input change over the branches (what was compared)
            "input_changes": [round(max(d), 4) for d in self.distances if d],
        }


def modulated_input(block: torch.nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """Block 0's self-attention input before attention: `norm1(h) * (1 + scale) + shift` with each frame's
    own modulation, `[B, G, hw, D]` in the hidden states' dtype (G = temb's frames: F_lat, or 1)."""
    # nn.Module types its attributes Tensor | Module; a Wan block's are a parameter and a LayerNorm
    table = cast(torch.Tensor, block.scale_shift_table).to(device=temb.device)
    norm1 = cast(Callable[[torch.Tensor], torch.Tensor], block.norm1)
    shift, scale = (table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]  # each [B, G, 1, D]
    batch, length, dim = hidden_states.shape
    groups = temb.shape[1]
    normed = norm1(hidden_states.float()).view(batch, groups, length // groups, dim)
    return (normed * (1 + scale) + shift).to(hidden_states.dtype)


def frame_change(
    current: torch.Tensor, previous: torch.Tensor, temb: torch.Tensor, previous_temb: torch.Tensor | None
) -> float:
    """The largest relative L1 change `mean|c_f - p_f| / mean|p_f|` over the frames f whose timestep
    embedding changed (all frames if `previous_temb` is None); 0.0 if none did."""
    change = (current.float() - previous.float()).abs().mean(dim=(0, 2, 3))  # [G]
    size = previous.float().abs().mean(dim=(0, 2, 3)).clamp_min(1e-12)
    relative = change / size
    if previous_temb is not None and previous_temb.shape == temb.shape:
        moving = (temb != previous_temb).flatten(2).any(dim=2).any(dim=0)  # [G]
        relative = relative[moving]
    return float(relative.max()) if relative.numel() else 0.0


def step_cache(mode: str, threshold: float, num_steps: int) -> StepCache | None:
    """The cache a request asks for (`params`: cache, cache_threshold), or None for "off"."""
    if mode == "off":
        return None
    if mode not in CACHE_MODES:
        raise ValueError(f"cache={mode!r} is not a cache mode; choose one of {', '.join(CACHE_MODES)}")
    return StepCache(threshold=float(threshold), num_steps=num_steps)
