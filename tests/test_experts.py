"""Two-expert models (Wan2.2, pusa-algorithm.md section 8): the expert of each step, the sampler's per-step
choice, the tiny-random-a14b preset in memory and written in both layouts, every task on it, and the
named errors for missing or mismatched experts. Tiny real classes; forwards counted by forward hooks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import raises_input_error, save_clip, save_image
from pusa.conditioning import Conditioning
from pusa.experts import expert_for, expert_plan
from pusa.pipeline import PusaPipeline
from pusa.request import GenerationRequest, validate
from pusa.sampling import sample
from pusa.schedule import flow_sigmas
from pusa.weights.checkpoints import CheckpointError
from pusa.weights.folders import find_layout
from pusa.weights.registry import model_limits
from pusa.weights.wan_original import write_two_expert_folder

SMALL = dict(width=32, height=32, seed=3)


# ---------------------------------------------------------------- the choice
def test_ten_steps_split_five_high_five_low():
    assert expert_plan(flow_sigmas(10, 5.0).tolist(), 0.875) == ["high"] * 5 + ["low"] * 5


def test_twelve_steps_t_875_is_high_strict_below_is_low():
    sigmas = flow_sigmas(12, 5.0).tolist()
    assert sigmas[5] * 1000 == 875.0
    plan = expert_plan(sigmas, 0.875)
    assert plan[5] == "high" and plan[6] == "low" and plan.count("high") == 6
    assert expert_for(875.0, 0.875) == "high" and expert_for(874.9999, 0.875) == "low"
    assert expert_plan(sigmas, 0.0) == ["high"] * 12 and expert_plan(sigmas, 1.0) == ["high"] + ["low"] * 11


def _toy(scale: float):
    def velocity(x, timestep, text):
        return x * scale + timestep.view(*timestep.shape, 1, 1).unsqueeze(1) * 1e-3 + text

    return velocity


def test_sampler_passes_the_base_timestep_before_multipliers_and_one_expert_is_unchanged():
    noise = torch.randn(1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    sigmas = flow_sigmas(4, 5.0)
    cond = Conditioning((0,), (0.3,), torch.zeros(1, 2, 1, 2, 2))
    seen = []

    def chooser(i, t):
        seen.append((i, t))
        return _toy(0.1)

    plain = sample(_toy(0.1), noise, sigmas, cond, 0.5, 0.25, cfg=3.0)
    chosen = sample(_toy(0.1), noise, sigmas, cond, 0.5, 0.25, cfg=3.0, velocity_for_step=chooser)
    assert torch.equal(plain, chosen)  # the same denoiser chosen per step: bit for bit the same
    assert seen == [(i, float(sigmas[i]) * 1000) for i in range(4)]  # not the conditioned frame's 0.3 x


def test_both_cfg_passes_use_the_step_expert():
    noise = torch.randn(1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    sigmas = flow_sigmas(10, 5.0)
    calls: list[str] = []

    def named(name):
        def velocity(x, timestep, text):
            calls.append(name)
            return torch.zeros_like(x)

        return velocity

    experts = {"high": named("high"), "low": named("low")}
    sample(named("none"), noise, sigmas, Conditioning.none(), 1.0, 0.0, cfg=2.0,
           velocity_for_step=lambda i, t: experts[expert_for(t, 0.875)])  # fmt: skip
    assert calls == ["high"] * 10 + ["low"] * 10  # two passes per step, 5 steps each


# ---------------------------------------------------------------- the preset and its folders
@pytest.fixture(scope="module")
def pipe2() -> PusaPipeline:
    return PusaPipeline.from_preset("tiny-random-a14b")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("a14b")
    return {
        layout: write_two_expert_folder(base / layout, layout) for layout in ("wan-original", "diffusers")
    }


def _count_forwards(pipe: PusaPipeline) -> tuple[dict[str, int], list]:
    counts = {"high": 0, "low": 0}
    handles = []
    for name, model in (("high", pipe.transformer), ("low", pipe.transformer_2)):
        handles.append(model.register_forward_hook(lambda *_, n=name: counts.__setitem__(n, counts[n] + 1)))
    return counts, handles


def test_each_step_runs_its_expert_for_both_cfg_passes(pipe2):
    counts, handles = _count_forwards(pipe2)
    try:
        out = pipe2.text_to_video("a fox", num_inference_steps=10, cfg=3.0, num_frames=5, **SMALL)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == {"high": 10, "low": 10}
    assert out.settings["expert_steps"] == ["high"] * 5 + ["low"] * 5
    assert out.settings["experts"] == 2 and out.settings["boundary"] == 0.875
    assert out.settings["dit_forwards"] == 20


def test_the_boundary_moves_the_split_and_changes_the_video(pipe2):
    counts, handles = _count_forwards(pipe2)
    try:
        late = pipe2.text_to_video(
            "a fox", num_inference_steps=4, cfg=1.0, num_frames=5, boundary=0.0, **SMALL
        )
    finally:
        for handle in handles:
            handle.remove()
    assert counts == {"high": 4, "low": 0} and late.settings["expert_steps"] == ["high"] * 4
    default = pipe2.text_to_video("a fox", num_inference_steps=4, cfg=1.0, num_frames=5, **SMALL)
    assert default.settings["expert_steps"] == ["high", "high", "low", "low"]
    assert not np.array_equal(late.frames, default.frames)


def test_both_layouts_load_and_make_the_preset_video(pipe2, folders):
    expected = pipe2.text_to_video("a fox", num_inference_steps=3, num_frames=5, **SMALL).frames
    for layout, folder in folders.items():
        found = find_layout(folder)
        assert found.layout == layout and found.transformer_2 is not None
        assert model_limits(folder).experts == 2
        pipe = PusaPipeline.from_pretrained(folder)
        assert pipe.num_experts == 2 and pipe.defaults.boundary == 0.875
        video = pipe.text_to_video("a fox", num_inference_steps=3, num_frames=5, **SMALL).frames
        assert np.array_equal(video, expected), layout


def test_one_expert_model_is_unchanged(tiny_random):
    assert tiny_random.num_experts == 1 and tiny_random.limits.experts == 1
    out = tiny_random.text_to_video("a fox", num_inference_steps=2, num_frames=5, **SMALL)
    assert out.settings["expert_steps"] is None and out.settings["experts"] == 1
    assert out.settings["dit_forwards"] == 4


@pytest.mark.parametrize(
    "task",
    ["t2v", "i2v", "frames", "v2v", "extension", "completion", "transition"],
)
def test_every_task_runs_on_two_experts(pipe2, tmp_path, task):
    frames = 13 if task in ("transition", "completion") else 9
    common = dict(num_inference_steps=2, num_frames=frames, **SMALL)
    image, other = save_image(tmp_path / "a.png"), save_image(tmp_path / "b.png", seed=1)
    clip, end = save_clip(tmp_path / "a.mp4", 17), save_clip(tmp_path / "b.mp4", 17, seed=1)
    run = {
        "t2v": lambda: pipe2.text_to_video("a fox", **common),
        "i2v": lambda: pipe2.image_to_video(image, "a fox", **common),
        "frames": lambda: pipe2.frames_to_video([image, other], "a fox", **common),
        "v2v": lambda: pipe2.video_to_video(clip, "a fox", positions=[0, 1], **common),
        "extension": lambda: pipe2.extend_video(clip, "a fox", **common),
        "completion": lambda: pipe2.complete_video(clip, "a fox", **common),
        "transition": lambda: pipe2.transition(clip, end, "a fox", **common),
    }[task]
    out = run()
    assert out.frames.shape == (frames, 32, 32, 3)
    assert out.settings["expert_steps"] == ["high", "low"]


# ---------------------------------------------------------------- named errors
def test_boundary_out_of_range_is_named():
    limits = model_limits("tiny-random-a14b")
    for bad in (-0.1, 1.5, float("nan")):
        with raises_input_error("boundary"):
            validate(GenerationRequest(task="t2v", prompt="x", boundary=bad), limits, media=False)


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def test_missing_expert_is_named(folders, tmp_path):
    original = _copy(folders["wan-original"], tmp_path)
    shutil.rmtree(original / "low_noise_model")
    with pytest.raises(CheckpointError, match=r"low-noise expert .*low_noise_model.*high_noise_model/ and"):
        find_layout(original)
    diffusers = _copy(folders["diffusers"], tmp_path)
    shutil.rmtree(diffusers / "transformer_2")
    with pytest.raises(CheckpointError, match=r"low-noise expert .*transformer_2.*model_index.json names"):
        PusaPipeline.from_pretrained(diffusers)


def test_mismatched_expert_is_named_before_loading(folders, tmp_path):
    original = _copy(folders["wan-original"], tmp_path)
    config = original / "low_noise_model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_layers": 3}))
    with pytest.raises(
        CheckpointError, match=r"experts do not match.*low_noise_model/config.json.*num_layers: 2 vs 3"
    ):
        find_layout(original)


# ---------------------------------------------------------------- memory: one expert resident at a time
def test_swap_tier_gives_the_same_video_and_counts_its_swaps(pipe2, tmp_path):
    from pusa.runtime.expert_swap import choose_expert_tier

    swapped = PusaPipeline.from_preset("tiny-random-a14b", memory="swap")
    assert swapped.acceleration["memory_tier"] == "swap"
    common = dict(num_inference_steps=4, cfg=2.0, num_frames=5, **SMALL)
    first = swapped.text_to_video("a fox", **common)
    assert first.settings["expert_swaps"]["swaps"] == 1  # high resident, low swapped in at the boundary
    assert first.settings["acceleration"]["memory_tier"] == "swap"
    again = swapped.text_to_video("a fox", **common)
    assert again.settings["expert_swaps"]["swaps"] == 2  # back to high, then low again
    reference = pipe2.text_to_video("a fox", **common).frames
    assert np.array_equal(first.frames, reference) and np.array_equal(again.frames, reference)
    from test_lora_stack import write_peft

    lora = f"{write_peft(tmp_path / 'p.safetensors')}:1.3@low"  # fused into the low expert while it is on the host
    with_lora = swapped.text_to_video("a fox", loras=lora, **common).frames
    assert np.array_equal(with_lora, pipe2.text_to_video("a fox", loras=lora, **common).frames)
    pipe2.text_to_video("a fox", **common)  # the shared pipeline back to no LoRA
    with raises_input_error("memory", "swap"):
        PusaPipeline.from_preset("tiny-random", memory="swap")
    gib = 2**30
    sizes = {"text_encoder": 11 * gib, "vae": gib // 2}
    # Wan2.2-A14B in bf16: 28.6 GB per expert
    expert = int(28.6e9)
    assert choose_expert_tier(80 * gib, sizes, expert, 10 * gib) == "full"
    assert choose_expert_tier(48 * gib, sizes, expert, 10 * gib) == "swap"
    assert choose_expert_tier(24 * gib, sizes, expert, 10 * gib) in ("balanced", "low")
