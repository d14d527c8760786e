"""A two-expert model's memory tiers on a parallel group's follower ranks: "swap" (the inactive expert in
host memory, swapped in at the boundary) and "stream" (the inactive expert in no memory, read from its
files at the boundary and its LoRA stack fused again) on every rank, against one process at "full".

2 CPU ranks (gloo), context parallel; each tier's group is started and closed in its own test (one process
holds one default process group; this module's groups come one after the other)."""

from __future__ import annotations

import pytest
import torch

from pusa.parallel.launch import LoadSpec, ParallelRunner
from pusa.pipeline import GenerationRequest, PusaPipeline
from pusa.weights.wan_original import write_two_expert_folder

pytestmark = pytest.mark.slow  # two 2-process parallel groups (gloo) of a two-expert model

# 17 frames at 48x32: 5 latent frames of 6 tokens; rank 1's half starts inside latent frame 2. Four steps
# at cfg 3.0 cross the expert boundary once (high, high, low, low).
REQUEST = GenerationRequest(
    task="t2v", prompt="a fox", seed=3, cfg=3.0, width=48, height=32, num_frames=17, num_inference_steps=4
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_two_expert_folder(tmp_path_factory.mktemp("a14b") / "model", "diffusers")


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> str:
    from test_lora_stack import write_peft

    base = tmp_path_factory.mktemp("expert-loras")
    return f"{write_peft(base / 'h.safetensors', seed=0)}:1.3@high\n{write_peft(base / 'l.safetensors', seed=7)}:0.8@low"


def _latents(pipe, request: GenerationRequest) -> tuple[torch.Tensor, dict]:
    seen = []
    out = pipe.generate(request, lambda info: seen.append(info.latents.clone()))
    return seen[-1], out.settings


@pytest.mark.parametrize("tier", ["swap", "stream"])
def test_follower_ranks_swap_or_stream_their_experts_as_rank_0_does(folder, loras, tier):
    from dataclasses import replace

    single = PusaPipeline.from_pretrained(folder, memory="full")
    requests = [REQUEST, replace(REQUEST, loras=loras), REQUEST]  # a stack, then none: re-fused each time
    want = [_latents(single, r)[0] for r in requests]
    spec = LoadSpec(str(folder), acceleration={"memory": tier}, threads=1)
    with ParallelRunner(2, "context", spec) as group:
        assert group.pipe.acceleration["memory_tier"] == tier
        for request, reference in zip(requests, want, strict=True):
            latents, settings = _latents(group.pipe, request)
            assert settings["expert_steps"] == ["high", "high", "low", "low"]
            assert settings["expert_swaps"]["swaps"] >= 1  # rank 0 swapped; the followers did the same
            assert settings["acceleration"]["parallel"]["world_size"] == 2
            torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5)
