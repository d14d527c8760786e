"""Context parallel and CFG-parallel together: 4 CPU ranks (gloo) = 2 CFG groups x 2 context-parallel ranks
(ranks 0-1 run the positive pass split by tokens, ranks 2-3 the negative one), what
`--parallel 4 --cfg-parallel` starts; and the same 4 ranks as one 4-way context-parallel group. On the
two-expert preset, so the step's expert is followed in both groups. Against the 1-rank latents.

Its own module: one process holds one default process group."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from helpers import random_pixels
from pusa.parallel.context import TokenSplit
from pusa.parallel.flags import rank_layout
from pusa.parallel.launch import LoadSpec, ParallelRunner
from pusa.pipeline import GenerationRequest, PusaPipeline


@pytest.fixture(scope="module")
def runner():
    with ParallelRunner(*rank_layout(4, True), LoadSpec("tiny-random-a14b", threads=1)) as group:
        yield group


@pytest.fixture(scope="module")
def single():
    return PusaPipeline.from_model("tiny-random-a14b")


def _latents(pipe, request: GenerationRequest) -> tuple[torch.Tensor, dict]:
    seen = []
    out = pipe.generate(request, lambda info: seen.append(info.latents.clone()))
    return seen[-1], out.settings


# 17 frames at 48x32: 5 latent frames of 6 tokens, 30 tokens. In a CFG group of 2 ranks the second starts at
# token 15, over all 4 ranks they start at 0, 8, 16, 23: inside latent frames, and of two sizes (2 heads do
# not divide by 4 ranks: "auto" is ring attention there).
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


def test_the_splits_fall_inside_latent_frames():
    assert [TokenSplit(30, 6, 4, r).start for r in range(4)] == [0, 8, 16, 23]
    assert TokenSplit(30, 6, 2, 1).start == 15


@pytest.mark.slow  # a 4-process parallel group (gloo) of a two-expert model
@pytest.mark.parametrize(
    ("mode", "request_", "layout"),
    [
        ("cfg", I2V, (2, 2)),
        ("cfg", replace(T2V, cfg=1.0), (2, 2)),  # no negative pass: the first group alone, split in two
        ("context", T2V, (1, 4)),
    ],
    # few cases: 4 processes on the 2 cores (the other layouts' T2V / I2V cases run on 2 ranks)
    ids=["cfg2x2-i2v", "cfg2x2-cfg1", "cp4-ring-t2v"],
)
def test_four_ranks_match_one_rank(runner, single, mode, request_, layout):
    from pusa.parallel.context import ContextParallelState

    reference, expected = _latents(single, request_)
    assert expected["expert_steps"] == ["high", "low"]
    runner.set_mode(mode)
    latents, settings = _latents(runner.pipe, request_)
    state = runner._modes.handles[0].state  # the hooks on rank 0's high-noise expert
    assert isinstance(state, ContextParallelState) and state.world_size == layout[1]
    # 2 heads: split in two (a CFG group) Ulysses, in four ring attention
    assert settings["acceleration"]["parallel"]["attention"] == ("ring" if mode == "context" else "ulysses")
    assert state.strategy_for(2) == settings["acceleration"]["parallel"]["attention"]
    torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5)
    parallel = settings["acceleration"]["parallel"]
    assert (parallel["cfg_groups"], parallel["ranks_per_pass"]) == layout and parallel["world_size"] == 4
