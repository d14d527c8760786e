"""The shipped pusa-tiny demo model loads and runs every task; the evaluation table runs on a small subset."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import numpy as np
import pytest

from pusa.pipeline import PusaPipeline
from pusa.train.evaluate import METRICS, EvalSettings, evaluate_pipeline, format_table, psnr
from pusa.train.world import canonical_caption, eval_specs, render_clip
from pusa.weights.registry import PUSA_TINY_DIR, model_defaults, read_manifest

needs_demo = pytest.mark.skipif(
    read_manifest(PUSA_TINY_DIR) is None, reason=f"no demo model in {PUSA_TINY_DIR}"
)
STEPS = 2


@pytest.fixture(scope="module")
def pipe():
    return PusaPipeline.from_model("pusa-tiny")


def test_psnr_and_table_format():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    assert psnr(image, image) == 99.0
    assert psnr(image, image + 255) == pytest.approx(0.0)
    table = format_table({"base": {"t2v_color": 50.0}, "VTA": {"t2v_color": 100.0, "i2v_psnr0": 30.04}})
    assert "| T2V colour accuracy | 50% | 100% |" in table
    assert "| I2V frame-0 PSNR vs image (dB) | - | 30.0 |" in table
    assert len(table.splitlines()) == 2 + len(METRICS)


@needs_demo
def test_demo_defaults_are_the_native_clip():
    defaults = model_defaults("pusa-tiny")
    assert (defaults.num_frames - 1) % 4 == 0 and (defaults.num_frames - 1) // 4 + 1 >= 5
    assert defaults.width % 16 == 0 and defaults.height % 16 == 0


@pytest.mark.slow  # every task on the shipped model, scored
@needs_demo
def test_shipped_model_runs_every_task(pipe):
    d = pipe.defaults
    spec = eval_specs(1, seed=3, num_frames=d.num_frames, width=d.width, height=d.height)[0]
    clip, prompt = render_clip(spec), canonical_caption(spec)
    shape = (d.num_frames, d.height, d.width, 3)
    outputs = [
        pipe.text_to_video(prompt, num_inference_steps=STEPS, seed=0),
        pipe.image_to_video(clip[0], prompt, num_inference_steps=STEPS, seed=0),
        pipe.frames_to_video([clip[0], clip[-1]], prompt, num_inference_steps=STEPS, seed=0),
        pipe.frames_to_video([clip[0], clip[8], clip[-1]], prompt, num_inference_steps=STEPS, seed=0),
        pipe.extend_video(clip, prompt, num_inference_steps=STEPS, seed=0),
    ]
    for out in outputs:
        assert out.frames.shape == shape and out.frames.dtype == np.uint8
        assert out.settings["model"].startswith("pusa-tiny")
        assert out.settings["lora"].endswith(".safetensors")
    assert outputs[1].settings["positions"] == [0]
    assert outputs[3].settings["positions"] == [0, 2, 4]


@pytest.mark.slow  # the whole evaluation on two clips (790 s on the busy baseline)
@needs_demo
def test_evaluation_on_two_clips_fills_every_column(pipe):
    settings = EvalSettings(num_clips=2, num_inference_steps=STEPS)
    results = {
        "base": evaluate_pipeline(PusaPipeline.from_model("pusa-tiny", lora=None), settings),
        "VTA": evaluate_pipeline(pipe, settings, lora_alpha=1.4),
    }
    for result in results.values():
        assert result["num_clips"] == 2 and len(result["clips"]) == 2
        metrics = result["metrics"]
        assert set(metrics) == {key for key, _, _ in METRICS}
        # Two clips (motions "left" and "right") cover every metric: straight motions, no bounce.
        assert all(not math.isnan(value) for value in metrics.values()), metrics
    table = format_table({name: r["metrics"] for name, r in results.items()})
    assert table.splitlines()[0] == "| metric | base | VTA |"


@pytest.mark.slow  # generates through the CLI and the studio
@needs_demo
def test_cli_and_studio_default_to_the_shipped_model(tmp_path):
    from pusa.app import serve
    from pusa.main import main
    from pusa.video import read_video

    defaults = model_defaults("pusa-tiny")
    studio_model = serve.add_serve_arguments(argparse.ArgumentParser()).parse_args([]).model
    assert serve.defaults_for(studio_model) == defaults
    out = tmp_path / "t2v.mp4"
    assert (
        main(
            ["generate", "t2v", "-p", "a red circle slides to the left", "--steps", "2", "-q", "-o", str(out)]
        )
        == 0
    )
    video, _ = read_video(out)
    assert video.shape == (defaults.num_frames, defaults.height, defaults.width, 3)  # the model's native clip
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["model"] == "pusa-tiny" and settings["lora"].endswith("pusa_tiny_lora.safetensors")
    assert (
        main(["generate", "t2v", "-p", "x", "--steps", "2", "-q", "--no-lora", "-o", str(tmp_path / "b.mp4")])
        == 0
    )
    base = json.loads((tmp_path / "b.json").read_text())
    assert base["model"] == "pusa-tiny (base, no LoRA)" and base["lora"] is None


@pytest.mark.slow  # an evaluation run
@needs_demo
def test_evaluation_scores_the_models_own_alpha_by_default():
    from pusa.train.evaluate import evaluate_demo

    settings = EvalSettings(num_clips=1, num_inference_steps=1, tasks=("t2v",))
    results = evaluate_demo(settings=settings, include_base=False, progress=False)
    alpha = model_defaults("pusa-tiny").lora_alpha
    assert list(results) == [f"VTA alpha {alpha}"]
    assert results[f"VTA alpha {alpha}"]["clips"][0]["t2v"]["color"] is not None
    assert list(evaluate_demo(settings=settings, lora_alphas=[], progress=False)) == ["base"]


@pytest.mark.slow  # an evaluation run
@needs_demo
def test_a_folder_without_lora_is_scored_as_a_base_model(tmp_path):
    """A run exported before its VTA stage has no LoRA: the base column alone, and asking for alphas is
    refused before any clip runs (it used to fail after scoring the whole base column)."""
    from pusa.train.evaluate import evaluate_demo

    folder = tmp_path / "base-only"
    shutil.copytree(PUSA_TINY_DIR, folder)
    (folder / "pusa_tiny_lora.safetensors").unlink()
    manifest = json.loads((folder / "pusa_model.json").read_text())
    (folder / "pusa_model.json").write_text(json.dumps({**manifest, "lora": None}))
    settings = EvalSettings(num_clips=1, num_inference_steps=1, tasks=("t2v",))
    assert list(evaluate_demo(folder, settings, progress=False)) == ["base"]
    with pytest.raises(ValueError, match=r"ships no LoRA .*; drop --alphas"):
        evaluate_demo(folder, settings, lora_alphas=[1.0], progress=False)
    with pytest.raises(ValueError, match="only the base model to score"):
        evaluate_demo(folder, settings, include_base=False, progress=False)


@pytest.mark.slow  # the demo evaluation end to end
@needs_demo
def test_eval_demo_command_prints_the_table_and_writes_what_it_used(tmp_path, capsys):
    from pusa.main import main

    out = tmp_path / "eval.json"
    args = [
        "eval",
        "demo",
        "--num-clips",
        "1",
        "--steps",
        "1",
        "--tasks",
        "t2v",
        "--shift",
        "7",
        "--cfg",
        "2",
    ]
    assert main([*args, "--alphas", "1.2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| metric | base | VTA alpha 1.2 |" in table and "| T2V colour accuracy |" in table
    results = json.loads(out.read_text())
    assert list(results) == ["base", "VTA alpha 1.2"]
    used = results["VTA alpha 1.2"]["settings"]
    assert (used["shift"], used["cfg"], used["num_inference_steps"], used["lora_alpha"]) == (7.0, 2.0, 1, 1.2)
    assert used["tasks"] == ["t2v"] and results["base"]["settings"]["lora_alpha"] is None
    assert main([*args, "--tasks", "t2v,dance"]) == 2
    assert "--tasks='t2v,dance': ['dance'] are not tasks" in capsys.readouterr().err


@pytest.mark.slow  # transition and long-video rows generated and scored
@needs_demo
def test_the_transition_and_long_video_rows_run_on_a_small_subset(pipe):
    settings = EvalSettings(num_clips=2, num_inference_steps=1, tasks=("transition", "long"))
    result = evaluate_pipeline(pipe, settings)
    metrics = result["metrics"]
    for key in (
        "tr_both",
        "tr_pos_err",
        "long_jump",
        "long_vel",
        "long_bg_drift",
        "long_obj_drift",
        "long_kept",
    ):
        assert not math.isnan(metrics[key]), key
    assert 0 <= metrics["tr_both"] <= 100 and 0 <= metrics["long_kept"] <= 100
    clip = result["clips"][0]
    assert clip["transition"]["arrival"] != clip["transition"]["start"] or clip["transition"]["start"] is None
    assert len(clip["long"]["chunks_kept"]) == 4  # four chunks by default
    assert "long video: background colour drift" in format_table({"VTA": metrics})


@pytest.mark.slow  # an evaluation run at several lengths
@needs_demo
def test_eval_scores_other_clip_lengths_in_their_own_columns(capsys, tmp_path):
    from pusa.main import main

    args = [
        "eval",
        "demo",
        "--num-clips",
        "1",
        "--steps",
        "1",
        "--tasks",
        "i2v",
        "--no-base",
        "--frames",
        "17,21",
    ]
    assert main(args) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| metric"))
    assert header.endswith("@17 | VTA alpha 0.6 @21 |"), header
    assert main([*args[:-1], "18"]) == 2
    assert "--frames='18': [18] are not clip lengths" in capsys.readouterr().err
