"""Long videos: one video longer than the model's clip, chained from clips of its own length
(`recipes.long_video` plans the chunks and their overlaps).

The first chunk is made as its request says (from the prompt, an image at latent 0, or the end of a
source video); each next one opens on the last `context_latents` latents of the one before. How the
overlap is carried is the request's `chain`: "pixel" (each chunk decoded, its end encoded again),
"pixel-matched" (pixel, colours shifted to match the overlap), "latent" (the previous chunk's own latents,
decoded once at the end) or "anchored" (latent, the overlap's first latent made from its last frame).
Progress is one bar over every chunk's steps (`ChunkStepInfo`); a cancel stops at any step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from typing_extensions import Unpack

from .. import recipes
from ..conditioning import Conditioning
from ..params import PARAMS
from ..request import GenerationRequest, Media, first_chunk, long_plan, validate
from ..sampling import StepCallback, StepInfo
from .record import CounterSnapshot, PusaOutput

if TYPE_CHECKING:
    from ..request import ModelLimits
    from .tasks import RunOptions

__all__ = ["ChunkStepInfo", "LongVideoMixin", "chunk_progress", "match_colours"]


@dataclass(frozen=True)
class ChunkStepInfo(StepInfo):
    """A long video's step: `step`/`num_steps` count over every chunk (one progress bar), `chunk` of
    `num_chunks` (0-based) and `chunk_step` (0-based) of `chunk_steps` within it."""

    chunk: int = 0
    num_chunks: int = 1
    chunk_step: int = 0
    chunk_steps: int = 0

    def text(self) -> str:
        return f"chunk {self.chunk + 1}/{self.num_chunks}, step {self.chunk_step + 1}/{self.chunk_steps}"


def chunk_progress(callback: StepCallback | None, chunk: int, num_chunks: int) -> StepCallback | None:
    """A chunk's step callback as one over the whole chain."""
    if callback is None:
        return None

    def on_step(info: StepInfo) -> bool | None:
        return callback(
            ChunkStepInfo(
                chunk * info.num_steps + info.step, num_chunks * info.num_steps, info.sigma, info.latents,
                chunk, num_chunks, info.step, info.num_steps,
            )
        )  # fmt: skip

    return on_step


