"""Host RAM with LoRA stacks and two experts: pristine weights read again from the safetensors files the
DiT was loaded from (no copy in RAM), bit for bit a fresh load, and the `stream` tier that keeps the
inactive expert nowhere, equal to `full`. Tiny real classes (tiny-random-a14b written to folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pusa.pipeline import PusaPipeline
from pusa.weights.checkpoints import load_transformer
from pusa.weights.sources import file_weights, is_placeholder
from pusa.weights.stack import StackFuser, load_lora_cached
from pusa.weights.wan_original import write_dit_original, write_two_expert_folder
from test_lora_stack import write_diff, write_kohya, write_peft


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("host")
    from pusa.weights.registry import tiny_random_a14b_components

    one = tiny_random_a14b_components(5)["transformer"]
    write_dit_original(one, base / "one-original", num_shards=3)  # one expert, Wan's naming, sharded
    one.save_pretrained(base / "one-diffusers", max_shard_size="20KB")  # diffusers' naming, sharded
    return {
        "wan-original": write_two_expert_folder(base / "a14b-original", "wan-original"),
        "diffusers": write_two_expert_folder(base / "a14b-diffusers", "diffusers"),
        "one-original": base / "one-original",
        "one-diffusers": base / "one-diffusers",
        "peft": write_peft(base / "pusa.safetensors"),
        "kohya": write_kohya(base / "lightx2v_4step.safetensors"),
        "diff": write_diff(base / "style.safetensors"),
    }


@pytest.mark.parametrize(
    "dit", ["wan-original/high_noise_model", "diffusers/transformer_2", "one-original", "one-diffusers"]
)
def test_pristine_weights_are_read_from_the_files_and_re_fuses_equal_fresh_loads(files, dit):
    layout, _, sub = dit.partition("/")
    folder = files[layout] / sub if sub else files[layout]
    if layout.startswith("one"):
        assert len(list(folder.glob("*.safetensors"))) > 1  # sharded
    loras = [load_lora_cached(files[k]) for k in ("peft", "kohya", "diff")]
    model = load_transformer(folder, torch.bfloat16)  # a cast to reproduce, fp32 modules kept
    assert file_weights(model) is not None
    fuser = StackFuser(model)
    for strengths in [(1.0, 1.0, 1.0), (1.5, 0.25, 1.0), (0.0, 0.25, 2.0), (0.7, 1.0, 0.0)]:
        fuser.fuse(list(zip(loras, strengths, strict=True)))
        assert fuser._pristine and all(isinstance(s, str) for s in fuser._pristine.values())  # no RAM copy
        fresh = load_transformer(folder, torch.bfloat16)
        StackFuser(fresh).fuse(list(zip(loras, strengths, strict=True)))
        for key, value in fresh.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (strengths, key)
    fuser.fuse([])
    for key, value in load_transformer(folder, torch.bfloat16).state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # cast since it was loaded: the file no longer reproduces it, so a copy is kept (and still exact)
    cast = load_transformer(folder, torch.bfloat16).to(torch.float32)
    kept = StackFuser(cast)
    kept.fuse([(loras[0], 1.5)])
    kept.fuse([])
    assert all(isinstance(s, torch.Tensor) for s in kept._pristine.values())
    for key, value in load_transformer(folder, torch.bfloat16).to(torch.float32).state_dict().items():
        assert torch.equal(cast.state_dict()[key], value), key


@pytest.mark.parametrize("layout", ["wan-original", "diffusers"])
def test_stream_tier_equals_full_and_keeps_the_inactive_expert_nowhere(files, layout):
    folder = files[layout]
    full = PusaPipeline.from_pretrained(folder, memory="full")
    stream = PusaPipeline.from_pretrained(folder, memory="stream")
    swap = PusaPipeline.from_pretrained(folder, memory="swap")  # pinned copies, pristine read from files
    assert stream.acceleration["memory_tier"] == "stream"
    low = list(stream.transformer_2.parameters())
    assert all(is_placeholder(p) for p in low if p.numel() > 1)  # never read
    assert sum(p.untyped_storage().nbytes() for p in low) <= 4 * len(low)
    common = dict(num_inference_steps=4, cfg=2.0, num_frames=5, width=32, height=32, seed=3)
    stacks = [
        [f"{files['peft']}:1.5@high", f"{files['kohya']}:1.4@low"],
        [f"{files['peft']}:0.5@high", f"{files['kohya']}:1.4@low", f"{files['diff']}:1.0@low"],  # while freed
        None,
    ]
    for round_, loras in enumerate(stacks, start=1):
        got = stream.text_to_video("a fox", loras=loras, **common)
        want = full.text_to_video("a fox", loras=loras, **common)
        assert np.array_equal(got.frames, want.frames), loras
        assert np.array_equal(swap.text_to_video("a fox", loras=loras, **common).frames, want.frames), loras
        # round 1: low loaded at the boundary; later rounds: back to high, then low again
        assert got.settings["expert_swaps"]["swaps"] == (1 if round_ == 1 else 2)
        assert got.settings["expert_swaps"]["seconds"] > 0
        assert got.settings["acceleration"]["memory_tier"] == "stream"
    high = [p for p in stream.transformer.parameters() if p.numel() > 1]
    assert all(is_placeholder(p) for p in high)  # the low-noise expert ended the video: high is freed


def test_stream_tier_is_refused_by_name_where_it_cannot_apply(files):
    with pytest.raises(ValueError, match="'stream' reads the experts from a model folder"):
        PusaPipeline.from_preset("tiny-random-a14b", memory="stream")
    with pytest.raises(ValueError, match="'stream' is for two-expert models"):
        PusaPipeline.from_pretrained(files["one-original"].parent / "a14b-original" / "high_noise_model",
                                     memory="stream")  # fmt: skip
    with pytest.raises(ValueError, match="'stream' does not take fp8"):
        PusaPipeline.from_pretrained(files["wan-original"], memory="stream", fp8=True)
