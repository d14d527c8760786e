"""The Pusa LoRA: key styles, exact alpha (W' = W + alpha * B @ A, no accumulation), clear errors."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import TINY_DIT
from pusa.model import PusaTransformer3DModel
from pusa.weights.checkpoints import CheckpointError
from pusa.weights.lora import (
    LORA_ALPHA_MAX,
    LORA_ALPHA_MIN,
    LoraFuser,
    LoraWeights,
    load_lora,
    save_lora_original,
    to_original_lora_keys,
    validate_lora_alpha,
)

RANK = 4
# Pusa's targets in every block, Wan's original naming -> diffusers naming, with [out, in] of the tiny model.
TARGETS = {
    "self_attn.q": ("attn1.to_q", 24, 24),
    "self_attn.k": ("attn1.to_k", 24, 24),
    "self_attn.v": ("attn1.to_v", 24, 24),
    "self_attn.o": ("attn1.to_out.0", 24, 24),
    "cross_attn.q": ("attn2.to_q", 24, 24),
    "cross_attn.k": ("attn2.to_k", 24, 24),
    "cross_attn.v": ("attn2.to_v", 24, 24),
    "cross_attn.o": ("attn2.to_out.0", 24, 24),
    "ffn.0": ("ffn.net.0.proj", 32, 24),
    "ffn.2": ("ffn.net.2", 24, 32),
}


def tiny_dit(dtype: torch.dtype = torch.float32) -> PusaTransformer3DModel:
    torch.manual_seed(0)
    return PusaTransformer3DModel(**TINY_DIT).to(dtype).eval()


def trained_lora() -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """(block, original module) -> (A = down [r, in], B = up [out, r])."""
    generator = torch.Generator().manual_seed(3)
    return {
        (block, original): (
            torch.randn(RANK, fan_in, generator=generator) * 0.1,
            torch.randn(fan_out, RANK, generator=generator) * 0.1,
        )
        for block in range(TINY_DIT["num_layers"])
        for original, (_, fan_out, fan_in) in TARGETS.items()
    }


def peft_original_keys(lora, prefix: str = "", adapter: str = ".default") -> dict[str, torch.Tensor]:
    state = {}
    for (block, original), (down, up) in lora.items():
        state[f"{prefix}blocks.{block}.{original}.lora_A{adapter}.weight"] = down
        state[f"{prefix}blocks.{block}.{original}.lora_B{adapter}.weight"] = up
    return state


def up_down_keys(lora, alpha: float | None = None) -> dict[str, torch.Tensor]:
    state = {}
    for (block, original), (down, up) in lora.items():
        module = f"diffusion_model.blocks.{block}.{original}"
        state[f"{module}.lora_down.weight"] = down
        state[f"{module}.lora_up.weight"] = up
        if alpha is not None:
            state[f"{module}.alpha"] = torch.tensor(alpha)
    return state


def diffusers_keys(lora, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    state = {}
    for (block, original), (down, up) in lora.items():
        module = f"{prefix}blocks.{block}.{TARGETS[original][0]}"
        state[f"{module}.lora_A.weight"] = down
        state[f"{module}.lora_B.weight"] = up
    return state


def write(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def dit_inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 4, 3, 4, 4, generator=generator).to(dtype),
        "timestep": torch.tensor([[1000.0, 500.0, 0.0]]),
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=generator).to(dtype),
    }


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.fixture
def pusa_pt(tmp_path) -> Path:
    return write(peft_original_keys(trained_lora()), tmp_path / "pusa_v1.pt")


def test_load_lora_maps_original_names_to_diffusers(pusa_pt):
    lora = load_lora(pusa_pt)
    assert isinstance(lora, LoraWeights) and lora.source == str(pusa_pt)
    assert len(lora.modules) == 2 * len(TARGETS)
    down, up = lora.modules["blocks.1.attn2.to_out.0"]
    assert torch.equal(down, trained_lora()[(1, "cross_attn.o")][0])
    assert torch.equal(up, trained_lora()[(1, "cross_attn.o")][1])
    assert lora.file_key("blocks.0.ffn.net.0.proj") == "blocks.0.ffn.0.lora_A.default.weight"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_changing_alpha_never_accumulates(pusa_pt, dtype):
    lora = load_lora(pusa_pt)
    model = tiny_dit(dtype)
    fresh = copy.deepcopy(model)
    fuser = LoraFuser(model, lora)
    fuser.set_alpha(1.4)
    fuser.set_alpha(1.5)
    LoraFuser(fresh, lora).set_alpha(1.5)
    assert fuser.alpha == 1.5
    assert states_equal(model, fresh)
    with torch.no_grad():
        assert torch.equal(model(**dit_inputs(dtype)).sample, fresh(**dit_inputs(dtype)).sample)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alpha_one_is_the_trained_merge(pusa_pt, dtype):
    model = tiny_dit(dtype)
    base = copy.deepcopy(model)
    LoraFuser(model, load_lora(pusa_pt)).set_alpha(1.0)
    for (block, original), (down, up) in trained_lora().items():
        name = f"blocks.{block}.{TARGETS[original][0]}"
        weight = model.get_submodule(name).weight
        pristine = base.get_submodule(name).weight
        assert torch.equal(weight, (pristine.float() + up @ down).to(dtype)), name
    # Nothing but the targets moved.
    targets = {f"blocks.{b}.{TARGETS[o][0]}.weight" for b, o in trained_lora()}
    base_state = base.state_dict()
    for key, value in model.state_dict().items():
        if key not in targets:
            assert torch.equal(value, base_state[key]), key


def test_every_key_style_fuses_identically(tmp_path, pusa_pt):
    lora = trained_lora()
    files = [
        pusa_pt,
        write(
            peft_original_keys(lora, prefix="diffusion_model.", adapter=""), tmp_path / "prefixed.safetensors"
        ),
        write(up_down_keys(lora), tmp_path / "up_down.safetensors"),
        write(diffusers_keys(lora), tmp_path / "diffusers.safetensors"),
        write(diffusers_keys(lora, prefix=""), tmp_path / "diffusers_bare.pt"),
    ]
    fused = []
    for path in files:
        model = tiny_dit()
        LoraFuser(model, load_lora(path)).set_alpha(1.4)
        fused.append(model)
    for model in fused[1:]:
        assert states_equal(model, fused[0])


def test_alpha_key_scales_by_alpha_over_rank(tmp_path):
    lora = trained_lora()
    plain = tiny_dit()
    LoraFuser(plain, load_lora(write(up_down_keys(lora), tmp_path / "plain.safetensors"))).set_alpha(0.5)
    halved = tiny_dit()
    alpha_file = write(up_down_keys(lora, alpha=RANK / 2), tmp_path / "alpha.safetensors")
    LoraFuser(halved, load_lora(alpha_file)).set_alpha(1.0)
    assert states_equal(plain, halved)
    base = tiny_dit()
    down, up = lora[(0, "self_attn.q")]
    delta = halved.blocks[0].attn1.to_q.weight - base.blocks[0].attn1.to_q.weight
    torch.testing.assert_close(delta, 0.5 * (up @ down))


def test_remove_restores_pristine_weights_bit_for_bit(pusa_pt):
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_dit(dtype)
        base = copy.deepcopy(model)
        fuser = LoraFuser(model, load_lora(pusa_pt), pristine_device="cpu")
        fuser.set_alpha(3.7)
        assert not states_equal(model, base)
        fuser.remove()
        assert states_equal(model, base)
        assert fuser.alpha == 0.0
        with pytest.raises(RuntimeError, match="removed"):
            fuser.set_alpha(1.0)


def test_lora_matching_nothing_names_the_file(tmp_path):
    path = write(
        {"foo.bar.lora_A.weight": torch.zeros(2, 3), "foo.bar.lora_B.weight": torch.zeros(3, 2)},
        tmp_path / "x.pt",
    )
    with pytest.raises(CheckpointError) as error:
        LoraFuser(tiny_dit(), load_lora(path))
    message = str(error.value)
    assert f"LoRA file {path}: none of its 1 keys match the model" in message
    assert "foo.bar.lora_A.weight" in message and "blocks.0.self_attn.q.lora_A.weight" in message


def test_lora_shape_mismatch_names_the_key(tmp_path):
    state = peft_original_keys(trained_lora())
    state["blocks.1.ffn.2.lora_A.default.weight"] = torch.zeros(RANK, 24)  # ffn.2 takes 32 inputs
    path = write(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as error:
        LoraFuser(tiny_dit(), load_lora(path))
    message = str(error.value)
    assert "blocks.1.ffn.2.lora_A.default.weight" in message
    assert "[24, 24]" in message and "blocks.1.ffn.net.2.weight is [24, 32]" in message


def test_lora_key_missing_from_the_model_is_named(tmp_path):
    state = peft_original_keys(trained_lora())
    state["blocks.7.self_attn.q.lora_A.default.weight"] = torch.zeros(RANK, 24)
    state["blocks.7.self_attn.q.lora_B.default.weight"] = torch.zeros(24, RANK)
    with pytest.raises(
        CheckpointError, match=r"blocks\.7\.self_attn\.q\.lora_A\.default\.weight targets blocks\.7"
    ):
        LoraFuser(tiny_dit(), load_lora(write(state, tmp_path / "extra.pt")))


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        (
            {"blocks.0.self_attn.q.weight": torch.zeros(24, 24)},
            "key blocks.0.self_attn.q.weight is not a LoRA weight",
        ),
        ({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(4, 24)}, "has no matching up matrix"),
        (
            {
                "blocks.0.ffn.0.lora_down.weight": torch.zeros(4, 24),
                "blocks.0.ffn.0.lora_up.weight": torch.zeros(32, 2),
            },
            "disagree on the rank",
        ),
    ],
)
def test_malformed_lora_files_name_the_key(tmp_path, state, fragment):
    path = write(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as error:
        load_lora(path)
    assert fragment in str(error.value)


def test_missing_lora_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lora(tmp_path / "pusa_v1.pt")


def test_save_lora_original_round_trips(tmp_path, pusa_pt):
    lora = load_lora(pusa_pt)
    assert set(to_original_lora_keys(lora)) == set(peft_original_keys(trained_lora()))
    for name in ("again.pt", "again.safetensors"):
        save_lora_original(lora, tmp_path / name)
        again = load_lora(tmp_path / name)
        assert again.modules.keys() == lora.modules.keys()
        for module, (down, up) in lora.modules.items():
            assert torch.equal(again.modules[module][0], down) and torch.equal(again.modules[module][1], up)


@pytest.mark.parametrize("alpha", [0.05, 5.5, math.nan, "1.4x", True])
def test_validate_lora_alpha_rejects(alpha):
    with pytest.raises(ValueError) as error:
        validate_lora_alpha(alpha)
    message = str(error.value)
    assert "lora_alpha" in message and repr(alpha) in message
    assert f"between {LORA_ALPHA_MIN} and {LORA_ALPHA_MAX}" in message


def test_validate_lora_alpha_accepts_the_range():
    assert validate_lora_alpha(0.1) == 0.1
    assert validate_lora_alpha("1.4") == 1.4
    assert validate_lora_alpha(5) == 5.0


def test_fuser_rejects_negative_alpha(pusa_pt):
    with pytest.raises(ValueError, match="alpha"):
        LoraFuser(tiny_dit(), load_lora(pusa_pt)).set_alpha(-1.0)


def test_lightx2v_style_diff_keys_are_fused_with_alpha(tmp_path):
    """LightX2V-style files carry full `.diff` / `.diff_b` deltas beside lora_up/lora_down."""
    lora = trained_lora()
    state = up_down_keys(lora)  # already prefixed with diffusion_model.
    generator = torch.Generator().manual_seed(5)
    bias_delta = torch.randn(24, generator=generator)
    norm_delta = torch.randn(24, generator=generator)
    state["diffusion_model.blocks.0.cross_attn.k.diff_b"] = bias_delta
    state["diffusion_model.blocks.1.norm3.diff"] = norm_delta  # Wan's norm3 is diffusers' norm2
    model = tiny_dit()
    reference = copy.deepcopy(model)
    fuser = LoraFuser(model, load_lora(write(state, tmp_path / "lightx2v.safetensors")))
    fuser.set_alpha(0.5)
    assert torch.allclose(
        model.blocks[0].attn2.to_k.bias, reference.blocks[0].attn2.to_k.bias + 0.5 * bias_delta
    )
    assert torch.allclose(model.blocks[1].norm2.weight, reference.blocks[1].norm2.weight + 0.5 * norm_delta)
    fuser.set_alpha(1.5)
    fuser.set_alpha(0.5)
    assert torch.equal(
        model.blocks[0].attn2.to_k.bias, (reference.blocks[0].attn2.to_k.bias + 0.5 * bias_delta)
    )
    fuser.remove()
    assert states_equal(model, reference)


def test_diff_for_a_missing_parameter_is_named(tmp_path):
    state = peft_original_keys(trained_lora())
    state["blocks.0.norm1.diff"] = torch.ones(24)  # norm1 has no affine weight in Wan
    with pytest.raises(CheckpointError, match=r"targets blocks\.0\.norm1\.weight, which has nothing"):
        LoraFuser(tiny_dit(), load_lora(write(state, tmp_path / "bad.safetensors")))