def match_colours(frames: np.ndarray, seen: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`frames` shifted per channel so that `seen` (its overlap frames) has the mean colour of `target`
    (the same frames as the video so far has them): a re-encoded chunk keeps the video's colours."""
    shift = target.reshape(-1, 3).astype(np.float64).mean(0) - seen.reshape(-1, 3).astype(np.float64).mean(0)
    return np.clip(frames.astype(np.float64) + shift, 0, 255).round().astype(np.uint8)


class LongVideoMixin:
    """The long task of `PusaPipeline`: `long_video` and the chain behind it."""

    # provided by `PusaPipeline` (pipeline.core)
    if TYPE_CHECKING:

        @property
        def limits(self) -> ModelLimits: ...

    submit: Callable[..., PusaOutput]
    conditioning_for: Callable[[GenerationRequest], Conditioning]
    sample_latents: Callable[..., torch.Tensor]
    encode_frames: Callable[[np.ndarray], torch.Tensor]
    decode_latents: Callable[[torch.Tensor], np.ndarray]
    output_of: Callable[..., PusaOutput]

    def long_video(
        self,
        prompt: str,
        num_frames: int,
        image: Media | None = None,
        video: Media | None = None,
        noise_multiplier: float = PARAMS["noise_multiplier"].default,
        context_latents: int = PARAMS["context_latents"].default,
        chunk_multipliers: Sequence[float] | None = None,
        chunk_frames: int | None = None,
        chain: str = PARAMS["chain"].default,
        **common: Unpack[RunOptions],
    ) -> PusaOutput:
        """One video of `num_frames` frames, chained from clips of the model's own length
        (`recipes.long_video`): the first from the prompt, `image` (latent 0, like i2v) or the end of
        `video` (like the extension recipe); each next one opens on the last `context_latents` latents
        of the one before. `chain`: "pixel" (default, the least drift measured: each chunk decoded and
        its end encoded again), "pixel-matched" (pixel, each chunk's colours shifted to match the
        overlap), "latent" (the overlap is the previous chunk's own latents; decoded once at the end),
        "anchored" (latent, the overlap's first latent made from its last frame alone). `common`: the
        options every task takes (`CommonOptions`)."""
        extra: dict[str, Any] = {}
        if image is not None:
            extra = dict(images=[image], positions=[0], noise_multipliers=[noise_multiplier])
        return self.submit(
            task="long", prompt=prompt, num_frames=num_frames, video=video, chunk_frames=chunk_frames,
            context_latents=context_latents, chunk_multipliers=list(chunk_multipliers or ()), chain=chain,
            **extra, **common,
        )  # fmt: skip

    def generate_long(
        self,
        request: GenerationRequest,
        callback: StepCallback | None,
        started: float,
        before: CounterSnapshot,
    ) -> PusaOutput:
        """A validated long request: the chain, then its record with every chunk's plan."""
        plan = long_plan(request)
        if request.chain in ("latent", "anchored"):
            video = self.decode_latents(self.chain_latents(request, callback, validated=True))
        else:
            video = self.chain_pixels(request, plan, callback)
        output = self.output_of(request, video, started, before)
        output.settings["chunks"] = plan.record()
        return output

    def chunk_latents(
        self,
        request: GenerationRequest,
        chunk: recipes.Chunk,
        count: int,
        conditioning: Conditioning | None,
        callback: StepCallback | None,
    ) -> torch.Tensor:
        """One chunk's clean latents: the first conditioned as its request says (`first_chunk`), the
        others by `conditioning` (the overlap)."""
        clip = replace(first_chunk(request), seed=chunk.seed)
        if chunk.index == 0:
            conditioning = self.conditioning_for(clip)
        else:
            clip = replace(
                clip, task="t2v", images=(), video=None, recipe=None, positions=(), noise_multipliers=()
            )
        return self.sample_latents(clip, conditioning, chunk_progress(callback, chunk.index, count))

    def chain_latents(
        self, request: GenerationRequest, callback: StepCallback | None = None, validated: bool = False
    ) -> torch.Tensor:
        """A long request's latents, chained in latent space: chunk k's overlap (its latents
        0..context-1) is chunk k-1's last `context` clean latents themselves, not decoded and encoded
        again, and the long video takes them from chunk k-1; `[1, C, F_lat, h, w]` for all its frames.
        "anchored": the same, but the overlap's latent 0 is its last pixel frame encoded alone (a clip's
        latent 0 is one frame; the chained latent there covers 4)."""
        request = request if validated else validate(request, self.limits)
        plan = long_plan(request)
        kept: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for chunk, before in zip(plan.chunks, (None, *plan.chunks), strict=False):
            conditioning = None
            if chunk.index and previous is not None and before is not None:
                latents = previous[:, :, -plan.context :]
                if request.chain == "anchored":
                    # Latent 0 of a clip is one frame: the overlap's last frame, encoded alone.
                    frame = self.decode_latents(previous)[chunk.first_frame - before.first_frame]
                    latents = torch.cat([self.encode_frames(frame[None]), latents[:, :, 1:]], dim=2)
                conditioning = Conditioning(plan.positions, plan.noise_multipliers, latents)
            previous = self.chunk_latents(request, chunk, len(plan.chunks), conditioning, callback)
            kept.append(previous[:, :, chunk.keep_from : chunk.keep_to])
        return torch.cat(kept, dim=2)

    def chain_pixels(
        self, request: GenerationRequest, plan: recipes.LongPlan, callback: StepCallback | None
    ) -> np.ndarray:
        """A long video chained in pixels: each chunk decoded; the next opens on its last frames encoded
        again (as the extension recipe does); "pixel-matched" shifts each chunk's colours so that its
        overlap has the colours the video so far has there."""
        video = np.zeros((0,), np.uint8)
        for chunk in plan.chunks:
            conditioning = None
            if chunk.index:
                head = video[chunk.first_frame : chunk.first_frame + plan.overlap_frames]
                conditioning = Conditioning(plan.positions, plan.noise_multipliers, self.encode_frames(head))
            frames = self.decode_latents(
                self.chunk_latents(request, chunk, len(plan.chunks), conditioning, callback)
            )
            first, last = chunk.frames
            if chunk.index and request.chain == "pixel-matched":
                target = video[chunk.first_frame : chunk.first_frame + plan.overlap_frames]
                frames = match_colours(frames, frames[: plan.overlap_frames], target)
            part = frames[first - chunk.first_frame : last - chunk.first_frame + 1]
            video = part if chunk.index == 0 else np.concatenate([video, part])
        return video
