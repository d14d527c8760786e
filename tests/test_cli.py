"""The `pusa` command end to end on the tiny-random model: every task writes a playable mp4 + sidecar."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import raises_input_error, save_image
from pusa.main import build_parser, main
from pusa.pipeline import PusaPipeline
from pusa.video import read_video, read_video_metadata

FAST = ["--model", "tiny-random", "--steps", "2", "--seed", "3", "--width", "32", "--height", "32", "-q"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-inputs")
    paths = {
        name: save_image(folder / f"{name}.png", 40, 56, seed) for seed, name in enumerate(("a", "b", "c"))
    }
    paths["source"] = folder / "source.mp4"
    assert main(["generate", "t2v", "-p", "source", *FAST, "--frames", "25", "-o", str(paths["source"])]) == 0
    return paths


def run_ok(args, out, frames=17):
    assert main([*args, *FAST, "-o", str(out)]) == 0
    video, _ = read_video(out)
    assert video.shape == (frames, 32, 32, 3)
    settings = json.loads(out.with_suffix(".json").read_text())
    assert read_video_metadata(out) == settings
    return settings


def test_t2v(tmp_path):
    settings = run_ok(
        ["generate", "t2v", "-p", "a red circle slides left", "--cfg", "1.0"], tmp_path / "t.mp4"
    )
    assert settings["task"] == "t2v" and settings["cfg"] == 1.0 and settings["seed"] == 3
    assert settings["model"] == "tiny-random(seed=0)" and settings["num_inference_steps"] == 2


def test_several_videos_with_one_model_load(tmp_path, inputs, capsys):
    """--num-videos: consecutive seeds from --seed, one file per seed beside --output's name."""
    args = [
        "generate",
        "i2v",
        "--image",
        str(inputs["a"]),
        "-p",
        "x",
        *FAST,
        "-n",
        "3",
        "-o",
        str(tmp_path / "v.mp4"),
    ]
    assert main(args) == 0
    assert sorted(path.name for path in tmp_path.glob("*.mp4")) == ["v-3.mp4", "v-4.mp4", "v-5.mp4"]
    for seed in (3, 4, 5):
        settings = json.loads((tmp_path / f"v-{seed}.json").read_text())
        assert (settings["seed"], settings["task"]) == (seed, "i2v")
    frames = [read_video(tmp_path / f"v-{seed}.mp4")[0] for seed in (3, 4, 5)]
    assert not np.array_equal(frames[1], frames[2])  # different seeds, different videos
    assert capsys.readouterr().out.count("wrote ") == 3


def test_i2v(tmp_path, inputs):
    settings = run_ok(
        ["generate", "i2v", "--image", str(inputs["a"]), "--noise-multiplier", "0.0", "-p", "x"],
        tmp_path / "i.mp4",
    )
    assert settings["positions"] == [0] and settings["noise_multipliers"] == [0.0]
    assert settings["images"][0]["path"] == str(inputs["a"].resolve())


def test_frames_keyframes(tmp_path, inputs):
    images = [str(inputs[k]) for k in ("a", "b", "c")]
    args = [
        "generate",
        "frames",
        "--images",
        *images,
        "--positions",
        "0,2,4",
        "--noise-multipliers",
        "0.1,0.2,0.3",
    ]
    settings = run_ok(args, tmp_path / "f.mp4")
    assert settings["positions"] == [0, 2, 4] and settings["noise_multipliers"] == [0.1, 0.2, 0.3]


def test_frames_default_positions(tmp_path, inputs):
    settings = run_ok(
        ["generate", "frames", "--images", str(inputs["a"]), str(inputs["b"])], tmp_path / "f.mp4"
    )
    assert settings["positions"] == [0, 4] and settings["noise_multipliers"] == [0.2, 0.5]


def test_v2v_positions(tmp_path, inputs):
    args = [
        "generate",
        "v2v",
        "--video",
        str(inputs["source"]),
        "--positions",
        "0,1,2",
        "--noise-multipliers",
        "0,0.3,0.4",
    ]
    settings = run_ok(args, tmp_path / "v.mp4")
    assert settings["positions"] == [0, 1, 2] and settings["recipe"] is None


