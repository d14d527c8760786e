"""The studio's forms: form values -> JobSpec / GenerationRequest, and every message a user can see.

No web server here: `pusa.app.forms` is plain Python. The pipeline's own checks are reached through
`check_spec` with the tiny-random model.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from helpers import png_claiming, save_clip, save_image
from pusa.app import forms
from pusa.app.forms import FormError, UploadLimits
from pusa.app.timeline import error_html, timeline_html
from pusa.params import DEFAULT_NEGATIVE_PROMPT
from pusa.pipeline import PusaPipeline
from pusa.request import WAN_DEFAULTS
from pusa.weights.registry import TINY_DEFAULTS

D = TINY_DEFAULTS  # 17 frames = 5 latent frames, 64x64, 4 steps, 8 fps


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("form-files")
    paths = {}
    for seed, name in enumerate(("a", "b", "c")):
        paths[name] = save_image(folder / f"{name}.png", seed=seed)
    paths["tiff"] = folder / "scan.tiff"
    Image.new("RGB", (8, 8)).save(paths["tiff"])
    paths["wide"] = folder / "wide.png"
    Image.new("RGB", (300, 10)).save(paths["wide"])
    paths["text"] = folder / "notes.png"
    paths["text"].write_text("not an image")
    paths["bomb"] = folder / "bomb.png"
    paths["bomb"].write_bytes(png_claiming(20_000, 20_000))
    for name, count in (("clip17", 17), ("clip9", 9), ("clip25", 25)):
        paths[name] = save_clip(folder / f"{name}.mp4", count)
    paths["garbage"] = folder / "broken.mp4"
    paths["garbage"].write_bytes(b"\x00not a video" * 64)
    paths["gif_named_txt"] = folder / "clip.txt"
    paths["gif_named_txt"].write_bytes(b"hello")
    paths["audio"] = folder / "sound.mp4"
    with av.open(str(paths["audio"]), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return paths


@pytest.fixture(scope="module")
def pipe(tiny_random) -> PusaPipeline:
    return tiny_random


def common(**overrides) -> dict:
    """The fields every tab has, by their form keys; a key left out takes its declared default."""
    return {"prompt": "a red circle", "steps": 2, "seed": 5, "width": 32, "height": 32, **overrides}


# ---------------------------------------------------------------------------------------------- mapping
def test_an_empty_lora_alpha_is_the_models_own():
    spec = forms.text_to_video(common(lora_alpha=None), dataclasses.replace(D, lora_alpha=0.6))
    assert spec.request.lora_alpha == 0.6 and spec.form["lora_alpha"] == 0.6
    assert forms.text_to_video(common(lora_alpha=2.0), D).request.lora_alpha == 2.0


def test_image_to_video_maps_every_field(files):
    kept = []

    def keep(path: str) -> str:
        kept.append(path)
        return f"/kept/{Path(path).name}"

    spec = forms.image_to_video(
        str(files["a"]), 0.35, common(cfg=1.0, lora_alpha=2.0, fps=12.0, num_frames=21), D, keep=keep
    )
    r = spec.request
    assert (r.task, r.prompt, r.images, r.positions, r.noise_multipliers) == (
        "i2v", "a red circle", ["/kept/a.png"], [0], [0.35]
    )  # fmt: skip
    assert (r.num_inference_steps, r.seed, r.cfg, r.lora_alpha, r.fps, r.num_frames) == (
        2,
        5,
        1.0,
        2.0,
        12.0,
        21,
    )
    assert (r.width, r.height, r.negative_prompt) == (32, 32, DEFAULT_NEGATIVE_PROMPT)
    assert kept == [str(files["a"])] and r.recipe is None and r.shift == 5.0
    assert spec.form == {
        "tab": "i2v", "image": "/kept/a.png", "noise_multiplier": 0.35, "prompt": "a red circle",
        "negative_prompt": DEFAULT_NEGATIVE_PROMPT, "lora_alpha": 2.0, "steps": 2, "seed": 5, "cfg": 1.0,
        "shift": 5.0, "width": 32, "height": 32, "num_frames": 21, "fps": 12.0,
        "loras": "", "preset": "none", "boundary": 0.875, "cache": "off", "cache_threshold": 0.2,
    }  # fmt: skip


def test_blank_fields_take_the_model_defaults_and_seed_minus_one_is_drawn(files):
    blank = dict(prompt="x", steps=None, seed=-1, width=None, height=None, num_frames=None, fps=None)
    spec = forms.image_to_video(str(files["a"]), 0.2, blank, D)
    r = spec.request
    assert (r.num_inference_steps, r.width, r.height, r.num_frames, r.fps) == (4, 64, 64, 17, 8.0)
    assert isinstance(r.seed, int) and 0 <= r.seed < 2**31 and spec.form["seed"] == r.seed
    wan = forms.text_to_video(dict(prompt="x", seed=None), WAN_DEFAULTS).request
    assert (wan.num_inference_steps, wan.width, wan.height, wan.num_frames, wan.fps) == (
        10,
        832,
        480,
        81,
        16.0,
    )


def test_keys_left_out_take_their_declared_defaults_and_unknown_keys_are_refused(files):
    r = forms.text_to_video({"prompt": "x"}, D).request
    assert (r.cfg, r.shift, r.negative_prompt, r.num_inference_steps) == (
        3.0,
        5.0,
        DEFAULT_NEGATIVE_PROMPT,
        4,
    )
    expect(r"Task: \['guidance'\] are not fields; .*", forms.text_to_video, {"prompt": "x", "guidance": 2}, D)


def test_gradio_numbers_become_ints(files):
    spec = forms.image_to_video(
        str(files["a"]), 0.2, common(steps=3.0, seed=9.0, width=48.0, num_frames=21.0), D
    )
    r = spec.request
    assert (r.num_inference_steps, r.seed, r.width, r.num_frames) == (3, 9, 48, 21)
    assert all(isinstance(v, int) for v in (r.num_inference_steps, r.seed, r.width, r.num_frames))


def test_frames_to_video_positions_multipliers_and_defaults(files):
    images = [str(files["a"]), str(files["b"]), str(files["c"])]
    spec = forms.frames_to_video(images, " 0, 2 ,4", "0.1,0.2,0.3", common(), D)
    assert spec.request.positions == [0, 2, 4] and spec.request.noise_multipliers == [0.1, 0.2, 0.3]
    assert spec.form["positions"] == "0,2,4" and spec.form["noise_multipliers"] == "0.1,0.2,0.3"
    assert spec.form["images"] == images
    # Blank fields: spread from the first to the last latent frame, 0.2 then 0.5 (the seed's "0,20", "0.2,0.5").
    spec = forms.frames_to_video(images[:2], "", "", common(), D)
    assert spec.request.positions == [0, 4] and spec.request.noise_multipliers == [0.2, 0.5]
    spec = forms.frames_to_video(images[:2], "", "", common(num_frames=None), WAN_DEFAULTS)
    assert spec.request.positions == [0, 20]


def test_video_to_video_custom_and_recipes(files):
    clip = str(files["clip25"])
    spec = forms.video_to_video(clip, "0,1", "0,0.3", "custom", None, common(), D)
    r = spec.request
    assert (r.task, r.video, r.positions, r.recipe, r.end_video) == ("v2v", clip, [0, 1], None, None)
    assert spec.form["recipe"] == "custom" and spec.form["end_video"] is None
    spec = forms.video_to_video(clip, "0,1,2", "", None, None, common(), D)
    assert spec.request.noise_multipliers == [0.2, 0.2, 0.2]

    positions, multipliers = forms.recipe_fields("extension", 17)
    assert (positions, multipliers) == ("0,1,2,3", "0,0.3,0.4,0.5")
    spec = forms.video_to_video(clip, positions, multipliers, "extension", str(files["clip9"]), common(), D)
    assert spec.request.recipe == "extension" and spec.request.end_video is None  # only a transition keeps it

    assert forms.recipe_fields("completion", 17) == ("0,4", "0.3,0.3")
    assert forms.recipe_fields("completion", 81) == ("0,20", "0.3,0.3")
    assert forms.recipe_fields("custom", 17) is None

    # A recipe with blank fields uses its own positions and multipliers.
    spec = forms.video_to_video(clip, "", "", "completion", None, common(), D)
    assert (spec.request.positions, spec.request.noise_multipliers) == ([0, 4], [0.3, 0.3])
    spec = forms.video_to_video(clip, " ", "0.1,0.2", "completion", None, common(), D)
    assert spec.request.noise_multipliers == [0.1, 0.2]

    # The transition at the model's own 17 frames (5 latents): the first and the last latent; 81: 3 each side.
    assert forms.recipe_fields("transition", 17) == ("0,4", "0,0")
    assert forms.recipe_fields("transition", 81) == ("0,1,2,18,19,20", "0,0.3,0.4,0.4,0.3,0")
    spec = forms.video_to_video(clip, "0,4", "0,0", "transition", clip, common(), D)
    assert spec.request.recipe == "transition" and spec.request.end_video == clip
    assert spec.form["end_video"] == clip and spec.form["positions"] == "0,4"


def test_text_to_video(files):
    spec = forms.text_to_video(common(negative_prompt="blurry"), D)
    r = spec.request
    assert (r.task, r.images, r.video, r.positions, r.negative_prompt) == ("t2v", (), None, (), "blurry")
    assert spec.form["tab"] == "t2v"


def test_specs_pass_the_pipeline_checks(files, pipe):
    images = [str(files["a"]), str(files["b"])]
    clip = str(files["clip25"])
    for spec in (
        forms.image_to_video(str(files["a"]), 0.2, common(), D),
        forms.frames_to_video(images, "0,4", "0.2,0.5", common(), D),
        forms.video_to_video(clip, "0,1,2,3", "0,0.3,0.4,0.5", "extension", None, common(), D),
        forms.video_to_video(clip, "", "", "transition", clip, common(), D),
        forms.text_to_video(common(), D),
    ):
        forms.check_spec(pipe.limits, spec)


# ---------------------------------------------------------------------------------------------- messages
def expect(message: str, call, *args, **kwargs) -> FormError:
    with pytest.raises(FormError) as caught:
        call(*args, **kwargs)
    assert re.fullmatch(message, str(caught.value)), str(caught.value)
    return caught.value


def test_text_field_messages():
    expect(
        r"Conditioning Positions: '0,a' is not a list of whole numbers; give comma-separated latent frames, e.g. 0,4",
        forms.parse_positions,
        "0,a",
    )
    expect(r"Conditioning Positions: '-1' is not .*", forms.parse_positions, "-1")
    expect(
        r"Noise Multipliers: '0.2,x' is not a list of numbers; give comma-separated numbers in 0.0..1.0, e.g. 0.2,0.5",
        forms.parse_multipliers,
        "0.2,x",
    )
    error = expect(
        r"Noise Multipliers: \[0.2, 1.5\] contains 1.5; each must be a number in 0.0..1.0",
        forms.parse_multipliers,
        "0.2,1.5",
    )
    assert (error.param, error.value, error.field) == ("noise_multipliers", [0.2, 1.5], "noise_multipliers")
    expect(r"Frames: 20 is not allowed; must be 4k\+1, e.g. 17, 33, 49, 81", forms.check_num_frames, 20, D)
    expect(r"Frames: 'many' is not a number; give a number", forms.check_num_frames, "many", D)
    expect(r"Frames: 17.5 is not a whole number; give a whole number", forms.check_num_frames, 17.5, D)
    expect(r"Frames: \[17\] is not a number; give a number", forms.check_num_frames, [17], D)


def test_conditioning_messages_name_the_field(files):
    a, b = str(files["a"]), str(files["b"])
    expect(
        r"Noise Multipliers: \[0.2\] has 1 value but positions=\[0, 4\] has 2; give one noise multiplier per position",
        forms.frames_to_video, [a, b], "0,4", "0.2", common(), D,
    )  # fmt: skip
    expect(
        r"Conditioning Positions: \[0, 9\] contains 9; positions are latent frame indices, whole numbers in "
        r"0..4 for this video \(5 latent frames\)",
        forms.frames_to_video, [a, b], "0,9", "", common(), D,
    )  # fmt: skip
    expect(
        r"Conditioning Positions: \[2, 2\] repeats \[2\]; each latent frame can be conditioned once",
        forms.frames_to_video, [a, b], "2,2", "", common(), D,
    )  # fmt: skip
    expect(r"Recipe: 'loop' is not allowed; choose one of custom, extension, completion, transition",
           forms.recipe_fields, "loop", 17)  # fmt: skip


def test_common_field_messages(files):
    image = str(files["a"])
    expect(r"Prompt: 5 is not allowed; must be text", forms.image_to_video, image, 0.2, common(prompt=5), D)
    expect(
        r"Prompt: '  ' is empty; describe the video to generate", forms.text_to_video, common(prompt="  "), D
    )
    expect(
        r"Seed: -5 is not allowed; use -1 for a random seed, or a whole number in 0..9223372036854775807",
        forms.text_to_video,
        common(seed=-5),
        D,
    )
    expect(r"Seed: 1.5 is not a whole number; .*", forms.text_to_video, common(seed=1.5), D)
    error = expect(
        r"Inference Steps: 2.5 is not a whole number; .*", forms.text_to_video, common(steps=2.5), D
    )
    assert (error.param, error.field) == ("num_inference_steps", "steps")
    expect(r"CFG: '' is empty; give a number", forms.text_to_video, common(cfg=""), D)
    expect(r"Shift: '' is empty; give a number", forms.text_to_video, common(shift=""), D)
    expect(r"Width: 'wide' is not a number; give a number", forms.text_to_video, common(width="wide"), D)
    expect(r"FPS: True is not a number; give a number", forms.text_to_video, common(fps=True), D)


def test_image_messages(files):
    expect(
        r"Image: none uploaded; Image-to-Video needs the image to start from",
        forms.image_to_video, None, 0.2, common(), D,
    )  # fmt: skip
    expect(
        r"Image: '/no/such.png' was not received; upload the file again",
        forms.image_to_video, "/no/such.png", 0.2, common(), D,
    )  # fmt: skip
    expect(
        r"Noise Multiplier: 1.2 is not allowed; must be a number in 0.0..1.0",
        forms.image_to_video, str(files["a"]), 1.2, common(), D,
    )  # fmt: skip
    expect(
        r"Image: 'notes.png' is not an image; allowed: PNG, JPEG, WebP, BMP, GIF",
        forms.check_image, files["text"],
    )  # fmt: skip
    expect(
        r"Image: 'scan.tiff' is a TIFF image; allowed: PNG, JPEG, WebP, BMP, GIF",
        forms.check_image,
        files["tiff"],
    )
    expect(
        r"Image: 'wide.png' is 300x10 pixels; the limit is 256 pixels on each side",
        forms.check_image, files["wide"], limits=UploadLimits(image_side=256),
    )  # fmt: skip
    expect(
        r"Images: 'a.png' is 0.0 MB; the limit is 1e-06 MB",
        forms.check_image, files["a"], "images", UploadLimits(image_mb=1e-6),
    )  # fmt: skip
    expect(  # a decompression bomb: a small file whose header claims 20000x20000 pixels
        r"Image: 'bomb.png' has too many pixels to open; the limit is \d+ pixels on each side",
        forms.check_image, files["bomb"],
    )  # fmt: skip


def test_multi_frames_messages(files):
    a, b = str(files["a"]), str(files["b"])
    expect(
        r"Images: 1 uploaded; Multi-Frames to Video needs two or more \(one: use Image-to-Video\)",
        forms.frames_to_video, [a], "0", "0.2", common(), D,
    )  # fmt: skip
    expect(r"Images: 0 uploaded; .*", forms.frames_to_video, None, "", "", common(), D)
    expect(
        r"Images: 3 uploaded; the limit is 2",
        forms.frames_to_video, [a, b, a], "", "", common(), D, UploadLimits(images=2),
    )  # fmt: skip
    expect(
        r"Images: 'notes.png' is not an image; .*",
        forms.frames_to_video,
        [a, str(files["text"])],
        "",
        "",
        common(),
        D,
    )
    expect(
        r"Conditioning Positions: '0,2,4' gives 3 positions for 2 images; give one position per image, "
        r"in the images' order",
        forms.frames_to_video, [a, b], "0,2,4", "", common(), D,
    )  # fmt: skip
    expect(
        r"Conditioning Positions: \[0, 20\] contains 20; .*",
        forms.frames_to_video,
        [a, b],
        "0,20",
        "",
        common(),
        D,
    )


def test_video_messages(files):
    clip = str(files["clip17"])
    expect(
        r"Source video: none uploaded; Video-to-Video needs a source video",
        forms.video_to_video, None, "0", "", "custom", None, common(), D,
    )  # fmt: skip
    expect(
        r"Source video: 'clip.txt' is not a video file; allowed: mp4, webm, mov, mkv, avi, m4v",
        forms.check_video, files["gif_named_txt"],
    )  # fmt: skip
    expect(
        r"Source video: 'broken.mp4' is not a readable video \(.*\); expected a video file \(mp4, .*\)",
        forms.check_video,
        files["garbage"],
    )
    expect(r"Source video: 'sound.mp4' has no video stream; .*", forms.check_video, files["audio"])
    expect(
        r"Source video: 'clip17.mp4' is [0-9.]+ MB; the limit is 1e-06 MB",
        forms.check_video, clip, limits=UploadLimits(video_mb=1e-6),
    )  # fmt: skip
    expect(
        r"Source video: 'clip17.mp4' lasts 2.1 s; the limit is 1 s",
        forms.check_video, clip, limits=UploadLimits(video_seconds=1),
    )  # fmt: skip
    expect(
        r"Second clip: 'clip17.mp4' is 48x32 pixels; the limit is 40 pixels on each side",
        forms.check_video, clip, "end_video", UploadLimits(video_side=40),
    )  # fmt: skip
    info = forms.check_video(clip)
    assert (info.frames, info.width, info.height, info.fps) == (17, 48, 32, 8.0)


def test_video_to_video_messages(files):
    clip9, clip25 = str(files["clip9"]), str(files["clip25"])
    expect(
        r"Conditioning Positions: '' is empty; give the latent frames of the video to keep, e.g. 0,1,2,3",
        forms.video_to_video, clip25, " ", "", "custom", None, common(), D,
    )  # fmt: skip
    expect(
        r"Source video: 'clip9.mp4' has 9 frames; positions up to latent 3 needs at least 13",
        forms.video_to_video, clip9, "0,3", "", "custom", None, common(), D,
    )  # fmt: skip
    expect(
        r"Source video: 'clip9.mp4' has 9 frames; the extension recipe with 4 context latents needs at least 13",
        forms.video_to_video, clip9, "0,1,2,3", "0,0.3,0.4,0.5", "extension", None, common(), D,
    )  # fmt: skip
    expect(
        r"Conditioning Positions: \[0, 2\] does not fit the recipe; the extension recipe conditions latent "
        r"frames 0,1 here; give those or none \(or no recipe, to pick positions freely\)",
        forms.video_to_video, clip25, "0,2", "0,0.3", "extension", None, common(), D,
    )  # fmt: skip
    expect(
        r"Conditioning Positions: \[0, 3\] does not fit the recipe; the completion recipe conditions latent frames 0,4 .*",
        forms.video_to_video, clip25, "0,3", "0.3,0.3", "completion", None, common(), D,
    )  # fmt: skip
    expect(
        r"Frames: 9 is not allowed; the transition recipe needs 13 frames or more \(4 latents\)",
        forms.video_to_video, clip25, "", "", "transition", clip25, common(num_frames=9), D,
    )  # fmt: skip
    expect(
        r"Second clip: none uploaded; the transition recipe needs the clip to arrive at",
        forms.video_to_video, clip25, "", "", "transition", None, common(), D,
    )  # fmt: skip
    expect(
        r"Second clip: 'clip9.mp4' has 9 frames; the transition recipe needs at least 12",
        forms.video_to_video, clip25, "", "", "transition", clip9, common(num_frames=41), D,
    )  # fmt: skip
    expect(
        r"Noise Multipliers: \[0.1, 0.2, 0.3\] has 3 values; the transition recipe conditions 2 latent frames "
        r"at 17 frames; give 2 noise multipliers or none \(the transition recipe's own: 0,0\)",
        forms.video_to_video, clip25, "", "0.1,0.2,0.3", "transition", clip25, common(), D,
    )  # fmt: skip


def test_model_limits_are_named_by_the_field(files, pipe):
    image = str(files["a"])
    cases = [
        (common(width=40), r"Width: 40 is not allowed; must be a multiple of 16 between 16 and 512 pixels for this model"),
        (common(height=1024), r"Height: 1024 is not allowed; .*"),
        (common(steps=0), r"Inference Steps: 0 is not allowed; must be a whole number in 1..50"),
        (common(steps=51), r"Inference Steps: 51 is not allowed; .*"),
        (common(lora_alpha=9.0), r"LoRA Alpha: 9.0 is not allowed; must be a number in 0.1..5.0"),
        (common(cfg=0.5), r"CFG: 0.5 is not allowed; must be a number in 1.0..20.0"),
        (common(fps=0.0), r"FPS: 0.0 is not allowed; must be a number in 1.0..60.0"),
        (common(num_frames=129), r"Frames: 129 is not allowed; this model takes at most 125"),
    ]  # fmt: skip
    for values, message in cases:
        expect(message, forms.check_spec, pipe.limits, forms.image_to_video(image, 0.2, values, D))


# ---------------------------------------------------------------------------------------------- LoRA panel
def rows(*entries) -> dict:
    """The LoRA panel's fields for rows (file, strength, expert), the rest left blank as the page sends them."""
    values = {}
    for row in range(1, forms.LORA_ROWS + 1):
        file, strength, expert = entries[row - 1] if row <= len(entries) else (None, None, "all")
        values.update(zip(forms.lora_row_keys(row), (file, strength, expert), strict=True))
    return values


