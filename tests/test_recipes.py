"""The pure arithmetic of the request spine: frame counts, positions checks, the recipes' plans and their
conditioning clips, and the one validation's errors (each names its parameter, value and what is allowed)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from helpers import raises_input_error
from pusa import recipes
from pusa.params import FORM_ONLY, PARAMS, InputError, face_name, flag_of, label_of
from pusa.recipes import num_latent_frames, pixel_frames_of_latent
from pusa.request import GenerationRequest, ModelLimits, check_positions, resolve, validate

LIMITS = ModelLimits.of(
    (1, 2, 2), 8, 32, recipes_defaults := __import__("pusa.weights.registry").weights.registry.TINY_DEFAULTS
)


# ---------------------------------------------------------------- frame arithmetic
def test_num_latent_frames():
    assert num_latent_frames(81) == 21
    assert num_latent_frames(1) == 1
    assert num_latent_frames(5) == 2
    assert num_latent_frames(17) == 5


def test_pixel_frames_of_latent():
    assert pixel_frames_of_latent(0) == (0, 0)
    assert pixel_frames_of_latent(1) == (1, 4)
    assert pixel_frames_of_latent(2) == (5, 8)
    assert pixel_frames_of_latent(20) == (77, 80)


# ---------------------------------------------------------------- positions
def test_check_positions_accepts_good_input():
    check_positions([0, 10, 20], [0.0, 0.5, 1.0], 21)
    check_positions([], [], 21)
    check_positions([3], [1], 21)  # an integer multiplier is a number too


@pytest.mark.parametrize(
    ("positions", "multipliers", "param"),
    [
        ([21], [0.2], "positions"),  # latent 20 is the last of 81 frames
        ([-1], [0.2], "positions"),
        ([0, 5, 5], [0.2, 0.3, 0.3], "positions"),  # a repeat
        ([0, 20], [0.2], "noise_multipliers"),  # one per position
        ([0], [0.2, 0.5], "noise_multipliers"),
        ([0], [1.5], "noise_multipliers"),
        ([0], [-0.1], "noise_multipliers"),
        ([0], [float("nan")], "noise_multipliers"),
        ([1.5], [0.2], "positions"),  # not a whole number
        ([2.0], [0.2], "positions"),
        ([True], [0.2], "positions"),
    ],
)
def test_position_errors_carry_the_parameter(positions, multipliers, param):
    with raises_input_error(param, positions if param == "positions" else multipliers):
        check_positions(positions, multipliers, 21)


def test_a_position_error_says_which_item_and_the_range():
    """The one wording check of this section: the item at fault and the range allowed."""
    with pytest.raises(InputError, match=r"positions=\[21\] contains 21; .*whole numbers in 0\.\.20"):
        check_positions([21], [0.2], 21)


# ---------------------------------------------------------------- the recipes' plans
@pytest.mark.parametrize("source", [17, 25, 33, 81])
def test_completion_keeps_the_sources_first_frame_and_its_last_four(source):
    """Latent 0 is the source's frame 0 and the last latent its last 4 frames, whatever its length."""
    plan = recipes.completion(17, source)
    assert plan.positions == (0, 4) and plan.noise_multipliers == (0.3, 0.3)
    frames = np.arange(source, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    clip = plan.conditioning_clip({"video": frames})[:, 0, 0, 0]  # each frame's own number
    assert len(clip) == 17 and clip[0] == 0
    assert list(clip[13:17]) == list(range(source - 4, source))  # latent 4 = frames 13-16
    assert list(clip[1:13]) == list(range(source - 16, source - 4))  # its real lead-in (the VAE is causal)


def test_completion_needs_a_latent_to_generate():
    assert recipes.completion(9, 9).positions == (0, 2)
    with raises_input_error("num_frames", 5):
        recipes.completion(5, 9)


def test_completion_of_a_source_as_long_as_the_output_is_the_source_itself():
    frames = np.random.default_rng(0).integers(0, 255, (17, 4, 4, 3), dtype=np.uint8)
    assert np.array_equal(recipes.completion(17, 17).conditioning_clip({"video": frames}), frames)


def test_completion_of_a_short_source_is_bridged_by_a_cross_fade():
    plan = recipes.completion(17, 6)
    frames = (np.arange(6, dtype=np.float32) * 40)[:, None, None, None] * np.ones((1, 1, 1, 3), np.float32)
    clip = plan.conditioning_clip({"video": frames.astype(np.uint8)})[:, 0, 0, 0]
    assert clip[0] == 0 and list(clip[12:17]) == [40, 80, 120, 160, 200]  # the last 5 source frames end it
    assert all(0 <= v <= 40 for v in clip[1:12]) and list(clip[1:12]) == sorted(clip[1:12])
    with raises_input_error("video") as caught:
        recipes.completion(17, 4)
    assert "at least 5" in str(caught.value)


@pytest.mark.parametrize(
    ("num_frames", "positions", "multipliers", "head", "tail"),
    [
        (17, (0, 4), (0.0, 0.0), 1, 4),  # pusa-tiny's own length: 3 latents generated
        (13, (0, 3), (0.0, 0.0), 1, 4),
        (25, (0, 1, 5, 6), (0.0, 0.3, 0.3, 0.0), 5, 8),
        (81, (0, 1, 2, 18, 19, 20), (0.0, 0.3, 0.4, 0.4, 0.3, 0.0), 9, 12),  # Pusa V1's recipe
    ],
)
def test_transition_works_at_every_length_from_13_frames(num_frames, positions, multipliers, head, tail):
    plan = recipes.transition(num_frames, 40, 40)
    assert (plan.positions, plan.noise_multipliers) == (positions, multipliers)
    assert (plan.spans[0].length, plan.spans[1].length) == (head, tail)
    assert len(set(plan.positions)) == len(plan.positions)  # no duplicate (the old recipe gave 0,1,2,2,3,4)
    a = np.full((40, 2, 2, 3), 10, np.uint8)
    b = np.full((40, 2, 2, 3), 200, np.uint8)
    clip = plan.conditioning_clip({"video": a, "end_video": b})[:, 0, 0, 0]
    assert len(clip) == num_frames and set(clip[:head]) == {10} and set(clip[-tail:]) == {200}
    middle = clip[head:-tail]
    assert list(middle) == sorted(middle) and all(10 < v < 200 for v in middle)  # the cross-fade
    assert "Transition:" in plan.note() and f"first {tail}" in plan.note()


def test_transition_refuses_clips_too_short_naming_each():
    with raises_input_error("num_frames", 9):
        recipes.transition(9)
    with raises_input_error("end_video") as caught:
        recipes.transition(17, 40, 3)
    assert "at least 4" in str(caught.value)


def test_extension_uses_the_sources_last_frames():
    plan = recipes.extension(17, 30)
    assert plan.positions == (0, 1, 2, 3) and plan.noise_multipliers == (0.0, 0.3, 0.4, 0.5)
    frames = np.arange(30, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 1, 3), np.uint8)
    assert list(plan.conditioning_clip({"video": frames})[:, 0, 0, 0]) == list(range(17, 30))
    assert recipes.extension(5).positions == (0,)  # 2 latents: one kept, one generated
    with raises_input_error("noise_multipliers", [0.0, 0.1, 0.2]):
        recipes.extension(5, 30, [0.0, 0.1, 0.2])


