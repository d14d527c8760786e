"""`--text-vae-device` / `text_vae_device`: the text encoder and the VAE resident on a device of their own
while the memory tier places the DiT alone (Pusa's original demo: the DiT on one GPU, the rest on the
other). This machine has one device (the CPU), so these tests check what the option changes besides
the device: the tier leaves the text encoder and VAE alone, the record says where they are, the videos
are the same, and bad values are refused by name before anything loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers.hooks.group_offloading import _is_group_offload_enabled

from helpers import raises_input_error, random_pixels
from pusa.pipeline import PusaPipeline
from pusa.request import GenerationRequest

I2V = GenerationRequest(
    task="i2v", prompt="it moves", images=[random_pixels((64, 64, 3), seed=1)], positions=[0],
    noise_multipliers=[0.2], seed=5, num_inference_steps=2,
)  # fmt: skip


@pytest.mark.slow  # a video per tier, compared
@pytest.mark.parametrize("memory", ["full", "low"])
def test_the_tier_places_the_dit_alone_and_the_video_is_the_same(memory):
    default = PusaPipeline.from_model("pusa-tiny", memory=memory)
    apart = PusaPipeline.from_model("pusa-tiny", memory=memory, text_vae_device="cpu")
    placement = apart.acceleration["placement"]
    assert apart.acceleration["text_vae_device"] == "cpu"
    assert placement["text_encoder"] == placement["vae"] == "resident on cpu (text_vae_device)"
    assert placement["transformer"] == default.acceleration["placement"]["transformer"]
    assert not _is_group_offload_enabled(apart.text_encoder)  # resident: no offload hooks
    assert _is_group_offload_enabled(default.text_encoder)  # (every tier offloads it otherwise)
    if memory == "low":
        assert _is_group_offload_enabled(apart.transformer)
        assert default.vae.use_tiling and not apart.vae.use_tiling
    for request in (I2V, GenerationRequest(task="t2v", prompt="a red circle", seed=2, num_inference_steps=2)):
        got = apart.generate(request)
        assert np.array_equal(got.frames, default.generate(request).frames)
        assert got.settings["acceleration"]["text_vae_device"] == "cpu"


def test_the_tiny_random_presets_take_it_too():
    pipe = PusaPipeline.from_preset("tiny-random-a14b", text_vae_device="cpu", memory="swap")
    assert pipe.acceleration["placement"]["vae"] == "resident on cpu (text_vae_device)"
    assert pipe.text_vae_device.type == "cpu"
    assert pipe.text_to_video("a fox", num_inference_steps=2, width=48, height=32, num_frames=5).frames.shape == (
        5, 32, 48, 3,
    )  # fmt: skip


def test_the_cli_records_it_and_refuses_bad_values_by_name(tmp_path, capsys):
    from pusa.cli import main

    out = tmp_path / "t2v.mp4"
    assert main(["generate", "t2v", "-p", "a red circle", "--steps", "2", "--text-vae-device", "cpu",
                 "-o", str(out), "-q"]) == 0  # fmt: skip
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["acceleration"]["text_vae_device"] == "cpu"
    for flags, message in [
        (["--text-vae-device", "gpu9"], "--text-vae-device='gpu9' is not a torch device"),
        (["--text-vae-device", "cuda:99"], "--text-vae-device='cuda:99' is not available"),
        (["--text-vae-device", "cpu", "--parallel", "2"], "cannot be used with --parallel / --cfg-parallel"),
    ]:
        assert main(["generate", "t2v", "-p", "x", *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["serve", "--port", "1", "--workers", "2", "--text-vae-device", "cpu"]) == 2
    assert "cannot be used with --workers / --ray-address" in capsys.readouterr().err
    with raises_input_error("text_vae_device", "cuda:7"):
        PusaPipeline.from_model("pusa-tiny", text_vae_device="cuda:7")
