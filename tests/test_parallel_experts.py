"""`--parallel` on a two-expert model (Wan2.2; the `tiny-random-a14b` preset): every rank holds both
experts and each step's DiT call runs on the step's expert on every rank, with that expert's LoRA stack.
2 CPU ranks (gloo), context parallel and CFG-parallel, against the 1-rank latents.

Its own module: one process holds one default process group (test_parallel.py's pusa-tiny group and this
module's two-expert one are closed at the end of their modules)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from helpers import random_pixels
from pusa.parallel.context import TokenSplit
from pusa.parallel.launch import LoadSpec, ParallelRunner
from pusa.pipeline import GenerationRequest, PusaPipeline


@pytest.fixture(scope="module")
def runner():
    with ParallelRunner(2, "context", LoadSpec("tiny-random-a14b", threads=1)) as group:
        yield group


@pytest.fixture(scope="module")
def single():
    return PusaPipeline.from_model("tiny-random-a14b")


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> str:
    """A different LoRA on each expert: a follower that fused one expert's stack into the other, or ran the
    wrong expert, would not give rank 0's numbers."""
    from test_lora_stack import write_peft

    base = tmp_path_factory.mktemp("expert-loras")
    return f"{write_peft(base / 'h.safetensors', seed=0)}:1.3@high\n{write_peft(base / 'l.safetensors', seed=7)}:0.8@low"


def _latents(pipe, request: GenerationRequest) -> tuple[torch.Tensor, dict]:
    seen = []
    out = pipe.generate(request, lambda info: seen.append(info.latents.clone()))
    return seen[-1], out.settings


# 17 frames at 48x32 (8x VAE, patch 2x2, 2 heads): 5 latent frames of 3x2 tokens, 30 tokens; rank 1 starts at
# token 15, inside latent frame 2. Two steps at cfg 3.0: the first on the high-noise expert, the second on
# the low-noise one, two DiT passes each.
SIZE = dict(width=48, height=32, num_frames=17, num_inference_steps=2)
T2V = GenerationRequest(task="t2v", prompt="a fox", seed=3, cfg=3.0, **SIZE)
I2V = GenerationRequest(
    task="i2v",
    prompt="it moves",
    images=[random_pixels((32, 48, 3), seed=1)],
    positions=[0],
    noise_multipliers=[0.2],
    seed=5,
    cfg=3.0,
    **SIZE,
)


def test_the_split_falls_inside_a_latent_frame():
    split = TokenSplit(5 * 6, 6, 2, 1)
    assert split.start == 15 and split.start % 6 != 0


@pytest.mark.slow  # the module's 2-process parallel group (gloo) of a two-expert model
@pytest.mark.parametrize(
    ("mode", "request_", "with_loras"),
    [("context", T2V, False), ("context", I2V, True), ("cfg", T2V, True), ("cfg", I2V, False)],
    ids=["cp-t2v", "cp-i2v-loras", "cfg-t2v-loras", "cfg-i2v"],
)
def test_two_experts_in_parallel_match_one_rank(runner, single, loras, mode, request_, with_loras):
    if with_loras:
        request_ = replace(request_, loras=loras)
    reference, expected = _latents(single, request_)
    assert expected["expert_steps"] == ["high", "low"]  # both experts take part
    runner.set_mode(mode)
    latents, settings = _latents(runner.pipe, request_)
    # float32 rounding of the split matrix products only (one torch thread per rank)
    torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5)
    assert settings["expert_steps"] == ["high", "low"] and settings["experts"] == 2
    assert [entry["expert"] for entry in settings["lora_stack"]] == (["high", "low"] if with_loras else [])
    assert settings["acceleration"]["parallel"]["mode"] == mode


@pytest.mark.slow  # the module's parallel group
def test_the_expert_choice_matters_here(runner, single):
    """The two experts differ enough that following the wrong one shows: all steps on the high-noise
    expert (boundary 0) is another video."""
    runner.set_mode("context")
    default, _ = _latents(runner.pipe, T2V)
    high_only, settings = _latents(runner.pipe, replace(T2V, boundary=0.0))
    assert settings["expert_steps"] == ["high", "high"]
    assert (default - high_only).abs().max() > 1e-2
    torch.testing.assert_close(
        high_only, _latents(single, replace(T2V, boundary=0.0))[0], rtol=1e-5, atol=1e-5
    )
