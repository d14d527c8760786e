"""Host RAM with LoRA stacks and two experts: pristine weights read again from the safetensors files the
DiT was loaded from (no copy in RAM), bit for bit a fresh load, and the `stream` tier that keeps the
inactive expert nowhere, equal to `full`. Tiny real classes (tiny-random-a14b written to folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import raises_input_error
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


@pytest.mark.slow  # two-expert videos at two tiers, both layouts
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
    with raises_input_error("memory", "stream") as caught:
        PusaPipeline.from_preset("tiny-random-a14b", memory="stream")
    assert "reads the experts from a model folder" in caught.value.allowed
    with raises_input_error("memory", "stream") as caught:
        PusaPipeline.from_pretrained(files["one-original"].parent / "a14b-original" / "high_noise_model",
                                     memory="stream")  # fmt: skip
    assert "for two-expert models" in caught.value.allowed
    with raises_input_error("memory", "stream") as caught:
        PusaPipeline.from_pretrained(files["wan-original"], memory="stream", fp8=True)
    assert caught.value.problem == "cannot be used with fp8"


# Wan2.2-A14B in bf16 (benchmarks/host_memory.py): one expert, the umT5 encoder, the VAE in float32
A14B = dict(expert_bytes=28_580_000_000, text_bytes=11_360_000_000, vae_bytes=508_000_000)


@pytest.mark.parametrize(
    ("requested", "free_gb", "host_gb", "tier", "inactive"),
    [
        ("auto", 141, 64, "full", "device"),  # an H200 holds both experts: host RAM holds the encoder only
        ("auto", 48, 128, "swap", "pinned host memory"),  # one expert fits; both pinned fit in 128 GB
        ("auto", 48, 64, "stream", "files"),  # ... but not in 64 GB: the inactive one from its files
        ("auto", 24, 128, "balanced", "pinned host memory"),
        ("auto", 24, 64, "balanced", "files"),  # a 24 GB card on a 64 GB host
        ("auto", 12, 64, "low", "files"),
        ("auto", None, 256, "full", "device"),  # a CPU run: both experts in RAM when they fit
        ("auto", None, 64, "stream", "files"),
        ("balanced", None, 64, "balanced", "files"),  # asked for: streams its inactive expert if it must
        ("low", 80, 128, "low", "pinned host memory"),
        ("swap", 80, 32, "swap", "pinned host memory"),  # other explicit tiers: as asked
        ("balanced", 24, None, "balanced", "pinned host memory"),  # host RAM unknown: nothing refused
    ],
)
def test_the_memory_plan_counts_host_ram(requested, free_gb, host_gb, tier, inactive):
    from pusa.runtime.memory import plan_expert_memory

    free = None if free_gb is None else free_gb * 10**9
    host = None if host_gb is None else host_gb * 10**9
    plan = plan_expert_memory(requested, free_bytes=free, host_bytes=host, **A14B)
    assert (plan.tier, plan.inactive_expert) == (tier, inactive), plan.reason
    assert plan.reason.startswith("asked for" if requested != "auto" else "auto")
    if inactive == "files" and requested != "swap":
        assert "68.5 GB of host RAM" in plan.reason or "68.6 GB of host RAM" in plan.reason, plan.reason


@pytest.mark.slow  # two-expert videos at two tiers
def test_balanced_with_a_small_host_streams_the_inactive_expert_and_equals_full(files):
    """A host budget (a parameter, not a mock) too small to pin both experts: `auto` on the CPU picks
    stream, `balanced` keeps its tier and reads the inactive expert from its files at the boundary; the
    videos equal full's, the LoRA stacks changed while an expert is freed included."""
    folder = files["wan-original"]
    full = PusaPipeline.from_pretrained(folder, memory="full")
    auto = PusaPipeline.from_pretrained(folder, memory="auto", host_bytes=1)
    assert (auto.acceleration["memory_tier"], auto.acceleration["inactive_expert"]) == ("stream", "files")
    roomy = PusaPipeline.from_pretrained(folder, memory="auto", host_bytes=10**12)
    assert (roomy.acceleration["memory_tier"], roomy.acceleration["inactive_expert"]) == ("full", "device")
    balanced = PusaPipeline.from_pretrained(folder, memory="balanced", host_bytes=1)
    assert balanced.acceleration["memory_tier"] == "balanced"
    assert all(is_placeholder(p) for p in balanced.transformer_2.parameters() if p.numel() > 1)  # never read
    common = dict(num_inference_steps=4, cfg=2.0, num_frames=5, width=32, height=32, seed=3)
    stacks = [
        [f"{files['peft']}:1.5@high", f"{files['kohya']}:1.4@low"],
        [f"{files['peft']}:0.5@high", f"{files['kohya']}:1.4@low", f"{files['diff']}:1.0@low"],
    ]
    for round_, loras in enumerate(stacks, start=1):
        got = balanced.text_to_video("a fox", loras=loras, **common)
        assert np.array_equal(got.frames, full.text_to_video("a fox", loras=loras, **common).frames), loras
        assert got.settings["expert_swaps"]["swaps"] == (1 if round_ == 1 else 2)
        record = got.settings["acceleration"]
        assert (record["memory_tier"], record["inactive_expert"]) == ("balanced", "files")
        assert (
            "cannot" not in record["memory_reason"]
            and "the inactive expert is read from its files" in (record["memory_reason"])
        )
    # the low-noise expert ended the video: the high-noise one is freed, its offloading hooks gone with it
    assert all(is_placeholder(p) for p in balanced.transformer.parameters() if p.numel() > 1)
    assert (
        not hasattr(balanced.transformer, "_diffusers_hook") or not balanced.transformer._diffusers_hook.hooks
    )


@pytest.mark.slow  # two-expert videos with reloads
def test_adapter_lora_mode_survives_the_stream_tiers_reloads(files):
    """lora_mode="adapter": the stack as PEFT adapters, which an expert read again from its files keeps
    (nothing re-fused at the boundary); stream and balanced-from-files equal full, and the fused mode up
    to float rounding."""
    folder = files["wan-original"]
    full = PusaPipeline.from_pretrained(folder, memory="full", lora_mode="adapter")
    stream = PusaPipeline.from_pretrained(folder, memory="stream", lora_mode="adapter")
    balanced = PusaPipeline.from_pretrained(folder, memory="balanced", host_bytes=1, lora_mode="adapter")
    fused = PusaPipeline.from_pretrained(folder, memory="full")
    common = dict(num_inference_steps=4, cfg=2.0, num_frames=5, width=32, height=32, seed=3)
    for loras in ([f"{files['peft']}:1.5@high", f"{files['kohya']}:1.4@low"], [f"{files['kohya']}:0.6"]):
        want = full.text_to_video("a fox", loras=loras, **common)
        assert want.settings["lora_mode"] == "adapter"
        for pipe in (stream, balanced):
            got = pipe.text_to_video("a fox", loras=loras, **common)
            assert np.array_equal(got.frames, want.frames), (pipe.acceleration["memory_tier"], loras)
        other = fused.text_to_video("a fox", loras=loras, **common)
        assert other.settings["lora_mode"] == "fuse"
        assert np.abs(other.frames.astype(int) - want.frames.astype(int)).max() <= 2
    with pytest.raises(ValueError, match=r"lora_mode='merge' is not allowed; choose one of fuse, adapter"):
        PusaPipeline.from_preset("tiny-random", lora_mode="merge")
