"""Speed options on the tiny-random model: CFG batching, step caching (`pusa.caching`), fp8 compute and the
attention extras' error paths. Each is checked against the plain path's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pusa.conditioning import Conditioning
from pusa.pipeline import PusaPipeline
from pusa.sampling import cfg_text_batch, sample
from pusa.schedule import flow_sigmas

SIZE = 32
FAST = dict(num_inference_steps=4, width=SIZE, height=SIZE, seed=3, num_frames=9)


def _velocity(pipe: PusaPipeline):
    def velocity(x, timestep, text):
        return pipe.transformer(x.to(pipe.dtype), timestep, text, return_dict=False)[0]

    return velocity


def _inputs(pipe: PusaPipeline, num_latent: int = 3):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, pipe.vae.config.z_dim, num_latent, 4, 4, generator=generator)
    clean = torch.randn(1, pipe.vae.config.z_dim, 1, 4, 4, generator=generator)
    conditioning = Conditioning((0,), (0.2,), clean)
    return noise, conditioning, pipe.encode_prompt("a red fox"), pipe.encode_prompt("blurry")


# ------------------------------------------------------------------------------------------ CFG batching
def test_cfg_batch_equals_two_passes_to_float32_rounding(tiny_random):
    noise, conditioning, text, negative = _inputs(tiny_random)
    sigmas = flow_sigmas(4, 5.0)
    with torch.inference_mode():
        two = sample(_velocity(tiny_random), noise, sigmas, conditioning, text, negative, 3.0)
        one = sample(_velocity(tiny_random), noise, sigmas, conditioning, text, negative, 3.0, cfg_batch=True)
    assert not torch.equal(one, noise)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)


def test_cfg_batch_makes_one_forward_of_two_per_step(tiny_random):
    noise, conditioning, text, negative = _inputs(tiny_random)
    batches = []
    velocity = _velocity(tiny_random)

    def counting(x, timestep, context):
        batches.append((x.shape[0], timestep.shape[0], context.shape[0]))
        return velocity(x, timestep, context)

    with torch.inference_mode():
        sample(counting, noise, flow_sigmas(3, 5.0), conditioning, text, negative, 3.0, cfg_batch=True)
    assert batches == [(2, 2, 2)] * 3
    batches.clear()
    with torch.inference_mode():  # cfg 1.0 has no negative pass to batch
        sample(counting, noise, flow_sigmas(3, 5.0), conditioning, text, None, 1.0, cfg_batch=True)
    assert batches == [(1, 1, 1)] * 3


def test_cfg_text_batch_needs_one_shape():
    with pytest.raises(ValueError, match="one shape"):
        cfg_text_batch(torch.zeros(1, 4, 8), torch.zeros(1, 5, 8))


def test_pipeline_cfg_batch_is_recorded_and_matches():
    batched = PusaPipeline.from_preset("tiny-random", cfg_batch="on")
    plain = PusaPipeline.from_preset("tiny-random")  # auto: off on the CPU
    assert batched.acceleration["cfg_batch"] is True and plain.acceleration["cfg_batch"] is False
    a = batched.text_to_video("a red fox", **FAST)
    b = plain.text_to_video("a red fox", **FAST)
    assert a.settings["acceleration"]["cfg_batch"] is True
    assert b.settings["acceleration"]["cfg_batch"] is False
    # uint8 frames from latents equal to float32 rounding: at most one level apart
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="cfg_batch='sometimes'"):
        PusaPipeline.from_preset("tiny-random", cfg_batch="sometimes")