def test_a_multiplier_count_other_than_the_recipes_positions_is_refused_naming_both():
    """Issue 26: `--recipe extension --noise-multipliers 0.1` ran with one context latent instead of four.
    Each recipe takes one multiplier per position it conditions or none, in the one validation (so the CLI,
    the API and the studio all refuse it); the extension's context comes from its positions 0..c-1."""
    with raises_input_error("noise_multipliers", [0.1]) as caught:
        recipes.plan("extension", 81, noise_multipliers=[0.1])
    assert str(caught.value).startswith(
        "noise_multipliers=[0.1] has 1 value; the extension recipe conditions 4 latent frames at 81 frames; "
        "give 4 noise multipliers or none (the extension recipe's own: 0,0.3,0.4,0.5)"
    )
    with raises_input_error("noise_multipliers", [0.1, 0.2, 0.3]):
        recipes.plan("completion", 17, noise_multipliers=[0.1, 0.2, 0.3])
    request = GenerationRequest(
        task="v2v", prompt="x", video="in.mp4", recipe="extension", noise_multipliers=[0.1]
    )
    with raises_input_error("noise_multipliers", [0.1]):
        validate(request, LIMITS, media=False)
    # the context asked for explicitly: positions 0..c-1, one multiplier each (or the recipe's own)
    short = recipes.plan("extension", 17, [0, 1], [0.0, 0.3], source_frames=30)
    assert (short.positions, short.noise_multipliers, short.needed) == ((0, 1), (0.0, 0.3), {"video": 5})
    assert recipes.plan("extension", 17, [0, 1]).noise_multipliers == (0.0, 0.3)
    assert recipes.plan("extension", 81, list(range(6))).noise_multipliers == (0.0, 0.3, 0.4, 0.5, 0.5, 0.5)
    resolved = validate(
        replace(request, positions=[0, 1], noise_multipliers=[0, 0.3]),
        LIMITS,
        media=False,
    )
    assert (resolved.positions, resolved.noise_multipliers) == ([0, 1], [0.0, 0.3])
    with raises_input_error("positions"):
        recipes.plan("extension", 17, [0, 1, 2, 3, 4])  # latent 4 is the only one left to generate
    with raises_input_error("positions", [1, 2]):
        recipes.plan("extension", 17, [1, 2])  # the context is the clip's opening


