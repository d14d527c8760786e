"""`PusaPipeline` end to end with the `tiny-random` preset: every task, settings, saving, reproducibility,
the clean conditioning frame, cancellation and input validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pusa
from helpers import raises_input_error
from pusa.params import InputError
from pusa.pipeline import GenerationRequest, PusaOutput, PusaPipeline
from pusa.request import validate
from pusa.sampling import Cancelled, StepInfo, sample
from pusa.schedule import flow_sigmas
from pusa.video import MediaError, fit_image, read_video, read_video_metadata, write_video

SIZE = 32  # pixels; 4x4 latents, 2x2 tokens per frame
COMMON = dict(num_inference_steps=2, width=SIZE, height=SIZE, seed=7)
SETTINGS_KEYS = {
    "task",
    "prompt",
    "negative_prompt",
    "positions",
    "noise_multipliers",
    "lora_alpha",
    "num_inference_steps",
    "cfg",
    "shift",
    "seed",
    "num_frames",
    "width",
    "height",
    "fps",
    "model",
    "pusa_version",
}


@pytest.fixture(scope="module")
def pipe(tiny_random) -> PusaPipeline:
    return tiny_random


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


def _random_image(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def t2v_output(pipe) -> PusaOutput:
    return pipe.text_to_video("a red fox in the snow", num_frames=5, **COMMON)


@pytest.fixture(scope="module")
def source_mp4(pipe, workdir) -> Path:
    """A 13-frame clip written by a previous output's `save`: the source of the video tasks."""
    out = pipe.text_to_video("a river", num_frames=13, **{**COMMON, "seed": 11})
    return out.save(workdir / "source.mp4")


def assert_valid_output(out: PusaOutput, task: str, num_frames: int, **expected_settings) -> None:
    assert isinstance(out.frames, np.ndarray)
    assert out.frames.dtype == np.uint8
    assert out.frames.shape == (num_frames, SIZE, SIZE, 3)
    missing = SETTINGS_KEYS - set(out.settings)
    assert not missing, f"settings lack {sorted(missing)}"
    settings = out.settings
    assert settings["task"] == task
    assert settings["num_frames"] == num_frames
    assert settings["width"] == SIZE and settings["height"] == SIZE
    assert settings["num_inference_steps"] == COMMON["num_inference_steps"]
    assert settings["model"] == "tiny-random(seed=0)"
    assert settings["pusa_version"] == pusa.__version__
    assert len(settings["positions"]) == len(settings["noise_multipliers"])
    for key, value in expected_settings.items():
        assert settings[key] == value, (key, settings[key], value)
    json.dumps(settings)  # the record must be JSON


# ---------------------------------------------------------------- every task
def test_text_to_video(t2v_output):
    assert_valid_output(
        t2v_output,
        "t2v",
        5,
        prompt="a red fox in the snow",
        positions=[],
        noise_multipliers=[],
        seed=7,
        cfg=3.0,
        shift=5.0,
        lora_alpha=1.4,
        fps=8.0,
    )
    assert t2v_output.frames.std() > 0  # not a blank video


def test_image_to_video_with_a_pil_image(pipe):
    out = pipe.image_to_video(_random_image(40, 48, seed=1), "a cat", num_frames=5, **COMMON)
    assert_valid_output(out, "i2v", 5, positions=[0], noise_multipliers=[0.2], prompt="a cat")
    assert out.settings["images"][0]["image_size"] == [48, 40]


def test_image_to_video_with_a_png_path(pipe, tmp_path):
    path = tmp_path / "start.png"
    _random_image(SIZE, SIZE, seed=2).save(path)
    out = pipe.image_to_video(path, "a cat", noise_multiplier=0.4, num_frames=5, **COMMON)
    assert_valid_output(out, "i2v", 5, positions=[0], noise_multipliers=[0.4])
    assert out.settings["images"][0]["path"] == str(path.resolve())
    assert len(out.settings["images"][0]["sha256"]) == 64


