"""The task methods of `PusaPipeline`: one per task of the studio and the CLI, each building a
`GenerationRequest` and running it (`PusaPipeline.generate`).

Every task takes its own inputs as named arguments and the options all tasks share as keywords typed by
`CommonOptions` (steps, size, seed, guidance, LoRAs, ...), so that a type checker and an editor know each
one; `docs/reference/api.md` lists them. A test checks that `CommonOptions` names exactly the request's shared fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from typing_extensions import TypedDict, Unpack

from .. import recipes
from ..params import PARAMS
from ..request import GenerationRequest, Media, ModelDefaults, listed
from ..sampling import StepCallback
from .record import PusaOutput

__all__ = ["TASK_FIELDS", "CommonOptions", "RunOptions", "TaskMixin"]


class RunOptions(TypedDict, total=False):
    """The keywords every task method takes but the video length (`CommonOptions` adds it; `long_video`
    names it itself). Each is a `GenerationRequest` field but `callback`; None or absent: the model's
    own value (see `request.ModelDefaults`).

    negative_prompt:     what to steer away from (default: Wan's standard negative prompt)
    width, height:       output size in pixels (multiples of the model's patch size)
    fps:                 playback rate written into the mp4
    num_inference_steps: sampling steps
    cfg:                 classifier-free guidance scale (1.0 skips the negative pass)
    shift:               flow-matching schedule shift
    seed:                noise seed (None: a random one, recorded)
    lora_alpha:          strength of the model's own LoRA
    loras:               a LoRA stack, one `FILE[:STRENGTH][@EXPERT]` a line ("" = the model's own)
    preset:              a speed preset ("4-step"): sets steps, cfg, shift and adds its LoRA
    boundary:            two-expert models: high-noise expert while t >= boundary * 1000
    cache:               the Pusa step cache ("off" / "safe" / ...)
    cache_threshold:     the step cache's threshold
    sources:             where in-memory inputs came from, for the record
    callback:            called with a `sampling.StepInfo` after every step; returning False cancels
    """

    negative_prompt: str
    width: int | None
    height: int | None
    fps: float | None
    num_inference_steps: int | None
    cfg: float
    shift: float
    seed: int | None
    lora_alpha: float | None
    loras: str
    preset: str | None
    boundary: float | None
    cache: str
    cache_threshold: float
    sources: dict[str, Any]
    callback: StepCallback | None


class CommonOptions(RunOptions, total=False):
    """The keywords every clip task takes: `RunOptions` and `num_frames`, the video length (4k+1)."""

    num_frames: int | None


# The request fields a task method names itself (the others come through `CommonOptions`).
TASK_FIELDS = (
    "task", "prompt", "images", "video", "end_video", "positions", "noise_multipliers", "recipe",
    "chunk_frames", "context_latents", "chunk_multipliers", "chain",
)  # fmt: skip


class TaskMixin:
    """text_to_video, image_to_video, frames_to_video, video_to_video and its recipes."""

    defaults: ModelDefaults  # provided by `PusaPipeline` (pipeline.core)
    generate: Callable[..., PusaOutput]

    def submit(self, callback: StepCallback | None = None, **fields: Any) -> PusaOutput:
        """Run the request made of `fields` (`GenerationRequest`'s)."""
        return self.generate(GenerationRequest(**fields), callback)

    def text_to_video(self, prompt: str, **common: Unpack[CommonOptions]) -> PusaOutput:
        """A video from `prompt` alone."""
        return self.submit(task="t2v", prompt=prompt, **common)

    def image_to_video(
        self,
        image: Media,
        prompt: str,
        noise_multiplier: float = PARAMS["noise_multiplier"].default,
        **common: Unpack[CommonOptions],
    ) -> PusaOutput:
        """The image becomes latent frame 0, noised by `noise_multiplier` (0 = kept exactly)."""
        return self.submit(
            task="i2v", prompt=prompt, images=[image], positions=[0], noise_multipliers=[noise_multiplier],
            **common,
        )  # fmt: skip

    def frames_to_video(
        self,
        images: Sequence[Media],
        prompt: str,
        positions: Sequence[int] | None = None,
        noise_multipliers: Sequence[float] | None = None,
        **common: Unpack[CommonOptions],
    ) -> PusaOutput:
        """Start/end frames or keyframes: image j goes to latent frame `positions[j]`.

        Defaults (`recipes.spread_positions`, `recipes.keyframe_multipliers`): images spread evenly from
        the first to the last latent frame; multiplier 0.2 for the first and 0.5 for the rest (the
        original demo's "0,20" / "0.2,0.5" at 81 frames).
        """
        images = listed("images", images)
        if positions is None:
            positions = recipes.spread_positions(
                len(images), common.get("num_frames") or self.defaults.num_frames
            )
        positions = listed("positions", positions)
        if noise_multipliers is None:
            noise_multipliers = recipes.keyframe_multipliers(len(positions))
        return self.submit(
            task="frames", prompt=prompt, images=images, positions=positions,
            noise_multipliers=listed("noise_multipliers", noise_multipliers), **common,
        )  # fmt: skip

    def video_to_video(
        self,
        video: Media,
        prompt: str,
        positions: Sequence[int] = (),
        noise_multipliers: Sequence[float] | None = None,
        recipe: str | None = None,
        end_video: Media | None = None,
        **common: Unpack[CommonOptions],
    ) -> PusaOutput:
        """Latent frames `positions` of the source video condition the new one (multiplier default 0.2),
        or a recipe's (`recipes`: "extension", "completion", "transition" with `end_video`)."""
        multipliers = () if noise_multipliers is None else noise_multipliers
        return self.submit(
            task="v2v", prompt=prompt, video=video, end_video=end_video, positions=listed("positions", positions),
            noise_multipliers=listed("noise_multipliers", multipliers), recipe=recipe, **common,
        )  # fmt: skip

    def extend_video(
        self,
        video: Media,
        prompt: str,
        noise_multipliers: Sequence[float] | None = None,
        **common: Unpack[CommonOptions],
    ) -> PusaOutput:
        """Continue a clip: its last `4k-3` frames become the start of the new video (latent frames
        0..k-1), the rest is generated (`recipes.extension`). k is `len(noise_multipliers)` when they are
        given (this method's own way to choose the context: it asks for positions 0..k-1), else the
        recipe's own 4 (13 frames; fewer on a clip of 4 latents or less)."""
        multipliers = [] if noise_multipliers is None else listed("noise_multipliers", noise_multipliers)
        positions = list(range(len(multipliers)))
        return self.video_to_video(video, prompt, positions, multipliers, recipe="extension", **common)

    def complete_video(
        self,
        video: Media,
        prompt: str,
        noise_multipliers: Sequence[float] | None = None,
        **common: Unpack[CommonOptions],
    ) -> PusaOutput:
        """Regenerate the middle of a clip from its first frame and its last 4 frames (`recipes.completion`)."""
        return self.video_to_video(video, prompt, (), noise_multipliers, recipe="completion", **common)

    def transition(
        self,
        start_video: Media,
        end_video: Media,
        prompt: str,
        noise_multipliers: Sequence[float] | None = None,
        **common: Unpack[CommonOptions],
    ) -> PusaOutput:
        """Bridge two clips: the end of `start_video` opens the new video, the start of `end_video` closes
        it, the middle is generated (`recipes.transition`: 9 + 12 frames at 81 frames, 1 + 4 at 17)."""
        return self.video_to_video(
            start_video, prompt, (), noise_multipliers, recipe="transition", end_video=end_video, **common
        )