def test_messages_count_one_in_the_singular():
    from pusa.params import plural

    assert (plural(1, "frame"), plural(13, "frame"), plural(0, "image"), plural(1.5, "CPU core")) == (
        "1 frame", "13 frames", "0 images", "1.5 CPU cores",
    )  # fmt: skip
    with raises_input_error("video") as caught:
        recipes.custom(17, [0, 1], source_frames=1)
    assert "has 1 frame;" in str(caught.value)
    with raises_input_error("noise_multipliers") as caught:
        check_positions([0, 4], [0.2], 5)
    assert "has 1 value but" in str(caught.value)
    with raises_input_error("positions") as caught:
        validate(
            GenerationRequest(
                task="frames", prompt="x", images=["a.png"], positions=[0, 4], noise_multipliers=[0.2, 0.5]
            ),
            LIMITS,
            media=False,
        )
    assert "has 2 values for 1 image;" in str(caught.value)
    assert recipes.extension(5).note().startswith("Extension: the source's last frame opens the new clip")
    assert recipes.extension(5).sources == ("source's last frame",)
    assert "the source's last frame opens the clip" in recipes.transition(17).note()
    assert "last 13 frames open" in recipes.extension(17).note()


def test_a_recipe_accepts_its_own_positions_and_refuses_others():
    assert recipes.plan("completion", 17, [0, 4]).positions == (0, 4)
    with raises_input_error("positions", [0, 3]) as caught:
        recipes.plan("completion", 17, [0, 3])
    assert "0,4" in str(caught.value)  # the positions the recipe takes
    with raises_input_error("recipe", "loop"):
        recipes.plan("loop", 17)


# ---------------------------------------------------------------- the one validation
def test_resolve_fills_the_models_own_values_and_a_seed():
    resolved = resolve(GenerationRequest(task="t2v", prompt="x"), LIMITS.defaults)
    d = LIMITS.defaults
    assert (resolved.num_frames, resolved.width, resolved.num_inference_steps, resolved.lora_alpha) == (
        d.num_frames, d.width, d.num_inference_steps, d.lora_alpha,
    )  # fmt: skip
    assert isinstance(resolved.seed, int)