@pytest.mark.parametrize("recipe", ["extension", "completion"])
def test_v2v_recipes(tmp_path, inputs, recipe):
    settings = run_ok(
        ["generate", "v2v", "--video", str(inputs["source"]), "--recipe", recipe], tmp_path / "r.mp4"
    )
    assert settings["recipe"] == recipe
    assert settings["sources"]["video"]["path"] == str(inputs["source"].resolve())


def test_v2v_transition(tmp_path, inputs):
    """The README's transition runs at the model's own length (17 frames: the first and the last latent)."""
    args = ["generate", "v2v", "--video", str(inputs["source"]), "--end-video", str(inputs["source"]),
            "--recipe", "transition"]  # fmt: skip
    settings = run_ok(args, tmp_path / "tr.mp4", frames=17)
    assert settings["positions"] == [0, 4] and settings["recipe"] == "transition"
    assert set(settings["sources"]) == {"video", "end_video"}


BAD = [
    (["t2v", "-p", "x", "--steps", "0"], r"--steps=0 is not allowed; must be a whole number in 1\.\.50"),
    (["t2v", "-p", "x", "--steps", "51"], r"--steps=51 is not allowed"),
    (["t2v", "-p", "x", "--frames", "16"], r"--frames=16 is not allowed; must be 4k\+1"),
    (["t2v", "-p", "x", "--width", "40"], r"--width=40 is not allowed; must be a multiple of 16"),
    (["t2v", "-p", "x", "--height", "4096"], r"--height=4096 .*between"),
    (["t2v", "-p", "x", "--lora-alpha", "5.5"], r"--lora-alpha=5\.5 is not allowed; must be a number in 0\.1\.\.5\.0"),
    (["t2v", "-p", "x", "--cfg", "0.5"], r"--cfg=0\.5"),
    (["t2v", "-p", "  "], r"--prompt='  ' is empty; describe the video to generate"),
    (["t2v", "--output", "x.gif"], r"--output='x\.gif'.*\.mp4"),
    (["t2v", "--num-videos", "0"], r"--num-videos=0 is not allowed; make 1 to 100 videos"),
    (["t2v", "-n", "101"], r"--num-videos=101 is not allowed"),
    (["t2v", "--model", "/no/such/dir"], r"--model='/no/such/dir' is neither a folder nor a built-in model"),
    (["i2v", "--image", "/no/such.png"], r"--image='/no/such\.png' does not exist"),
    (["i2v", "--image", "{a}", "--noise-multiplier", "2"], r"--noise-multiplier=2\.0 is not allowed; must be a number in 0\.0\.\.1\.0"),
    (["frames", "--images", "{a}", "{b}", "--positions", "0,9"], r"--positions=\[0, 9\] contains 9; .* 0\.\.4"),
    (["frames", "--images", "{a}", "{b}", "--positions", "1,1"], r"--positions=\[1, 1\] repeats \[1\]"),
    (["frames", "--images", "{a}", "{b}", "--positions", "0,a"], r"^pusa: error: --positions='0,a' is not a list; expected comma-separated"),
    (["frames", "--images", "{a}", "{b}", "--noise-multipliers", "0.2,1.5"], r"--noise-multipliers=\[0\.2, 1\.5\] contains 1\.5"),
    (["frames", "--images", "{a}", "{b}", "--noise-multipliers", "0.2"], r"--noise-multipliers=\[0\.2\] has 1 value but"),
    (["frames", "--images", "{a}", "--positions", "0,4"], r"--positions=\[0, 4\] has 2 values for 1 image;"),
    (["v2v", "--video", "{source}"], r"--positions: none given"),
    (["v2v", "--video", "{source}", "--recipe", "transition"], r"--end-video: none given"),
    (["v2v", "--video", "{source}", "--recipe", "extension", "--end-video", "{source}"], r"--end-video=.* is given; only the transition"),
    (["v2v", "--video", "{source}", "--recipe", "completion", "--positions", "0,1"], r"--positions=\[0, 1\] does not fit the recipe"),
    (["v2v", "--video", "{source}", "--recipe", "extension", "--noise-multipliers", "0.1"], r"--noise-multipliers=\[0\.1\] has 1 value; the extension recipe conditions 4 latent frames at 17 frames; give 4 noise multipliers or none"),
    (["v2v", "--video", "{source}", "--recipe", "completion", "--noise-multipliers", "0.1,0.2,0.3"], r"--noise-multipliers=\[0\.1, 0\.2, 0\.3\] has 3 values; the completion recipe conditions 2 latent frames"),
    (["v2v", "--video", "{a}", "--positions", "0,1"], r"--video='.*a\.png' has 1 frame; positions up to latent 1 needs at least 5"),
    (["v2v", "--video", "/no/clip.mp4", "--positions", "0"], r"--video='/no/clip\.mp4' does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_exits_2_with_message(args, message, inputs, tmp_path, capsys):
    args = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out.mp4")]
    assert main(["generate", *args[:1], *FAST, *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pusa: error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out.mp4").exists()


def test_video_too_short_for_positions(tmp_path, inputs, capsys):
    args = ["generate", "v2v", "--video", str(inputs["source"]), "--positions", "0,7", "--frames", "33"]
    assert main([*args, *FAST, "-o", str(tmp_path / "o.mp4")]) == 2
    assert f"--video='{inputs['source']}' has 25 frames; positions up to latent 7 needs at least 29" in (
        capsys.readouterr().err
    )


def test_help_is_complete(capsys):
    parser = build_parser()
    for argv in (["--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    for task in ("t2v", "i2v", "frames", "v2v"):
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", task, "--help"])
        text = capsys.readouterr().out
        for flag in ("--prompt", "--negative-prompt", "--lora-alpha", "--steps", "--cfg", "--shift", "--seed",
                     "--frames", "--width", "--height", "--fps", "--output", "--model", "--lora"):  # fmt: skip
            assert flag in text, (task, flag)
    for task, flags in {"i2v": ["--image", "--noise-multiplier"], "frames": ["--images", "--positions"],
                        "v2v": ["--video", "--recipe", "--end-video", "--noise-multipliers"]}.items():  # fmt: skip
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", task, "--help"])
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags)


@pytest.mark.skipif(shutil.which("pusa") is None, reason="console script not installed")
def test_console_script(tmp_path):
    out = tmp_path / "c.mp4"
    result = subprocess.run(
        ["pusa", "generate", "t2v", "-p", "x", *FAST, "-o", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and out.exists()


def test_a_caller_of_main_keeps_its_garbage_collector_as_it_was(tmp_path):
    frozen = gc.get_freeze_count()
    assert main(["generate", "t2v", "-p", "x", *FAST, "-o", str(tmp_path / "g.mp4")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen  # only the console script tunes it


def test_the_console_script_freezes_what_its_imports_made_and_collects_again_after(tmp_path):
    code = (
        "import gc, sys\n"
        "from pusa.main import main\n"
        f"status = main(['generate', 't2v', '-p', 'x', *{FAST!r}, '-o', {str(tmp_path / 'g.mp4')!r}], whole_process=True)\n"
        "print(status, gc.isenabled(), gc.get_freeze_count() > 100_000)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["0", "True", "True"]


def test_help_imports_no_torch_and_attention_is_checked_when_named(capsys):
    # `pusa --help` and the argument checks must stay instant: no torch, diffusers or gradio behind them.
    code = (
        "import sys\n"
        "from pusa.main import build_parser\n"
        "parser = build_parser()\n"
        "args = parser.parse_args(['generate', 't2v', '-p', 'x'])\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules)\n"
        "print('heavy:', heavy, args.attention, args.cfg, args.lora_alpha, args.shift)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "heavy: [] auto 3.0 None 5.0" in result.stdout
    from pusa.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "t2v", "--attention", "nope"])
    err = capsys.readouterr().err
    assert "--attention: 'nope' is not an attention backend" in err and "native" in err
    assert build_parser().parse_args(["generate", "t2v", "--attention", "native"]).attention == "native"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is")
def test_every_command_names_a_device_it_cannot_use(capsys):
    """generate, serve and train vta refuse a device this machine lacks before loading anything."""
    from pusa.app.serve import main as serve_main

    assert main(["generate", "t2v", "-p", "x", "--device", "cuda"]) == 2
    assert "--device='cuda' is not available: no CUDA device here" in capsys.readouterr().err
    assert main(["generate", "t2v", "-p", "x", "--device", "gpu"]) == 2
    assert "--device='gpu' is not a torch device; use cpu, cuda (cuda:N) or mps" in capsys.readouterr().err
    assert main(["generate", "t2v", "-p", "x", "--device", "meta"]) == 2
    assert "--device='meta' cannot be used; pusa runs on cpu, cuda (cuda:N) or mps" in capsys.readouterr().err
    assert serve_main(["--device", "cuda:1"]) == 2
    assert "pusa serve: error: --device='cuda:1' is not available: no CUDA device" in capsys.readouterr().err
    assert (
        main(["train", "vta", "--model", "m", "--latents", "l", "--run-dir", "r", "--device", "xla:0"]) == 2
    )
    assert "--device='xla:0' cannot be used; training runs on cpu or cuda (cuda:N)" in capsys.readouterr().err
    with raises_input_error("device", "cuda"):
        PusaPipeline.from_preset("tiny-random", device="cuda")


@pytest.mark.slow  # a 41-frame 128x128 video on pusa-tiny
def test_a_clip_the_model_was_not_trained_on_runs_with_a_warning_naming_the_flag(tmp_path, capsys):
    out = tmp_path / "long.mp4"
    assert (
        main(
            ["generate", "t2v", "-p", "a red circle", "--steps", "1", "--frames", "21", "-q", "-o", str(out)]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "pusa: warning: --frames=21 is not a length this model was trained on (17, 33, 49 frames)" in err
    assert json.loads(out.with_suffix(".json").read_text())["warnings"][0].startswith("num_frames=21 is not")


def test_an_existing_output_is_refused_before_the_model_loads_unless_overwrite(tmp_path, capsys):
    """-o never replaces a video or its sidecar silently: refused naming --output (each -n per-seed name
    too), the files left as they were; --overwrite replaces them."""
    from pusa.cli import run_generate

    out = tmp_path / "t.mp4"
    out.write_bytes(b"an earlier video")
    argv = ["generate", "t2v", "-p", "x", *FAST, "-o", str(out)]
    with raises_input_error("output", str(out)):
        run_generate(build_parser().parse_args(argv))
    assert main(argv) == 2
    assert "--output='" + str(out) + "' exists; give another path or --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier video" and not out.with_suffix(".json").exists()
    lone = tmp_path / "s.mp4"
    lone.with_suffix(".json").write_text("{}")  # a sidecar alone would be replaced too
    with raises_input_error("output", str(lone)):
        run_generate(build_parser().parse_args([*argv[:-1], str(lone)]))
    (tmp_path / "v-4.mp4").write_bytes(b"seed 4's")  # -n 2 --seed 3 writes v-3.mp4 and v-4.mp4
    with raises_input_error("output", str(tmp_path / "v-4.mp4")):
        run_generate(build_parser().parse_args([*argv[:-1], str(tmp_path / "v.mp4"), "-n", "2"]))
    assert not (tmp_path / "v-3.mp4").exists()  # nothing made: refused before the first video
    assert main([*argv, "--overwrite"]) == 0
    assert read_video(out)[0].shape == (17, 32, 32, 3) and out.with_suffix(".json").exists()


def test_the_default_output_never_replaces_an_earlier_video(tmp_path, monkeypatch):
    """Without -o: outputs/<task>-<time>-<seed>.mp4, with -1, -2, ... when that name (or its sidecar) is
    taken; the earlier files stay as they were."""
    import time

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    now = time.time()
    taken = [  # every name the next minute could give, and the first suffix of each
        tmp_path / "outputs" / f"t2v-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))}-3{suffix}"
        for s in range(60) for suffix in (".mp4", "-1.json")
    ]  # fmt: skip
    for path in taken:
        path.write_text("earlier")
    assert main(["generate", "t2v", "-p", "x", *FAST]) == 0
    made = sorted(set((tmp_path / "outputs").glob("*.mp4")) - set(taken))
    assert len(made) == 1 and made[0].name.endswith("-3-2.mp4"), made
    assert read_video(made[0])[0].shape == (17, 32, 32, 3) and made[0].with_suffix(".json").exists()
    assert all(path.read_text() == "earlier" for path in taken)
