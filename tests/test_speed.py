"""Speed options on the tiny-random model: CFG batching, step caching (`pusa.caching`), fp8 compute and the
attention extras' error paths. Each is checked against the plain path's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import raises_input_error
from pusa.caching import frame_change, step_cache
from pusa.conditioning import Conditioning
from pusa.pipeline import GenerationRequest, PusaPipeline
from pusa.request import ModelLimits, validate
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


# ------------------------------------------------------------------------------------------ step caching
CACHED = dict(FAST, num_inference_steps=10)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def test_cache_off_is_todays_output_bit_for_bit(tiny_random, image):
    pipe = tiny_random
    request = GenerationRequest(
        task="i2v", prompt="a fox", images=[image], positions=[0], noise_multipliers=[0.2], **CACHED
    )
    resolved = validate(request, pipe.limits)
    conditioning = pipe.conditioning_for(resolved)
    noise = torch.randn(
        (1, pipe.vae.config.z_dim, 3, 4, 4), generator=torch.Generator().manual_seed(resolved.seed)
    )
    with torch.inference_mode():  # today's path, written out: no cache anywhere
        latents = sample(
            _velocity(pipe), noise, flow_sigmas(10, resolved.shift), conditioning,
            pipe.encode_prompt("a fox"), pipe.encode_prompt(resolved.negative_prompt), resolved.cfg,
        )  # fmt: skip
    expected = pipe.decode_latents(latents)
    pipe.image_to_video(image, "a fox", cache="pusa", cache_threshold=1.0, **CACHED)  # leaves nothing behind
    out = pipe.image_to_video(image, "a fox", cache="off", **CACHED)
    assert np.array_equal(out.frames, expected)
    assert pipe.transformer.block_runner is None and "step_cache" not in out.settings
    assert out.settings["cache"] == "off"


def test_cache_skips_forwards_stays_close_and_is_recorded(tiny_random, image):
    plain = tiny_random.image_to_video(image, "a fox", **CACHED)
    out = tiny_random.image_to_video(image, "a fox", cache="pusa", cache_threshold=0.3, **CACHED)
    report = out.settings["step_cache"]
    assert (out.settings["cache"], out.settings["cache_threshold"]) == ("pusa", 0.3)
    assert report["dit_forwards"] == 20  # 10 CFG steps, two passes each (skipped ones count as forwards)
    assert report["dit_forwards_skipped"] >= 4
    skipped = report["skipped_steps"]
    # never in the warm-up steps nor the last one, never more than two in a row
    assert report["warmup_steps"] == 2 and min(skipped) >= 2 and max(skipped) <= 8
    assert all(skipped[i + 2] - skipped[i] > 2 for i in range(len(skipped) - 2))
    assert not np.array_equal(out.frames, plain.frames)
    assert np.abs(out.frames.astype(float) - plain.frames).mean() < 2.0  # of 255


def test_cache_threshold_zero_skips_nothing_and_both_branches_agree(tiny_random, image):
    out = tiny_random.image_to_video(image, "a fox", cache="pusa", cache_threshold=0.0, **CACHED)
    report = out.settings["step_cache"]
    assert report["dit_forwards_skipped"] == 0 and report["dit_forwards"] == 20
    assert np.array_equal(out.frames, tiny_random.image_to_video(image, "a fox", **CACHED).frames)
    assert len(report["input_changes"]) == 9 and all(c > 0 for c in report["input_changes"])


def test_cache_with_cfg_batch_skips_the_same_steps(image):
    batched = PusaPipeline.from_preset("tiny-random", cfg_batch="on")
    plain = PusaPipeline.from_preset("tiny-random")
    a = batched.image_to_video(image, "a fox", cache="pusa", cache_threshold=0.3, **CACHED).settings
    b = plain.image_to_video(image, "a fox", cache="pusa", cache_threshold=0.3, **CACHED).settings
    assert a["step_cache"]["skipped_steps"] == b["step_cache"]["skipped_steps"]
    assert a["step_cache"]["dit_forwards"] == 10  # one batch-of-2 forward per step


def test_frame_change_leaves_out_frames_that_do_not_move():
    previous = torch.ones(1, 3, 4, 8)
    current = previous.clone()
    current[:, 0] += 5.0  # frame 0 changed a lot ...
    current[:, 1] += 0.1
    temb = torch.zeros(1, 3, 6, 8)
    moved = temb.clone()
    moved[:, 1:] += 1.0  # ... but its timestep did not (a multiplier-0 frame): only frames 1, 2 count
    assert frame_change(current, previous, moved, temb) == pytest.approx(0.1)
    assert frame_change(current, previous, moved, None) == pytest.approx(5.0)
    assert frame_change(current, previous, temb, temb) == 0.0  # nothing moves: nothing to compare


def test_cache_settings_are_checked_before_loading():
    limits = ModelLimits()
    with raises_input_error("cache", "teacache") as error:
        validate(GenerationRequest(task="t2v", prompt="x", cache="teacache"), limits, media=False)
    assert "off, pusa" in error.value.allowed  # the choices
    with raises_input_error("cache_threshold", 2.0):
        validate(GenerationRequest(task="t2v", prompt="x", cache_threshold=2.0), limits, media=False)
    assert step_cache("off", 0.1, 10) is None


def test_cache_reaches_the_request_from_every_face():
    from pusa.app import forms
    from pusa.cli import build_parser, build_request
    from pusa.request import ModelDefaults

    args = build_parser().parse_args(
        ["generate", "t2v", "-p", "x", "--cache", "pusa", "--cache-threshold", "0.3"]
    )
    request = build_request(args, ModelLimits())
    assert (request.cache, request.cache_threshold) == ("pusa", 0.3)
    assert (
        build_request(build_parser().parse_args(["generate", "t2v", "-p", "x"]), ModelLimits()).cache == "off"
    )
    spec = forms.text_to_video({"prompt": "x", "cache": "pusa", "cache_threshold": 0.25}, ModelDefaults())
    assert (spec.request.cache, spec.request.cache_threshold) == ("pusa", 0.25)
    assert forms.text_to_video({"prompt": "x"}, ModelDefaults()).request.cache == "off"


# ------------------------------------------------------------------------------------------ attention extras
def test_attention_extras_are_offered_and_auto_tries_them_first():
    from pusa.runtime.kernels import ATTENTION_CHOICES, AUTO_ATTENTION_CANDIDATES, EXTRA_ATTENTION

    assert {"flash4", "sageattn"} <= set(ATTENTION_CHOICES)
    assert AUTO_ATTENTION_CANDIDATES[:2] == ("flash4", "sageattn")
    assert EXTRA_ATTENTION["flash4"].package == "flash-attn-4" and EXTRA_ATTENTION["sageattn"].extra == "sage"


@pytest.mark.parametrize(("name", "package", "command"), [
    ("flash4", "flash-attn-4", "pip install 'pusa[flash4]'"),
    ("sageattn", "sageattention", "pip install 'pusa[sage]'"),
])  # fmt: skip
def test_a_missing_kernel_package_is_named_before_weights_load(name, package, command, capsys, monkeypatch):
    import importlib.util

    from pusa.cli import main
    from pusa.runtime import kernels

    if importlib.util.find_spec(kernels.EXTRA_ATTENTION[name].module.split(".")[0]) is not None:
        pytest.skip(f"{package} is installed here")
    loaded = []
    monkeypatch.setattr("pusa.pipeline.PusaPipeline.from_model", lambda *a, **k: loaded.append(a))
    assert main(["generate", "t2v", "-p", "x", "--attention", name, "-q"]) == 2
    message = capsys.readouterr().err
    assert f"--attention='{name}' needs the {package} package" in message and command in message, message
    assert loaded == []  # refused before any model was loaded
    with raises_input_error("attention", name) as error:
        PusaPipeline.from_pretrained("/nonexistent", attention=name)
    assert command in str(error.value)  # how to install it
    assert kernels.attention_backend_timings("cpu", [name]) == {}  # off CUDA nothing is timed


def test_kernel_processor_matches_diffusers_self_attention():
    """The extras' processor (projections, norms, rotary embedding, kernel, output) with PyTorch's SDPA as
    its kernel gives diffusers' own attention output: what the extras plug into is Wan's self-attention."""
    from pusa.runtime.kernels import KernelAttnProcessor

    pipe = PusaPipeline.from_preset("tiny-random")
    noise, _, text, _ = _inputs(pipe)
    timestep = torch.full((1, 3), 700.0)
    with torch.inference_mode():
        expected = pipe.transformer(noise, timestep, text, return_dict=False)[0]

    def sdpa(query, key, value):  # [B, L, H, D] like the extras' kernels
        out = torch.nn.functional.scaled_dot_product_attention(
            *(x.transpose(1, 2) for x in (query, key, value))
        )
        return out.transpose(1, 2)

    for block in pipe.transformer.blocks:
        block.attn1.set_processor(KernelAttnProcessor("sdpa", sdpa))
    with torch.inference_mode():
        got = pipe.transformer(noise, timestep, text, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ fp8 compute
@pytest.mark.parametrize("scaling", ["rowwise", "tensor"])
def test_fp8_compute_runs_scaled_mm_within_its_error_bound(tiny_random, scaling):
    """torch._scaled_mm runs on the CPU in this torch build: the real float8 kernel, not an emulation."""
    from pusa.runtime.kernels import Fp8ComputeLinear, relative_error

    pipe = PusaPipeline.from_preset("tiny-random", fp8_compute=scaling)
    assert pipe.acceleration["fp8_compute"] == scaling
    layers = [m for m in pipe.transformer.modules() if isinstance(m, Fp8ComputeLinear)]
    assert (
        len(layers) == pipe.acceleration["fp8_compute_layers"] == 2 * 10
    )  # 2 blocks x (8 attention + 2 ffn)
    assert isinstance(pipe.transformer.proj_out, torch.nn.Linear)
    assert not isinstance(pipe.transformer.proj_out, Fp8ComputeLinear)  # the head stays as it is
    noise, _, text, _ = _inputs(tiny_random)
    timestep = torch.tensor([[0.0, 600.0, 600.0]])
    with torch.inference_mode():
        reference = tiny_random.transformer(noise, timestep, text, return_dict=False)[0]
        got = pipe.transformer(noise, timestep, text, return_dict=False)[0]
    error = relative_error(got, reference)
    assert 1e-4 < error < 0.06, error  # float8 e4m3 has a 3-bit mantissa; bf16 alone gives ~1e-2
    assert pipe.text_to_video("a fox", **FAST).settings["acceleration"]["fp8_compute"] == scaling


@pytest.mark.slow  # several pipelines loaded and run
def test_fp8_compute_follows_a_refused_lora():
    """The weight is quantized at every call, so a LoRA alpha change (re-fused into the weights) counts."""
    pipe = PusaPipeline.from_model("pusa-tiny", fp8_compute="rowwise")
    a = pipe.text_to_video("a red circle slides to the left", lora_alpha=0.6, seed=1, num_inference_steps=2)
    b = pipe.text_to_video("a red circle slides to the left", lora_alpha=1.4, seed=1, num_inference_steps=2)
    again = pipe.text_to_video(
        "a red circle slides to the left", lora_alpha=0.6, seed=1, num_inference_steps=2
    )
    assert not np.array_equal(a.frames, b.frames) and np.array_equal(a.frames, again.frames)
    with pytest.raises(ValueError, match="fp8_compute='int4'"):
        PusaPipeline.from_preset("tiny-random", fp8_compute="int4")


def test_parallel_pipelines_refuse_the_cache_and_do_not_batch_cfg(image):
    """Under `pusa.parallel` the other ranks run every block rank 0 runs: a skip on rank 0 alone would
    leave them waiting, so the cache is refused by name; CFG batching gives way to the ranks' own split."""
    pipe = PusaPipeline.from_preset("tiny-random", cfg_batch="on")
    calls = []

    def wrapper(velocities, text, negative_text, cfg):  # the seam pusa.parallel uses, here on one process
        def wrap(velocity):
            def wrapped(x, timestep, context):
                calls.append(x.shape[0])
                return velocity(x, timestep, context)

            return wrapped

        return {name: wrap(velocity) for name, velocity in velocities.items()}

    pipe.velocity_wrapper = wrapper
    with raises_input_error("cache", "pusa"):
        pipe.image_to_video(image, "a fox", cache="pusa", **FAST)
    assert getattr(pipe.transformer, "block_runner", None) is None
    out = pipe.image_to_video(image, "a fox", **FAST)
    assert calls == [1] * 8 and out.settings["acceleration"]["cfg_batch"] is False