def test_i2v_errors_name_its_own_parameters(tmp_path):
    request = GenerationRequest(
        task="i2v", prompt="x", images=["/nowhere.png"], positions=[0], noise_multipliers=[2.0]
    )
    with raises_input_error("noise_multiplier", 2.0) as caught:
        validate(request, LIMITS)
    assert caught.value.message(flag_of("noise_multiplier")).startswith(
        "--noise-multiplier=2.0 is not allowed"
    )
    with raises_input_error("image", "/nowhere.png"):
        validate(
            GenerationRequest(
                task="i2v", prompt="x", images=["/nowhere.png"], positions=[0], noise_multipliers=[0.2]
            ),
            LIMITS,
        )


def test_a_recipe_request_comes_back_with_its_positions(tmp_path):
    from pusa.video import write_video

    clip = write_video(tmp_path / "c.mp4", np.zeros((33, 32, 32, 3), np.uint8), 8.0)
    request = GenerationRequest(
        task="v2v", prompt="x", video=str(clip), recipe="completion", width=32, height=32
    )
    resolved = validate(request, LIMITS)
    assert (resolved.positions, resolved.noise_multipliers) == ([0, 4], [0.3, 0.3])
    assert validate(resolved, LIMITS).positions == [0, 4]  # validating again changes nothing
    with raises_input_error("end_video", str(clip)):
        validate(
            GenerationRequest(
                task="v2v", prompt="x", video=str(clip), recipe="extension", end_video=str(clip)
            ),
            LIMITS,
        )
    with raises_input_error("video", str(clip)) as caught:
        validate(
            GenerationRequest(
                task="v2v", prompt="x", video=str(clip), positions=[0, 9], num_frames=41, width=32, height=32
            ),
            LIMITS,
        )
    assert "at least 37" in str(caught.value)  # latent 9 starts at frame 37


def test_every_declared_parameter_has_a_label_a_flag_and_help():
    for name, param in PARAMS.items():
        assert param.label and param.help, name
        # A studio-only control (the Long video total frames) has no flag: `pusa generate long --frames`.
        assert (param.flag and param.flag.startswith("--")) or name in FORM_ONLY, name
        assert label_of(name) == param.label
        frame_counts = ("width", "height", "num_frames", "chunk_frames", "seed")  # the model's limits
        if param.kind in ("int", "float") and name not in frame_counts:
            assert param.low is not None and param.high is not None and param.step, name
    assert (
        face_name("i2v", "noise_multipliers") == "noise_multiplier"
        and face_name("v2v", "noise_multipliers") == "noise_multipliers"
    )
    assert flag_of("num_inference_steps") == "--steps" and flag_of("device") == "--device"


def test_a_request_outside_what_the_model_was_trained_on_is_warned_about():
    import dataclasses

    from pusa.request import advisories
    from pusa.weights.registry import model_limits

    tiny = model_limits("pusa-tiny").defaults  # the shipped manifest declares 17, 33, 49 frames at 64x64
    assert (tiny.trained_frames, tiny.trained_sizes) == ((17, 33, 49), ((64, 64),))
    ok = resolve(GenerationRequest(task="t2v", prompt="x"), tiny)
    assert advisories(ok, tiny) == [] == advisories(dataclasses.replace(ok, num_frames=49), tiny)
    far = dataclasses.replace(ok, num_frames=41, width=128, height=128)
    frames, size = advisories(far, tiny)
    assert frames.param == "num_frames" and frames.message("--frames").startswith(
        "--frames=41 is not a length this model was trained on (17, 33, 49 frames)"
    )
    assert size.param == "width" and "(height 128) is not a size this model was trained at (64x64)" in str(
        size
    )
    assert advisories(far, LIMITS.defaults) == []  # a model that declares nothing: no warnings (real Wan)