@pytest.mark.parametrize(("num_images", "expected_positions"), [(2, [0, 2]), (3, [0, 1, 2])])
def test_frames_to_video(pipe, num_images, expected_positions):
    images = [_random_image(SIZE, SIZE, seed=10 + j) for j in range(num_images)]
    out = pipe.frames_to_video(images, "keyframes", num_frames=9, **COMMON)
    expected_multipliers = [0.2] + [0.5] * (num_images - 1)
    assert_valid_output(
        out, "frames", 9, positions=expected_positions, noise_multipliers=expected_multipliers
    )
    assert len(out.settings["images"]) == num_images


def test_video_to_video_from_a_saved_mp4(pipe, source_mp4):
    out = pipe.video_to_video(source_mp4, "a river at night", positions=[0, 1], num_frames=9, **COMMON)
    assert_valid_output(out, "v2v", 9, positions=[0, 1], noise_multipliers=[0.2, 0.2])
    assert out.settings["sources"]["video"]["path"] == str(source_mp4.resolve())


def test_extend_video(pipe, source_mp4):
    out = pipe.extend_video(source_mp4, "more river", num_frames=17, **COMMON)
    assert_valid_output(
        out, "v2v", 17, recipe="extension", positions=[0, 1, 2, 3], noise_multipliers=[0.0, 0.3, 0.4, 0.5]
    )
    assert out.settings["sources"]["video"]["path"] == str(source_mp4.resolve())


def test_the_extension_context_is_asked_for_never_taken_from_a_stray_multiplier_count(pipe, source_mp4):
    """extend_video's multipliers choose its context (documented: positions 0..k-1); video_to_video with
    the recipe takes one per position or none, and a single stray multiplier is refused (issue 26: it ran
    with one context latent instead of four)."""
    out = pipe.extend_video(source_mp4, "x", noise_multipliers=[0.0, 0.3], num_frames=17, **COMMON)
    assert (out.settings["positions"], out.settings["noise_multipliers"]) == ([0, 1], [0.0, 0.3])
    with raises_input_error("noise_multipliers", [0.1]):
        pipe.video_to_video(
            source_mp4, "x", noise_multipliers=[0.1], recipe="extension", num_frames=17, **COMMON
        )


def test_complete_video(pipe, source_mp4):
    out = pipe.complete_video(source_mp4, "the middle", num_frames=13, **COMMON)
    assert_valid_output(out, "v2v", 13, recipe="completion", positions=[0, 3], noise_multipliers=[0.3, 0.3])


def test_transition(pipe, source_mp4, t2v_output, workdir):
    end_mp4 = workdir / "end.mp4"
    write_video(end_mp4, np.concatenate([t2v_output.frames] * 3), fps=8.0)  # 15 frames
    # 7 latent frames: 2 kept each side, 3 generated (recipes.transition_context).
    out = pipe.transition(source_mp4, end_mp4, "a bridge", num_frames=25, **COMMON)
    assert_valid_output(
        out, "v2v", 25, recipe="transition", positions=[0, 1, 5, 6], noise_multipliers=[0.0, 0.3, 0.3, 0.0]
    )
    assert set(out.settings["sources"]) == {"video", "end_video"}
    # At a 17-frame clip (pusa-tiny's own length): the first and the last latent.
    out = pipe.transition(source_mp4, end_mp4, "a bridge", num_frames=17, **COMMON)
    assert_valid_output(out, "v2v", 17, recipe="transition", positions=[0, 4], noise_multipliers=[0.0, 0.0])


# ---------------------------------------------------------------- reproducibility and saving
def test_same_seed_same_frames_other_seed_other_frames(pipe, t2v_output):
    again = pipe.text_to_video("a red fox in the snow", num_frames=5, **COMMON)
    assert np.array_equal(again.frames, t2v_output.frames)
    other = pipe.text_to_video("a red fox in the snow", num_frames=5, **{**COMMON, "seed": 8})
    assert not np.array_equal(other.frames, t2v_output.frames)


def test_no_seed_draws_one_and_records_it(pipe):
    out = pipe.text_to_video("x", num_frames=5, **{**COMMON, "seed": None})
    assert isinstance(out.settings["seed"], int) and out.settings["seed"] >= 0