def test_lora_panel_rows_compose_into_the_stack(tmp_path):
    a, b, c = (tmp_path / f"{name}.safetensors" for name in "abc")
    for path in (a, b, c):
        path.write_bytes(b"x")
    values = common(
        **rows((str(a), 1.5, "high"), (None, None, "all"), (f" {b} ", "", "low")), loras=f"{c}:0.5"
    )
    spec = forms.text_to_video(values, D)
    # the rows in order (a blank row skipped, a blank strength = LoRA Alpha), then the text's entries
    assert spec.request.loras == f"{a}:1.5@high\n{b}@low\n{c}:0.5"
    form = spec.form  # what "Use these settings" puts back: each row, and the text field as typed
    assert (form["lora_file_1"], form["lora_strength_1"], form["lora_expert_1"]) == (str(a), 1.5, "high")
    assert (form["lora_file_3"], form["lora_strength_3"], form["lora_file_2"]) == (str(b), "", None)
    assert form["loras"] == f"{c}:0.5"
    # every row blank and no text: the model's own stack
    assert forms.text_to_video(common(**rows()), D).request.loras == ""


def test_a_bad_lora_row_is_refused_naming_it(tmp_path, pipe):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x")
    ok = (str(lora), None, "all")
    cases = [
        (rows(ok, (str(lora), 7, "all")), r"LoRA 2 Strength: 7.0 is not allowed; must be a number in 0..5 .*"),
        (rows(ok, (str(lora), "strong", "all")), r"LoRA 2 Strength: 'strong' is not a number; give a number"),
        (rows((str(lora), 1.0, "middle")), r"LoRA 1 Expert: 'middle' is not allowed; choose one of all, high, low"),
        (rows(ok, ok, (None, 1.2, "all")), r"LoRA 3 File: '' is empty; choose the row's LoRA file, or clear .*"),
        (rows((str(tmp_path / "no.safetensors"), None, "all")), r"LoRA 1 File: '.*no.safetensors' is not a file; .*"),
    ]  # fmt: skip
    for values, message in cases:
        expect(message, forms.text_to_video, common(**values), D)
    # the model's own checks name the row too: tiny-random has one DiT, so no expert to bind a LoRA to
    spec = forms.text_to_video(common(**rows(ok, (str(lora), 1.0, "high"))), D)
    expect(r"LoRA 2 Expert: 'high' binds a LoRA to the high-noise expert; this model has one DiT.*",
           forms.check_spec, pipe.limits, spec)  # fmt: skip
    spec = forms.text_to_video(common(**rows(ok), loras=f"{lora}@low"), D)  # the text field's own entry
    expect(
        r"LoRAs: '.*' binds a LoRA to the low-noise expert; .*",
        forms.check_spec,
        pipe.limits,
        spec,
    )


