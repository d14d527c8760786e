"""The procedural video world (pusa.train.world) and the pixel-space detector that scores clips of it."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from pusa.train.detector import analyze_clip, classify_motion, detect_frame, direction_name
from pusa.train.world import (
    BACKGROUND_COLORS,
    CAPTION_WORDS,
    EVAL_SEED_START,
    MOTIONS,
    OBJECT_COLORS,
    SHAPES,
    TRAIN_SEED_LIMIT,
    ClipSpec,
    WorldDataset,
    background_image,
    canonical_caption,
    caption,
    contact_sheet,
    eval_specs,
    ground_truth,
    make_batch,
    motion_phrases,
    render_clip,
    sample_clip_spec,
)

NUM_DETECTOR_CLIPS = 60
CENTROID_TOLERANCE_PX = 1.5


@pytest.fixture(scope="module")
def detector_clips():
    specs = [sample_clip_spec(seed) for seed in range(NUM_DETECTOR_CLIPS)]
    return [(spec, analyze_clip(render_clip(spec))) for spec in specs]


def _valid_spec(**overrides) -> ClipSpec:
    fields = {
        "shape": "circle",
        "color": "red",
        "background": "black",
        "motion": "right",
        "x": 20.0,
        "y": 32.0,
        "size": 10.0,
        "end_size": 10.0,
        "travel": 24.0,
    }
    return ClipSpec(**{**fields, **overrides})


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_identical_pixels_and_caption():
    videos_a, captions_a, specs_a = make_batch(7, 4)
    videos_b, captions_b, specs_b = make_batch(7, 4)
    assert videos_a.shape == (4, 17, 64, 64, 3) and videos_a.dtype == np.uint8
    np.testing.assert_array_equal(videos_a, videos_b)
    assert captions_a == captions_b and specs_a == specs_b


def test_different_seeds_differ():
    videos_a, captions_a, _ = make_batch(1, 4)
    videos_b, captions_b, _ = make_batch(2, 4)
    assert not np.array_equal(videos_a, videos_b)
    assert captions_a != captions_b
    assert not np.array_equal(render_clip(sample_clip_spec(0)), render_clip(sample_clip_spec(1)))


def test_sample_accepts_a_generator_and_fixed_attributes():
    spec = sample_clip_spec(np.random.default_rng(3))
    assert 0 <= spec.seed < TRAIN_SEED_LIMIT
    fixed = sample_clip_spec(5, motion="grows", shape="diamond", color="cyan", background="maroon")
    assert (fixed.motion, fixed.shape, fixed.color, fixed.background) == (
        "grows",
        "diamond",
        "cyan",
        "maroon",
    )
    assert fixed.end_size > fixed.size


def test_dataset_items_match_the_spec_of_their_seed():
    dataset = WorldDataset()
    item = dataset[12]
    spec = dataset.spec(12)
    np.testing.assert_array_equal(item["video"], render_clip(spec))
    assert item["caption"] == canonical_caption(spec) and item["seed"] == 12
    with pytest.raises(IndexError, match="index=-1"):
        dataset.spec(-1)


def test_eval_set_is_deterministic_balanced_and_disjoint_from_training():
    specs = eval_specs(2 * len(MOTIONS))
    assert specs == eval_specs(2 * len(MOTIONS))
    assert [spec.motion for spec in specs] == list(MOTIONS) * 2
    assert all(spec.seed >= EVAL_SEED_START > TRAIN_SEED_LIMIT for spec in specs)
    assert {spec.seed for spec in specs}.isdisjoint({spec.seed for spec in eval_specs(5, seed=1)})


# ---------------------------------------------------------------- geometry
@pytest.mark.parametrize("num_frames, width, height", [(17, 64, 64), (33, 64, 64), (17, 96, 48)])
def test_objects_are_where_ground_truth_says_and_stay_in_frame(num_frames, width, height):
    for seed in range(40):
        spec = sample_clip_spec(seed, num_frames, width, height)
        video = render_clip(spec).astype(np.float32)
        assert video.shape == (num_frames, height, width, 3)
        weights = np.abs(video - np.rint(background_image(spec))[None]).sum(-1)  # [F, H, W]
        # Nothing may touch the outer pixel ring: the object stays whole inside the frame.
        assert weights[:, [0, -1], :].max() == 0 and weights[:, :, [0, -1]].max() == 0
        total = weights.sum((1, 2))
        cx = (weights.sum(1) * (np.arange(width) + 0.5)).sum(1) / total
        cy = (weights.sum(2) * (np.arange(height) + 0.5)).sum(1) / total
        truth = np.array(ground_truth(spec))  # [F, 3]
        assert np.hypot(cx - truth[:, 0], cy - truth[:, 1]).max() < CENTROID_TOLERANCE_PX, spec


def test_straight_motions_travel_a_clearly_visible_distance():
    for motion in MOTIONS[:8]:
        for seed in range(10):
            truth = np.array(ground_truth(sample_clip_spec(seed, motion=motion)))
            assert 20.0 <= np.hypot(*(truth[-1, :2] - truth[0, :2])) <= 40.0


def test_bounces_turn_back_and_sizes_change_only_for_grows_and_shrinks():
    for seed in range(20):
        spec = sample_clip_spec(seed, motion="bounces")
        xs, ys, _ = np.array(ground_truth(spec)).T
        coordinate = xs if spec.bounce_style == "wall" else ys
        turned_back = (coordinate.max() - coordinate.min()) - abs(coordinate[-1] - coordinate[0])
        assert turned_back >= 10.0, spec
    sizes = np.array(ground_truth(sample_clip_spec(0, motion="grows")))[:, 2]
    assert np.all(np.diff(sizes) > 0) and sizes[-1] >= 1.8 * sizes[0]
    sizes = np.array(ground_truth(sample_clip_spec(0, motion="shrinks")))[:, 2]
    assert np.all(np.diff(sizes) < 0)


# ---------------------------------------------------------------- captions
def test_captions_name_color_shape_motion_and_background():
    all_phrases = {motion: set() for motion in MOTIONS}
    for seed in range(200):
        spec = sample_clip_spec(seed)
        all_phrases[spec.motion].update(p for pair in motion_phrases(spec) for p in pair)
    for seed in range(300):
        spec = sample_clip_spec(seed)
        text = caption(spec, np.random.default_rng(seed))
        padded = f" {text.replace(',', '')} "
        for name in (spec.color, spec.shape, spec.background):
            assert f" {name} " in padded, (name, text)
        # The longest motion phrase found in the caption must be one of this clip's motion.
        found = [(len(p), motion) for motion, ps in all_phrases.items() for p in ps if f" {p} " in padded]
        assert found and max(found)[1] == spec.motion, (spec.motion, text)
        assert set(re.findall(r"[a-z]+", text)) <= set(CAPTION_WORDS), text


def test_captions_vary():
    spec = sample_clip_spec(0)
    texts = {caption(spec, np.random.default_rng(seed)) for seed in range(50)}
    assert len(texts) > 20


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"shape": "star"}, "shape='star'"),
        ({"color": "pink"}, "color='pink'"),
        ({"background": "teal"}, "background='teal'"),
        ({"motion": "spins"}, "motion='spins'"),
        ({"texture": "plaid"}, "texture='plaid'"),
        ({"num_frames": 1}, "num_frames=1"),
        ({"num_frames": 2.0}, "num_frames=2.0"),
        ({"width": 0}, "width=0"),
        ({"height": -4}, "height=-4"),
        ({"seed": -1}, "seed=-1"),
        ({"x": float("nan")}, "x=nan"),
        ({"size": 0.0, "end_size": 0.0}, "size=0.0"),
        ({"end_size": 12.0}, "end_size=12.0"),
        ({"travel": -1.0}, "travel=-1.0"),
        ({"bounce_time": 1.5}, "bounce_time=1.5"),
        ({"heading": 0}, "heading=0"),
        ({"bounce_style": "wall"}, "bounce_style='wall'"),
        ({"motion": "bounces"}, "bounce_style=None"),
        ({"motion": "grows", "end_size": 8.0}, "end_size=8.0"),
        ({"motion": "shrinks", "end_size": 14.0}, "end_size=14.0"),
    ],
)
def test_every_spec_field_is_validated(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _valid_spec(**overrides)


def test_valid_spec_fields_are_accepted():
    for motion in MOTIONS:
        style = "gravity" if motion == "bounces" else None
        end_size = {"grows": 20.0, "shrinks": 5.0}.get(motion, 10.0)
        spec = _valid_spec(motion=motion, bounce_style=style, end_size=end_size)
        assert render_clip(spec).shape == (17, 64, 64, 3)


def test_function_arguments_are_validated():
    with pytest.raises(ValueError, match="num_frames=1"):
        sample_clip_spec(0, num_frames=1)
    with pytest.raises(ValueError, match="motion='sideways'"):
        sample_clip_spec(0, motion="sideways")
    with pytest.raises(ValueError, match="batch_size=0"):
        make_batch(0, 0)
    with pytest.raises(ValueError, match="n=0"):
        eval_specs(0)
    with pytest.raises(ValueError, match="frame has shape"):
        detect_frame(np.zeros((8, 8)))


def test_palettes_are_well_separated():
    objects = np.array(list(OBJECT_COLORS.values()), dtype=float)
    backgrounds = np.array(list(BACKGROUND_COLORS.values()), dtype=float)
    object_to_background = np.linalg.norm(objects[:, None] - backgrounds[None], axis=-1)
    object_to_object = np.linalg.norm(objects[:, None] - objects[None], axis=-1) + 1e9 * np.eye(len(objects))
    assert object_to_background.min() > 140 and object_to_object.min() > 80
    assert len(SHAPES) >= 4 and len(OBJECT_COLORS) >= 6


# ---------------------------------------------------------------- detector
def test_detector_recovers_color_shape_motion_and_background(detector_clips):
    color = np.mean([analysis.color == spec.color for spec, analysis in detector_clips])
    shape = np.mean([analysis.shape == spec.shape for spec, analysis in detector_clips])
    motion = np.mean([analysis.motion == spec.motion for spec, analysis in detector_clips])
    background = np.mean([analysis.background == spec.background for spec, analysis in detector_clips])
    assert color == 1.0 and background == 1.0
    assert shape >= 0.95 and motion >= 0.95, (shape, motion)


def test_detector_centroids_match_ground_truth(detector_clips):
    for spec, analysis in detector_clips:
        assert analysis.present_fraction == 1.0
        truth = np.array(ground_truth(spec))[:, :2]
        assert np.hypot(*(analysis.centroids - truth).T).max() < CENTROID_TOLERANCE_PX, spec


def test_rendered_clips_do_not_flicker(detector_clips):
    assert max(analysis.flicker for _, analysis in detector_clips) < 0.05


def test_detector_reports_flicker_and_missing_objects():
    spec = sample_clip_spec(4)
    video = render_clip(spec).astype(np.float32)
    noisy = video + np.random.default_rng(0).normal(0.0, 5.0, video.shape)
    assert analyze_clip(noisy).flicker > 3.0
    empty = np.broadcast_to(background_image(spec), video.shape)
    analysis = analyze_clip(empty)
    assert analysis.present_fraction == 0.0 and analysis.motion == "unknown" and analysis.shape is None


def test_motion_classifier_on_synthetic_trajectories():
    frames = np.linspace(0.0, 1.0, 17)
    areas = np.full(17, 100.0)
    still = np.stack([np.full(17, 32.0), np.full(17, 32.0)], axis=1)
    assert classify_motion(still, areas, 64, 64) == "static"
    assert classify_motion(still, areas * (1 + 3 * frames), 64, 64) == "grows"
    assert classify_motion(still, areas / (1 + 3 * frames), 64, 64) == "shrinks"
    diagonal = np.stack([10 + 20 * frames, 50 - 20 * frames], axis=1)
    assert classify_motion(diagonal, areas, 64, 64) == "up-right"
    there_and_back = np.stack([10 + 30 * (1 - np.abs(2 * frames - 1)), np.full(17, 32.0)], axis=1)
    assert classify_motion(there_and_back, areas, 64, 64) == "bounces"
    assert [direction_name(dx, dy) for dx, dy in [(-1, 0), (0, 1), (-1, -1), (1, 1)]] == [
        "left",
        "down",
        "up-left",
        "down-right",
    ]


def test_detector_accepts_a_known_background():
    spec = dataclasses.replace(sample_clip_spec(9), texture="flat")
    frame = render_clip(spec)[0]
    background = np.array(BACKGROUND_COLORS[spec.background])
    detection = detect_frame(frame, background=background)
    assert detection.present and detection.color == spec.color and detection.shape == spec.shape
    analysis = analyze_clip(render_clip(spec), background=background)
    assert (analysis.motion, analysis.background, analysis.flicker) == (spec.motion, spec.background, 0.0)


def test_detector_tolerates_noise_and_blur_like_a_generated_clip():
    rng = np.random.default_rng(0)
    for seed in range(20):
        spec = sample_clip_spec(seed)
        video = render_clip(spec).astype(np.float32)
        softened = (video + np.roll(video, 1, axis=2) + np.roll(video, 1, axis=1)) / 3.0
        analysis = analyze_clip(np.clip(softened + rng.normal(0.0, 8.0, video.shape), 0, 255))
        assert (analysis.color, analysis.shape, analysis.motion) == (spec.color, spec.shape, spec.motion), (
            spec
        )


def test_contact_sheet_layout():
    videos, _, _ = make_batch(0, 2, num_frames=5)
    sheet = contact_sheet(videos, gap_px=2)
    assert sheet.shape == (2 * 66 + 2, 5 * 66 + 2, 3)
    np.testing.assert_array_equal(sheet[2:66, 68:132], videos[0, 1])