def test_save_writes_mp4_and_sidecar(t2v_output, tmp_path):
    path = t2v_output.save(tmp_path / "clip.mp4")
    assert path == tmp_path / "clip.mp4" and path.is_file()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    frames, fps = read_video(path)
    assert frames.shape == t2v_output.frames.shape
    assert fps == pytest.approx(t2v_output.settings["fps"])
    assert read_video_metadata(path) == sidecar
    assert sidecar == json.loads(json.dumps(t2v_output.settings))


def _request_from_settings(settings: dict) -> GenerationRequest:
    """Rebuild a request from a sidecar: the recorded fields, and image paths where the inputs were files."""
    names = {f.name for f in dataclasses.fields(GenerationRequest)}
    fields = {k: v for k, v in settings.items() if k in names and k not in ("images", "video", "sources")}
    images = [record["path"] for record in settings.get("images", [])]
    return GenerationRequest(**fields, images=images)


def test_rerun_from_sidecar_reproduces_the_frames(pipe, t2v_output, tmp_path):
    sidecar = json.loads(t2v_output.save(tmp_path / "t2v.mp4").with_suffix(".json").read_text())
    rerun = pipe.generate(_request_from_settings(sidecar))
    assert np.array_equal(rerun.frames, t2v_output.frames)


def test_rerun_of_an_image_task_from_sidecar(pipe, tmp_path):
    image_path = tmp_path / "first.png"
    _random_image(SIZE, SIZE, seed=5).save(image_path)
    first = pipe.image_to_video(image_path, "a dog", noise_multiplier=0.1, num_frames=5, **COMMON)
    sidecar = json.loads(first.save(tmp_path / "i2v.mp4").with_suffix(".json").read_text())
    rerun = pipe.generate(_request_from_settings(sidecar))
    assert np.array_equal(rerun.frames, first.frames)
    assert rerun.settings["images"] == first.settings["images"]