# ---------------------------------------------------------------------------------------------- timeline
def test_timeline_shows_cells_multipliers_pixel_frames_and_thumbnails():
    html = timeline_html(
        81, [0, 20], [0.2, 0.5], ["data:image/png;base64,AAAA", None], ["image 1", "image 2"]
    )
    assert html.count('class="pusa-timeline-cell"') == 21
    assert "81 frames = 21 latent frames" in html
    assert "<b>latent 0</b> = frame 0: image 1, noise multiplier 0.2" in html
    assert "<b>latent 20</b> = frames 77–80: image 2, noise multiplier 0.5" in html
    assert html.count("<img ") == 1 and 'src="data:image/png;base64,AAAA"' in html
    assert 'title="latent 5 · frames 17–20 · generated"' in html
    assert "http" not in html  # nothing to fetch
    small = timeline_html(17, [], [])
    assert small.count('class="pusa-timeline-cell"') == 5 and "<ul" not in small


def test_timeline_escapes_user_text():
    html = timeline_html(17, [0], [0.0], [], ["<script>x</script>"], note="<b>")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;" in error_html("<b>")


def test_the_expert_boundary_is_shown_for_two_expert_models_only(tmp_path):
    from pusa.app.page import StudioPage
    from pusa.request import ModelLimits
    from pusa.serving.history import History
    from pusa.serving.queue import JobQueue

    queue = JobQueue(lambda: PusaPipeline.from_model("tiny-random"), History(tmp_path))  # never started
    shown = {}
    for experts in (1, 2):
        page = StudioPage(queue, ModelLimits.of((1, 2, 2), 8, 32, TINY_DEFAULTS, experts), "tiny")
        page.build()
        shown[experts] = {tab.fields["boundary"].visible for tab in page.tabs.values()}
    assert shown == {1: {False}, 2: {True}}  # hidden, yet still a field: the API keeps its parameters
