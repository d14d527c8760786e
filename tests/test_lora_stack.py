"""LoRA stacks: each format's scaling against a hand-merged weight, any number of LoRAs per DiT or per
expert, fused from the pristine weights (a change of one strength == a fresh load, bit for bit), the
syntax and its named errors, the folder's own stack, and the sidecar's record. Tiny real classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import raises_input_error
from pusa.cli import main
from pusa.lora_specs import LoraSpec, check_stack, parse_loras
from pusa.pipeline import PusaPipeline
from pusa.weights.registry import tiny_random_a14b_components
from pusa.weights.stack import StackFuser, load_lora_cached
from pusa.weights.wan_original import write_two_expert_folder

SMALL = dict(width=32, height=32, num_frames=5, num_inference_steps=2, seed=5)
DIM, FFN = 32, 64  # tiny DiT: 2 heads of 16, ffn 64
RANK = 2


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def write_peft(path: Path, seed: int = 0) -> Path:
    """Pusa / PEFT style (pusa_v1.pt's keys): delta B @ A, no rank division."""
    state = {}
    for block in range(2):
        state[f"blocks.{block}.self_attn.q.lora_A.default.weight"] = _randn(RANK, DIM, seed=seed + block)
        state[f"blocks.{block}.self_attn.q.lora_B.default.weight"] = _randn(DIM, RANK, seed=seed + 10 + block)
    save_file(state, str(path))
    return path


def write_kohya(path: Path, alpha: float = 4.0, seed: int = 100) -> Path:
    """LightX2V / kohya style: delta (alpha / rank) * up @ down."""
    state = {
        "diffusion_model.blocks.0.ffn.0.lora_down.weight": _randn(RANK, DIM, seed=seed),
        "diffusion_model.blocks.0.ffn.0.lora_up.weight": _randn(FFN, RANK, seed=seed + 1),
        "diffusion_model.blocks.0.ffn.0.alpha": torch.tensor(alpha),
        "diffusion_model.blocks.1.self_attn.q.lora_down.weight": _randn(RANK, DIM, seed=seed + 2),
        "diffusion_model.blocks.1.self_attn.q.lora_up.weight": _randn(DIM, RANK, seed=seed + 3),
        "diffusion_model.blocks.1.self_attn.q.alpha": torch.tensor(alpha),
    }
    save_file(state, str(path))
    return path


def write_diff(path: Path, seed: int = 200) -> Path:
    """Full deltas: `.diff` (weight) and `.diff_b` (bias), added as strength * diff."""
    state = {
        "diffusion_model.blocks.0.self_attn.q.diff": _randn(DIM, DIM, seed=seed),
        "diffusion_model.blocks.0.self_attn.q.diff_b": _randn(DIM, seed=seed + 1),
        "diffusion_model.blocks.1.self_attn.norm_q.diff": _randn(DIM, seed=seed + 2),
    }
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("loras")
    return {
        "peft": write_peft(base / "pusa.safetensors"),
        "kohya": write_kohya(base / "lightx2v_4step.safetensors"),
        "diff": write_diff(base / "style.safetensors"),
    }


def _dit(seed: int = 0) -> torch.nn.Module:
    return tiny_random_a14b_components(seed)["transformer"]


# ---------------------------------------------------------------- scaling per format
def test_each_format_scales_as_defined(files):
    from safetensors.torch import load_file

    a = 1.3
    for kind in ("peft", "kohya", "diff"):
        model, pristine = _dit(), _dit().state_dict()
        StackFuser(model).fuse([(load_lora_cached(files[kind]), a)])
        state, raw = model.state_dict(), load_file(str(files[kind]))
        expected = {}
        if kind == "peft":
            for b in range(2):
                A, B = (
                    raw[f"blocks.{b}.self_attn.q.lora_A.default.weight"],
                    raw[f"blocks.{b}.self_attn.q.lora_B.default.weight"],
                )
                expected[f"blocks.{b}.attn1.to_q.weight"] = (
                    pristine[f"blocks.{b}.attn1.to_q.weight"] + a * B @ A
                )
        elif kind == "kohya":
            p = "diffusion_model.blocks"
            for key, ours in (("0.ffn.0", "0.ffn.net.0.proj"), ("1.self_attn.q", "1.attn1.to_q")):
                up, down, alpha = (
                    raw[f"{p}.{key}.lora_up.weight"],
                    raw[f"{p}.{key}.lora_down.weight"],
                    raw[f"{p}.{key}.alpha"],
                )
                expected[f"blocks.{ours}.weight"] = (
                    pristine[f"blocks.{ours}.weight"] + a * (alpha / RANK) * up @ down
                )
        else:
            p = "diffusion_model.blocks"
            expected["blocks.0.attn1.to_q.weight"] = (
                pristine["blocks.0.attn1.to_q.weight"] + a * raw[f"{p}.0.self_attn.q.diff"]
            )
            expected["blocks.0.attn1.to_q.bias"] = (
                pristine["blocks.0.attn1.to_q.bias"] + a * raw[f"{p}.0.self_attn.q.diff_b"]
            )
            expected["blocks.1.attn1.norm_q.weight"] = (
                pristine["blocks.1.attn1.norm_q.weight"] + a * raw[f"{p}.1.self_attn.norm_q.diff"]
            )
        for key, value in state.items():
            if key in expected:
                assert torch.allclose(value, expected[key], atol=1e-5, rtol=1e-6), (kind, key)
                assert not torch.equal(value, pristine[key]), (kind, key)
            else:
                assert torch.equal(value, pristine[key]), (kind, key)  # nothing else moves


def test_a_stack_changed_one_strength_at_a_time_equals_fresh_loads(files):
    loras = [load_lora_cached(files[k]) for k in ("peft", "kohya", "diff")]
    model = _dit()
    fuser = StackFuser(model)
    sequence = [(1.0, 1.0, 1.0), (1.5, 1.0, 1.0), (1.5, 0.25, 1.0), (1.5, 0.25, 0.0), (0.7, 0.25, 2.0)]
    for strengths in sequence:
        fuser.fuse(list(zip(loras, strengths, strict=True)))
        fresh = _dit()
        StackFuser(fresh).fuse(list(zip(loras, strengths, strict=True)))
        for key, value in fresh.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (strengths, key)
    fuser.fuse([])  # the empty stack restores every weight exactly
    for key, value in _dit().state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_an_adapter_stack_equals_the_fused_stack_and_fresh_adapters(files, tmp_path):
    """The unfused path: one PEFT adapter per LoRA (kohya's alpha/rank folded in), strengths by
    set_adapters; each targeted Linear gives what the fused weights give (float rounding apart), a strength
    changed back and forth gives what fresh adapters give bit for bit, and the DiT's weights never move."""
    from pusa.weights.checkpoints import CheckpointError
    from pusa.weights.stack import AdapterStack

    loras = [
        load_lora_cached(p)
        for p in (files["peft"], files["kohya"], write_peft(tmp_path / "b.safetensors", 7))
    ]
    targets = ["blocks.0.attn1.to_q", "blocks.1.attn1.to_q", "blocks.0.ffn.net.0.proj"]
    model, pristine = _dit(), _dit().state_dict()
    stack = AdapterStack(model)
    x = {name: _randn(3, _dit().get_submodule(name).in_features, seed=9) for name in targets}

    def outputs(dit):
        with torch.no_grad():
            return {name: dit.get_submodule(name)(x[name]) for name in targets}

    for strengths in [(1.0, 1.0, 1.0), (1.5, 1.0, 1.0), (1.5, 0.25, 1.0), (1.5, 0.25, 0.0), (1.0, 1.0, 1.0)]:
        assert stack.fuse(list(zip(loras, strengths, strict=True)))
        got = outputs(model)
        fused = _dit()
        StackFuser(fused).fuse(list(zip(loras, strengths, strict=True)))
        fresh = _dit()
        AdapterStack(fresh).fuse(list(zip(loras, strengths, strict=True)))
        for name, value in got.items():
            assert torch.allclose(value, outputs(fused)[name], atol=1e-5, rtol=1e-5), (strengths, name)
            assert torch.equal(value, outputs(fresh)[name]), (strengths, name)
        base = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
        assert all(torch.equal(base[k], v) for k, v in pristine.items())  # the weights never move
    assert not stack.fuse(list(zip(loras, (1.0, 1.0, 1.0), strict=True)))  # already so: nothing done
    stack.fuse([(loras[1], 0.5)])  # two LoRAs leave the stack: their adapters are deleted
    assert len(stack._adapters) == 1
    stack.fuse([])
    plain = _dit()
    for name, value in outputs(model).items():
        assert torch.equal(value, outputs(plain)[name]), name
    with pytest.raises(CheckpointError, match=r"style.safetensors has full-tensor .diff deltas.*fused"):
        stack.fuse([(load_lora_cached(files["diff"]), 1.0)])


# ---------------------------------------------------------------- syntax
def test_syntax():
    assert parse_loras("a.safetensors") == (LoraSpec("a.safetensors"),)
    assert parse_loras("dir/a.pt:1.5@high\nb.pt@low") == (
        LoraSpec("dir/a.pt", 1.5, "high"),
        LoraSpec("b.pt", None, "low"),
    )
    assert parse_loras(["p.safetensors:1.5;1.4"]) == (
        LoraSpec("p.safetensors", 1.5, "high"),
        LoraSpec("p.safetensors", 1.4, "low"),
    )
    assert parse_loras([{"file": "x.pt", "strength": 2, "expert": "all"}]) == (LoraSpec("x.pt", 2.0),)
    for bad, problem in (
        ("a.pt@middle", "names expert 'middle'"),
        ("a.pt:strong", "has strength 'strong'"),
        ("a.pt:6", "has strength '6'"),
        ("a.pt:1;2;3", "has 3 strengths"),
        ("a.pt:1;2@low", "binds A;B to @low"),
        (":1.0", "names no file"),
    ):
        with raises_input_error("loras") as caught:
            parse_loras(bad)
        assert problem in str(caught.value)  # which part of the item is wrong
    with raises_input_error("loras") as caught:
        check_stack(parse_loras("a.pt:1;2"), num_experts=1, files=False)
    assert "one DiT" in str(caught.value)  # two strengths on a one-expert model
    with raises_input_error("loras"):
        check_stack(parse_loras("/no/such.safetensors"), num_experts=2)


# ---------------------------------------------------------------- on the pipeline
@pytest.fixture(scope="module")
def pipe2() -> PusaPipeline:
    return PusaPipeline.from_preset("tiny-random-a14b")


def test_per_expert_strengths_apply_to_their_expert_only(pipe2, files):
    high0 = {k: v.clone() for k, v in pipe2.transformer.state_dict().items()}
    low0 = {k: v.clone() for k, v in pipe2.transformer_2.state_dict().items()}
    key = "blocks.0.attn1.to_q.weight"
    lora = load_lora_cached(files["peft"])
    down, up = lora.modules["blocks.0.attn1.to_q"]
    out = pipe2.text_to_video("a fox", loras=f"{files['peft']}:1.5;1.4", **SMALL)
    assert torch.equal(pipe2.transformer.state_dict()[key], high0[key] + 1.5 * (up @ down))
    assert torch.equal(pipe2.transformer_2.state_dict()[key], low0[key] + 1.4 * (up @ down))
    stack = out.settings["lora_stack"]
    assert [(e["strength"], e["expert"]) for e in stack] == [(1.5, "high"), (1.4, "low")]
    assert stack[0]["path"] == str(files["peft"].resolve()) and len(stack[0]["sha256"]) == 64

    pipe2.text_to_video("a fox", loras=f"{files['kohya']}:1.0@high", **SMALL)
    assert torch.equal(pipe2.transformer_2.state_dict()[key], low0[key])  # low: back to pristine
    for name, value in pipe2.transformer_2.state_dict().items():
        assert torch.equal(value, low0[name]), name
    assert not torch.equal(
        pipe2.transformer.state_dict()["blocks.0.ffn.net.0.proj.weight"],
        high0["blocks.0.ffn.net.0.proj.weight"],
    )
    pipe2.text_to_video("a fox", **SMALL)  # no stack: every weight pristine again
    for name, value in pipe2.transformer.state_dict().items():
        assert torch.equal(value, high0[name]), name


def test_stack_videos_equal_fresh_pipelines(files):
    stack = f"{files['peft']}:1.2\n{files['kohya']}:0.5@low\n{files['diff']}:0.3@high"
    changed = PusaPipeline.from_preset("tiny-random-a14b")
    changed.text_to_video("a fox", loras=stack.replace(":0.5@low", ":2.0@low"), **SMALL)
    video = changed.text_to_video("a fox", loras=stack, **SMALL).frames
    fresh = PusaPipeline.from_preset("tiny-random-a14b").text_to_video("a fox", loras=stack, **SMALL).frames
    assert np.array_equal(video, fresh)


def test_a_lora_matching_nothing_names_the_file(pipe2, tmp_path):
    bad = tmp_path / "other_model.safetensors"
    save_file(
        {"unet.down.0.lora_A.weight": torch.zeros(2, 4), "unet.down.0.lora_B.weight": torch.zeros(4, 2)},
        str(bad),
    )
    with raises_input_error("loras") as caught:
        pipe2.text_to_video("a fox", loras=str(bad), **SMALL)
    assert "other_model.safetensors" in str(caught.value)  # the file, when several are stacked


def test_folder_manifest_names_its_stack_and_cli_overrides_it(files, tmp_path, capsys):
    import shutil

    folder = tmp_path / "wan22"
    folder.mkdir()
    shutil.copy(files["peft"], folder / "high_noise_pusa.safetensors")
    shutil.copy(files["peft"], folder / "low_noise_pusa.safetensors")
    manifest = {"loras": [
        {"file": "high_noise_pusa.safetensors", "strength": 1.5, "expert": "high"},
        {"file": "low_noise_pusa.safetensors", "strength": 1.4, "expert": "low"},
    ]}  # fmt: skip
    write_two_expert_folder(folder, "wan-original", manifest=manifest)
    common = ["t2v", "--model", str(folder), "-p", "a fox", "--frames", "5", "--width", "32", "--height", "32",
              "--steps", "2", "--seed", "1", "-q"]  # fmt: skip
    out = tmp_path / "own.mp4"
    assert main(["generate", *common, "-o", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert [(Path(e["path"]).name, e["strength"], e["expert"]) for e in record["lora_stack"]] == [
        ("high_noise_pusa.safetensors", 1.5, "high"),
        ("low_noise_pusa.safetensors", 1.4, "low"),
    ]
    out2 = tmp_path / "flags.mp4"
    flags = ["--lora", f"{files['peft']}:0.5@high", "--lora", f"{files['kohya']}", "--lora-alpha", "0.8"]
    assert main(["generate", *common, *flags, "-o", str(out2)]) == 0
    record = json.loads(out2.with_suffix(".json").read_text())
    assert [(Path(e["path"]).name, e["strength"], e["expert"]) for e in record["lora_stack"]] == [
        ("pusa.safetensors", 0.5, "high"),
        ("lightx2v_4step.safetensors", 0.8, "all"),
    ]
    capsys.readouterr()
    assert main(["generate", *common, "--lora", f"{files['peft']}@middle", "-o", str(out2)]) == 2
    assert "--lora=" in capsys.readouterr().err
    assert main(["generate", *common, "--lora", str(tmp_path / "none.safetensors"), "-o", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "--lora=" in err and "is not a file" in err


def test_a_lora_that_does_not_fit_a_folder_is_named_from_the_headers(files, tmp_path, capsys):
    folder = write_two_expert_folder(tmp_path / "wan22", "diffusers")
    bad = tmp_path / "sdxl.safetensors"
    save_file(
        {"unet.down.0.lora_A.weight": torch.zeros(2, 4), "unet.down.0.lora_B.weight": torch.zeros(4, 2)},
        str(bad),
    )
    deep = tmp_path / "deep.safetensors"
    one = {"lora_A.weight": torch.zeros(2, DIM), "lora_B.weight": torch.zeros(DIM, 2)}
    save_file({f"blocks.{b}.self_attn.q.{k}": v.clone() for b in (0, 7) for k, v in one.items()}, str(deep))
    common = [
        "t2v",
        "--model",
        str(folder),
        "-p",
        "x",
        "--frames",
        "5",
        "--width",
        "32",
        "--height",
        "32",
        "-q",
    ]
    assert main(["generate", *common, "--lora", f"{bad}@low", "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert (
        "--lora=" in err
        and "sdxl.safetensors" in err
        and "matches nothing in the low-noise expert (transformer_2/)" in err
    )
    assert main(["generate", *common, "--lora", str(deep), "-o", str(tmp_path / "x.mp4")]) == 2
    assert "gives blocks.7.attn1.to_q.weight a delta of shape [32, 32]" in capsys.readouterr().err
    with raises_input_error("lora"):
        PusaPipeline.from_pretrained(folder, lora=f"{bad}@high")
    original = write_two_expert_folder(tmp_path / "orig", "wan-original")
    PusaPipeline.from_pretrained(original, lora=f"{files['kohya']}:1.0@low")  # Wan's names fit, converted