# ---------------------------------------------------------------- the conditioning frame stays clean
def test_i2v_multiplier_zero_keeps_the_image_latent_exactly(pipe):
    image = _random_image(SIZE, SIZE, seed=3)
    request = validate(
        GenerationRequest(
            task="i2v",
            prompt="a cat",
            images=[image],
            positions=[0],
            noise_multipliers=[0.0],
            num_frames=9,
            **COMMON,
        ),
        pipe.limits,
    )
    image_latent = pipe.encode_frames(fit_image(image, SIZE, SIZE)[None])  # [1, 16, 1, h, w], encoded alone
    conditioning = pipe.conditioning_for(request)
    assert torch.equal(conditioning.latents, image_latent)

    shape = (1, 16, 3, SIZE // 8, SIZE // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(request.seed))
    text, negative_text = pipe.encode_prompt(request.prompt), pipe.encode_prompt(request.negative_prompt)

    def velocity(x, timestep, context):
        return pipe.transformer(x, timestep, context, return_dict=False)[0]

    frame0: list[torch.Tensor] = []
    with torch.inference_mode():
        out = sample(
            velocity,
            noise,
            flow_sigmas(3),
            conditioning,
            text,
            negative_text,
            3.0,
            lambda info: frame0.append(info.latents[:, :, 0].clone()),
        )
    assert len(frame0) == 3
    for latent in frame0:
        assert torch.equal(latent, image_latent[:, :, 0])
    assert not torch.equal(out[:, :, 1], noise[:, :, 1])  # the free frames were denoised


def test_generate_keeps_the_clean_frame_through_every_step(pipe):
    image = _random_image(SIZE, SIZE, seed=4)
    image_latent = pipe.encode_frames(fit_image(image, SIZE, SIZE)[None])
    seen: list[StepInfo] = []
    request = GenerationRequest(
        task="i2v",
        prompt="a cat",
        images=[image],
        positions=[0],
        noise_multipliers=[0.0],
        num_frames=5,
        **COMMON,
    )
    pipe.generate(request, callback=seen.append)
    assert [info.step for info in seen] == [0, 1]
    for info in seen:
        assert torch.equal(info.latents[:, :, 0], image_latent[:, :, 0])

    # With a non-zero multiplier the frame is denoised too, so it does move.
    moved: list[StepInfo] = []
    pipe.generate(dataclasses.replace(request, noise_multipliers=[0.3]), callback=moved.append)
    assert not torch.equal(moved[0].latents[:, :, 0], image_latent[:, :, 0])


# ---------------------------------------------------------------- cancellation
def test_cancel_raises_and_the_pipeline_still_works(pipe, t2v_output):
    steps: list[int] = []

    def cancel(info: StepInfo) -> bool:
        steps.append(info.step)
        return False

    request = GenerationRequest(task="t2v", prompt="a red fox in the snow", num_frames=5, **COMMON)
    with pytest.raises(Cancelled):
        pipe.generate(request, callback=cancel)
    assert steps == [0]
    after = pipe.text_to_video("a red fox in the snow", num_frames=5, **COMMON)
    assert np.array_equal(after.frames, t2v_output.frames)


# ---------------------------------------------------------------- bad inputs
SMALL = dict(num_inference_steps=1, width=SIZE, height=SIZE, seed=0, num_frames=5)  # 2 latent frames


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return _random_image(SIZE, SIZE, seed=9)


@pytest.fixture(scope="module")
def five_frame_mp4(t2v_output, workdir) -> Path:
    return write_video(workdir / "five.mp4", t2v_output.frames, fps=8.0)


def test_positions_out_of_range(pipe, image):
    # the one test here that reads the whole message: what a Python caller sees for a bad input
    with pytest.raises(
        InputError,
        match=r"positions=\[2\] contains 2; positions are latent frame indices, whole numbers in 0\.\.1",
    ):
        pipe.frames_to_video([image], "x", positions=[2], noise_multipliers=[0.2], **SMALL)
    with raises_input_error("positions", [-1]) as caught:
        pipe.frames_to_video([image], "x", positions=[-1], noise_multipliers=[0.2], **SMALL)
    assert "0..1" in caught.value.allowed  # the range follows num_frames: 5 frames are 2 latent frames


def test_duplicated_positions(pipe, image):
    with raises_input_error("positions", [1, 1]):
        pipe.frames_to_video([image, image], "x", positions=[1, 1], noise_multipliers=[0.2, 0.2], **SMALL)


@pytest.mark.parametrize("multiplier", [1.5, -0.1])
def test_noise_multiplier_outside_zero_one(pipe, image, multiplier):
    with raises_input_error("noise_multiplier", multiplier):
        pipe.image_to_video(image, "x", noise_multiplier=multiplier, **SMALL)


def test_multiplier_count_differs_from_position_count(pipe, image):
    with raises_input_error("noise_multipliers", [0.1, 0.2]) as caught:
        pipe.frames_to_video([image], "x", positions=[0], noise_multipliers=[0.1, 0.2], **SMALL)
    assert "positions=[0]" in str(caught.value)  # it names the list it must match


def test_a_single_value_where_a_list_belongs_is_refused_by_name(pipe, image, five_frame_mp4):
    # Python callers wrote positions=0 and got "object of type 'int' has no len()"
    with raises_input_error("positions", 0) as caught:
        pipe.frames_to_video([image, image], "x", positions=0, **SMALL)
    assert "positions=[0, 4]" in str(caught.value)  # the message shows the list form
    with raises_input_error("noise_multipliers", 0.2):
        pipe.frames_to_video([image, image], "x", noise_multipliers=0.2, **SMALL)
    with raises_input_error("positions", 3):
        pipe.video_to_video(five_frame_mp4, "x", positions=3, **SMALL)
    with raises_input_error("images"):
        pipe.frames_to_video(np.zeros((8, 8, 3), np.uint8), "x", **SMALL)
    with raises_input_error("noise_multipliers", 0.2):  # also built by hand
        pipe.generate(GenerationRequest("frames", "x", images=[image], positions=[0], noise_multipliers=0.2))


def test_frames_task_without_images(pipe):
    with raises_input_error("images"):
        pipe.frames_to_video([], "x", **SMALL)


def test_image_to_video_without_images(pipe):
    request = GenerationRequest(task="i2v", prompt="x", positions=[0], noise_multipliers=[0.2], **SMALL)
    with raises_input_error("image"):
        pipe.generate(request)


def test_image_to_video_with_image_none(pipe):
    with raises_input_error("image"):
        pipe.image_to_video(None, "x", **SMALL)


def test_video_to_video_without_video(pipe):
    with raises_input_error("video"):
        pipe.video_to_video(None, "x", positions=[0], **SMALL)


def test_video_to_video_without_positions(pipe, five_frame_mp4):
    with raises_input_error("positions"):
        pipe.video_to_video(five_frame_mp4, "x", positions=[], **SMALL)


def test_unreadable_image_file(pipe, tmp_path):
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"this is not a png" * 10)
    with raises_input_error("image") as caught:
        pipe.image_to_video(garbage, "x", **SMALL)
    assert isinstance(caught.value, MediaError) and str(garbage) in str(caught.value)


