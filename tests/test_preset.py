"""The 4-step preset end to end: the CLI on a one-expert model (pusa-tiny, no speed LoRA declared: a
warning) and on a two-expert folder whose pusa_model.json names its Pusa LoRAs and its speed LoRA; the
studio's API on the two-expert model with the preset, a LoRA stack and a boundary. DiT forwards counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import raises_input_error
from pusa.cli import main
from pusa.request import GenerationRequest, validate
from pusa.weights.registry import model_defaults, model_limits
from pusa.weights.wan_original import write_two_expert_folder
from test_lora_stack import write_kohya, write_peft

# gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
TINY = ["--frames", "5", "--width", "32", "--height", "32", "--seed", "2", "-q"]


@pytest.fixture(scope="module")
def wan22(tmp_path_factory) -> Path:
    """A two-expert folder (Wan2.2's original layout) with Pusa's LoRAs and a 4-step speed LoRA named."""
    folder = tmp_path_factory.mktemp("wan22") / "Wan2.2-T2V-A14B"
    folder.mkdir()
    write_peft(folder / "high_noise_pusa.safetensors", seed=1)
    write_peft(folder / "low_noise_pusa.safetensors", seed=2)
    write_kohya(folder / "lightx2v_4step.safetensors")
    manifest = {
        "loras": [
            {"file": "high_noise_pusa.safetensors", "strength": 1.5, "expert": "high"},
            {"file": "low_noise_pusa.safetensors", "strength": 1.4, "expert": "low"},
        ],
        "presets": {
            "4-step": {"shift": 5.0, "loras": [{"file": "lightx2v_4step.safetensors", "strength": 1.0}]}
        },
    }
    return write_two_expert_folder(folder, "wan-original", manifest=manifest)


def test_preset_resolves_steps_cfg_shift_before_loading(wan22):
    limits = model_limits(wan22)
    resolved = validate(
        GenerationRequest(task="t2v", prompt="x", cfg=4.0, preset="4-step"), limits, media=False
    )
    assert (resolved.num_inference_steps, resolved.cfg, resolved.shift) == (4, 1.0, 5.0)
    preset = model_defaults(wan22).presets[0]
    assert preset.declared and preset.loras.endswith("lightx2v_4step.safetensors:1")
    with raises_input_error("preset", "2-step"):
        validate(GenerationRequest(task="t2v", prompt="x", preset="2-step"), limits, media=False)


def _record(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def test_cli_preset_on_a_two_expert_folder(wan22, tmp_path):
    preset, full = tmp_path / "preset.mp4", tmp_path / "full.mp4"
    assert main(["generate", "t2v", "--model", str(wan22), "-p", "a fox", "--preset", "4-step", *TINY,
                 "-o", str(preset)]) == 0  # fmt: skip
    assert main(["generate", "t2v", "--model", str(wan22), "-p", "a fox", "--steps", "10", *TINY,
                 "-o", str(full)]) == 0  # fmt: skip
    fast, slow = _record(preset), _record(full)
    assert (fast["preset"], fast["num_inference_steps"], fast["cfg"], fast["shift"]) == (
        "4-step",
        4,
        1.0,
        5.0,
    )
    assert fast["expert_steps"] == ["high", "high", "low", "low"] and fast["warnings"] == []
    assert [(Path(e["path"]).name, e["strength"], e["expert"]) for e in fast["lora_stack"]] == [
        ("high_noise_pusa.safetensors", 1.5, "high"),
        ("low_noise_pusa.safetensors", 1.4, "low"),
        ("lightx2v_4step.safetensors", 1.0, "all"),
    ]
    assert len(slow["lora_stack"]) == 2 and slow["preset"] is None
    assert (fast["dit_forwards"], slow["dit_forwards"]) == (4, 20)  # 5x fewer DiT forwards


def test_cli_lora_mode_adapter_on_a_two_expert_folder(wan22, tmp_path):
    """--lora-mode adapter: the folder's stack and the preset's speed LoRA as PEFT adapters, recorded; the
    memory plan's tier, inactive expert and reason are in the record too."""
    out = tmp_path / "adapter.mp4"
    assert main(["generate", "t2v", "--model", str(wan22), "-p", "a fox", "--preset", "4-step", "--lora-mode",
                 "adapter", "--memory", "balanced", *TINY, "-o", str(out)]) == 0  # fmt: skip
    record = _record(out)
    assert record["lora_mode"] == "adapter" and len(record["lora_stack"]) == 3
    acceleration = record["acceleration"]
    assert (
        acceleration["memory_tier"] == "balanced" and acceleration["inactive_expert"] == "pinned host memory"
    )
    assert acceleration["memory_reason"].startswith("asked for; ")


def test_cli_preset_on_a_one_expert_model_warns_without_a_speed_lora(tmp_path, capsys):
    out = tmp_path / "tiny.mp4"
    assert main(["generate", "t2v", "-p", "a red circle", "--preset", "4-step", *TINY, "-o", str(out)]) == 0
    assert "--preset='4-step' runs without a speed LoRA" in capsys.readouterr().err
    record = _record(out)
    assert record["dit_forwards"] == 4 and record["expert_steps"] is None and record["cfg"] == 1.0
    assert [Path(e["path"]).name for e in record["lora_stack"]] == ["pusa_tiny_lora.safetensors"]
    with pytest.raises(SystemExit):  # argparse refuses an unknown choice by itself
        main(["generate", "t2v", "-p", "x", "--preset", "8-step", *TINY, "-o", str(out)])
    assert "argument --preset: invalid choice: '8-step'" in capsys.readouterr().err
    assert main(["generate", "t2v", "-p", "x", "--boundary", "1.5", *TINY, "-o", str(out)]) == 2
    assert "--boundary=1.5 is not allowed" in capsys.readouterr().err


def test_api_preset_loras_and_boundary_on_two_experts(wan22, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from helpers import free_port
    from pusa.app.page import build_app, launch_app
    from pusa.pipeline import PusaPipeline
    from pusa.serving.history import History
    from pusa.serving.queue import JobQueue

    history = History(tmp_path / "outputs")
    queue = JobQueue(lambda: PusaPipeline.from_model(wan22), history).start()
    demo = build_app(queue, model_limits(wan22))
    port = free_port()
    launch_app(demo, history, port=port, block=False, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        fast = dict(width=32, height=32, num_frames=5, seed=4)
        _, settings, _ = client.predict("a fox", preset="4-step", api_name="/text_to_video", **fast)
        settings = json.loads(settings)
        assert (settings["preset"], settings["num_inference_steps"], settings["dit_forwards"]) == (
            "4-step",
            4,
            4,
        )
        assert len(settings["lora_stack"]) == 3
        style = shutil.copy(wan22 / "lightx2v_4step.safetensors", tmp_path / "style.safetensors")
        _, settings, _ = client.predict(
            "a fox",
            loras=f"{style}:0.7@low",
            boundary=0.9,
            steps=10,
            cfg=1.0,
            api_name="/text_to_video",
            **fast,
        )
        settings = json.loads(settings)
        assert [(e["strength"], e["expert"]) for e in settings["lora_stack"]] == [(0.7, "low")]
        assert settings["boundary"] == 0.9 and settings["expert_steps"].count("high") == 4
        with pytest.raises(gradio_client.exceptions.AppError, match=r"LoRAs: .* names expert 'middle'"):
            client.predict("a fox", loras=f"{style}@middle", api_name="/text_to_video", **fast)
        # the LoRA panel's rows (API parameters too): per-expert strengths, a blank one = lora_alpha, then
        # the text field's entries; they reach the job as its stack
        high, low = wan22 / "high_noise_pusa.safetensors", wan22 / "low_noise_pusa.safetensors"
        panel = dict(
            lora_file_1=str(high), lora_strength_1=1.5, lora_expert_1="high",
            lora_file_2=str(low), lora_expert_2="low", lora_alpha=1.2, loras=f"{style}:0.3",
        )  # fmt: skip
        _, settings, _ = client.predict("a fox", steps=2, api_name="/text_to_video", **panel, **fast)
        stack = [
            (Path(e["path"]).name, e["strength"], e["expert"]) for e in json.loads(settings)["lora_stack"]
        ]
        assert stack == [
            ("high_noise_pusa.safetensors", 1.5, "high"),
            ("low_noise_pusa.safetensors", 1.2, "low"),
            ("style.safetensors", 0.3, "all"),
        ]
        bad = [
            (dict(lora_strength_2=7), r"LoRA 2 Strength: 7(\.0)? is not allowed; must be a number in 0..5"),
            (dict(lora_expert_1="middle"), r"LoRA 1 Expert: 'middle' is not allowed; choose one of all, high, low"),
        ]  # fmt: skip
        for change, message in bad:
            with pytest.raises(gradio_client.exceptions.AppError, match=message):
                client.predict("a fox", api_name="/text_to_video", **{**panel, **change}, **fast)
    finally:
        demo.close()
        queue.close(10)