def test_missing_image_file(pipe, tmp_path):
    missing = tmp_path / "nowhere.png"
    with raises_input_error("image") as caught:
        pipe.image_to_video(missing, "x", **SMALL)
    assert isinstance(caught.value, MediaError) and str(missing) in str(caught.value)
    with raises_input_error("images") as caught:
        pipe.frames_to_video([missing], "x", positions=[0], noise_multipliers=[0.2], **SMALL)
    assert str(missing) in str(caught.value)


def test_missing_video_file(pipe, tmp_path):
    missing = tmp_path / "nowhere.mp4"
    with raises_input_error("video") as caught:
        pipe.video_to_video(missing, "x", positions=[0], **SMALL)
    assert isinstance(caught.value, MediaError) and str(missing) in str(caught.value)


def test_video_too_short_for_positions(pipe, five_frame_mp4):
    with raises_input_error("video") as caught:
        pipe.video_to_video(five_frame_mp4, "x", positions=[0, 3], **{**SMALL, "num_frames": 17})
    assert "at least 13" in str(caught.value)  # latent 3 starts at frame 13


def test_video_too_short_for_the_recipes(pipe, five_frame_mp4):
    with raises_input_error("video") as caught:
        pipe.extend_video(five_frame_mp4, "x", **{**SMALL, "num_frames": 17})
    assert "at least 13" in str(caught.value)  # 4 context latents
    with raises_input_error("end_video") as caught:
        pipe.transition(five_frame_mp4, five_frame_mp4, "x", **{**SMALL, "num_frames": 25})
    assert "at least 8" in str(caught.value)
    with raises_input_error("num_frames", 9):
        pipe.transition(five_frame_mp4, five_frame_mp4, "x", **{**SMALL, "num_frames": 9})


@pytest.mark.parametrize(
    "override",
    [
        {"num_frames": 16},
        {"num_frames": 0},
        {"width": 60},
        {"height": 40},
        {"width": 4096},
        {"num_inference_steps": 0},
        {"num_inference_steps": 51},
        {"lora_alpha": 0.05},
        {"lora_alpha": 5.5},
        {"cfg": 0.5},
        {"seed": -1},
        {"shift": 0.0},
        {"fps": 0},
    ],
)
def test_bad_settings(pipe, override):
    [(param, value)] = override.items()
    with raises_input_error(param, value):
        pipe.text_to_video("x", **{**SMALL, **override})


def test_text_to_video_given_positions(pipe):
    with raises_input_error("positions"):
        pipe.text_to_video("x", positions=[0], noise_multipliers=[0.2], **SMALL)


def test_bad_task_and_preset_names(pipe):
    with raises_input_error("task", "t2i"):
        pipe.generate(GenerationRequest(task="t2i", prompt="x", **SMALL))
    with pytest.raises(ValueError, match=r"model='huge'"):
        PusaPipeline.from_preset("huge")
