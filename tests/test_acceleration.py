"""Acceleration knobs on the CPU with tiny real models: fused LoRA == PEFT adapter, exact alpha changes,
memory tiers that change nothing but placement, fp8 storage, attention backend, compile, FLOP count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from torch.utils.flop_counter import FlopCounterMode

from helpers import TINY_DIT, raises_input_error
from pusa.model import PusaTransformer3DModel
from pusa.pipeline import PusaPipeline
from pusa.runtime.kernels import (
    apply_attention_backend,
    compile_blocks,
    dit_forward_flops,
    enable_fp8_weights,
    relative_error,
    select_attention_backend,
)
from pusa.runtime.memory import (
    MEMORY_TIERS,
    apply_memory_tier,
    choose_memory_tier,
    component_bytes,
    module_bytes,
    resolve_memory_tier,
    validate_memory_tier,
)
from pusa.runtime.prepare import prepare_for_device
from pusa.weights.lora import (
    PUSA_LORA_TARGETS,
    LoraFuser,
    LoraWeights,
    attach_lora_adapter,
    set_adapter_alpha,
)
from pusa.weights.registry import WAN_14B_TRANSFORMER_CONFIG, tiny_random_components

TARGETS = PUSA_LORA_TARGETS
RANK = 4
GB = 10**9
# Wan2.1-T2V-14B in bf16: DiT 14.29B parameters, umT5-XXL encoder 5.68B, VAE 127M (counted on meta).
WAN_14B_BYTES = {"transformer": 28_576_983_168, "text_encoder": 11_361_820_672, "vae": 253_785_062}
FP8_ERROR_BOUND = 0.05  # relative error of the tiny DiT output with float8 weights vs float32


def tiny_dit() -> PusaTransformer3DModel:
    torch.manual_seed(0)
    return PusaTransformer3DModel(**TINY_DIT).eval()


def random_lora(model: torch.nn.Module, ranks: dict[str, int] | None = None) -> LoraWeights:
    generator = torch.Generator().manual_seed(3)
    named = dict(model.named_modules())
    modules = {}
    for block in range(TINY_DIT["num_layers"]):
        for target in TARGETS:
            name = f"blocks.{block}.{target}"
            rank = (ranks or {}).get(name, RANK)
            linear = named[name]
            down = torch.randn(rank, linear.in_features, generator=generator) * 0.2
            up = torch.randn(linear.out_features, rank, generator=generator) * 0.2
            modules[name] = (down, up)
    return LoraWeights(modules=modules, source="test-lora")


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 3, 8, 8, generator=generator)  # [B, C, F, H, W]
    timestep = torch.tensor([[200.0, 1000.0, 1000.0]])  # I2V-like: frame 0 at 0.2 * t
    text = torch.randn(1, 8, 32, generator=generator)
    return latents, timestep, text


@torch.no_grad()
def forward(model: torch.nn.Module) -> torch.Tensor:
    return model(*inputs(), return_dict=False)[0]


def fused(alpha: float) -> tuple[PusaTransformer3DModel, LoraFuser]:
    model = tiny_dit()
    fuser = LoraFuser(model, random_lora(model))
    fuser.set_alpha(alpha)
    return model, fuser


# ---------------------------------------------------------------- LoRA: fused vs PEFT adapter


@pytest.mark.parametrize("alpha", [1.0, 1.4])
def test_fused_lora_equals_peft_adapter(alpha):
    fused_model, _ = fused(alpha)
    adapter_model = tiny_dit()
    pristine = adapter_model.blocks[0].attn1.to_q.weight.detach().clone()
    attach_lora_adapter(adapter_model, random_lora(adapter_model), alpha)

    layer = adapter_model.blocks[0].attn1.to_q
    assert layer.scaling["pusa"] == pytest.approx(alpha)  # lora_alpha == r: no division by rank
    assert torch.equal(layer.base_layer.weight, pristine)  # unfused: base weights untouched
    torch.testing.assert_close(forward(adapter_model), forward(fused_model), atol=1e-5, rtol=1e-5)


def test_adapter_alpha_change_equals_fresh_adapter():
    switched = tiny_dit()
    attach_lora_adapter(switched, random_lora(switched), 1.4)
    set_adapter_alpha(switched, 1.5)
    fresh = tiny_dit()
    attach_lora_adapter(fresh, random_lora(fresh), 1.5)
    assert torch.equal(forward(switched), forward(fresh))
    fused_model, _ = fused(1.5)
    torch.testing.assert_close(forward(switched), forward(fused_model), atol=1e-5, rtol=1e-5)


def test_adapter_with_mixed_ranks_has_scale_alpha_everywhere():
    ranks = {"blocks.1.ffn.net.2": 2, "blocks.0.attn2.to_v": 6}
    adapter_model = tiny_dit()
    attach_lora_adapter(adapter_model, random_lora(adapter_model, ranks), 1.4)
    for name in ranks:
        assert dict(adapter_model.named_modules())[name].scaling["pusa"] == pytest.approx(1.4)
    fused_model = tiny_dit()
    LoraFuser(fused_model, random_lora(fused_model, ranks)).set_alpha(1.4)
    torch.testing.assert_close(forward(adapter_model), forward(fused_model), atol=1e-5, rtol=1e-5)


def test_adapter_refuses_what_it_cannot_hold():
    model = tiny_dit()
    lora = random_lora(model)
    with_diff = LoraWeights(
        modules=lora.modules, source="x.safetensors", diffs={"blocks.0.norm2": {"weight": torch.zeros(24)}}
    )
    with pytest.raises(ValueError, match=r"\.diff deltas"):
        attach_lora_adapter(model, with_diff, 1.0)
    wrong = LoraWeights(
        modules={"blocks.0.attn1.to_q": (torch.zeros(4, 7), torch.zeros(24, 4))}, source="y.pt"
    )
    with pytest.raises(ValueError, match=r"blocks\.0\.attn1\.to_q.*\[24, 7\]"):
        attach_lora_adapter(model, wrong, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        set_adapter_alpha(model, float("nan"))


def test_lora_fuser_refuse_is_bit_exact():
    model, fuser = fused(1.4)
    for alpha in (1.5, 1.4):
        fuser.set_alpha(alpha)
    fresh, _ = fused(1.4)
    for (name, param), (_, fresh_param) in zip(
        model.named_parameters(), fresh.named_parameters(), strict=True
    ):
        assert torch.equal(param, fresh_param), name
    assert torch.equal(forward(model), forward(fresh))


# ---------------------------------------------------------------- memory tiers


@pytest.mark.parametrize("tier", MEMORY_TIERS)
def test_memory_tier_dit_output_unchanged(tier):
    model = tiny_dit()
    reference = forward(model)
    placement = apply_memory_tier({"transformer": model}, tier, "cpu")
    assert placement["tier"] == tier and "transformer" in placement
    assert _is_group_offload_enabled(model) == (tier != "full")
    assert torch.equal(forward(model), reference)
    assert torch.equal(forward(model), reference)  # second pass: hooks already traced


@pytest.mark.parametrize("tier", ["balanced", "low"])
def test_lora_fuser_after_offloading_takes_effect(tier):
    reference, _ = fused(1.4)
    model = tiny_dit()
    fuser = LoraFuser(model, random_lora(model))
    apply_memory_tier({"transformer": model}, tier, "cpu")
    forward(model)  # offload hooks have run once
    fuser.set_alpha(1.4)
    assert torch.equal(forward(model), forward(reference))


@pytest.fixture(scope="module")
def baseline_video() -> np.ndarray:
    return PusaPipeline.from_preset("tiny-random").text_to_video("a fox", **PIPELINE_ARGS).frames


PIPELINE_ARGS = dict(num_inference_steps=2, width=32, height=32, num_frames=5, seed=3)


@pytest.mark.parametrize("tier", MEMORY_TIERS)
def test_memory_tier_pipeline_video_unchanged(tier, baseline_video):
    pipe = PusaPipeline(**tiny_random_components())  # raw: from_preset applies a tier itself
    placement = apply_memory_tier(pipe, tier, "cpu")
    assert set(placement) == {"tier", "transformer", "text_encoder", "vae"}
    assert _is_group_offload_enabled(pipe.text_encoder)
    assert pipe.vae.use_tiling == (tier == "low")
    assert np.array_equal(pipe.text_to_video("a fox", **PIPELINE_ARGS).frames, baseline_video)


def test_choose_memory_tier_for_wan_14b():
    assert choose_memory_tier(79 * 2**30, WAN_14B_BYTES) == "full"  # H100 80 GB
    assert choose_memory_tier(47 * 2**30, WAN_14B_BYTES) == "full"  # 48 GB
    assert choose_memory_tier(23 * 2**30, WAN_14B_BYTES) == "balanced"  # 24 GB
    assert choose_memory_tier(15 * 2**30, WAN_14B_BYTES) == "balanced"  # 16 GB
    assert choose_memory_tier(11 * 2**30, WAN_14B_BYTES) == "low"  # 12 GB
    assert choose_memory_tier(0, {}) in MEMORY_TIERS
    # A100-40GB (~37 GiB free): balanced in bf16; fp8 weights halve the DiT and then everything fits
    assert choose_memory_tier(37 * 2**30, WAN_14B_BYTES) == "balanced"
    assert choose_memory_tier(37 * 2**30, {**WAN_14B_BYTES, "transformer": 14_300_000_000}) == "full"


def test_unknown_memory_tier_is_named():
    with raises_input_error("memory", "medium") as caught:
        apply_memory_tier({"transformer": tiny_dit()}, "medium", "cpu")
    assert caught.value.allowed == "choose one of full, balanced, low"
    with pytest.raises(ValueError, match=r"'fast'.*auto, full, balanced, low"):
        resolve_memory_tier("fast", "cpu", {})
    assert validate_memory_tier("low") == "low"
    assert resolve_memory_tier("auto", "cpu", {}) == "full"  # nothing to gain by offloading off CUDA
    assert resolve_memory_tier("balanced", "cpu", {}) == "balanced"


def test_memory_tier_applies_once():
    model = tiny_dit()
    apply_memory_tier({"transformer": model}, "low", "cpu")
    with pytest.raises(ValueError, match="already group-offloaded"):
        apply_memory_tier({"transformer": model}, "balanced", "cpu")


def test_component_bytes():
    model = tiny_dit()
    sizes = component_bytes({"transformer": model})
    assert sizes == {"transformer": module_bytes(model), "text_encoder": 0, "vae": 0}
    assert sizes["transformer"] >= 4 * sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- fp8 weights


def test_fp8_weights_are_stored_as_float8():
    model = tiny_dit()
    reference = forward(model)
    originals = {name: param.detach().clone() for name, param in model.named_parameters()}
    bytes_before = module_bytes(model)
    enable_fp8_weights(model, compute_dtype=torch.float32)

    float8 = {name for name, param in model.named_parameters() if param.dtype == torch.float8_e4m3fn}
    for block in range(TINY_DIT["num_layers"]):
        for target in TARGETS:
            assert f"blocks.{block}.{target}.weight" in float8
    kept = ("norm", "scale_shift_table", "patch_embedding", "condition_embedder", "proj_out")
    assert not [name for name in float8 if any(part in name for part in kept)]
    for name in float8:  # storage round trip: exactly the float8 rounding of the original
        assert torch.equal(dict(model.named_parameters())[name], originals[name].to(torch.float8_e4m3fn))
    float8_elements = sum(originals[name].numel() for name in float8)
    assert module_bytes(model) == bytes_before - 3 * float8_elements  # 1 byte instead of 4

    fp8_error = relative_error(forward(model), reference)
    bf16_model = tiny_dit()
    bf16_model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    bf16_error = relative_error(forward(bf16_model), reference)
    assert 0 < fp8_error < FP8_ERROR_BOUND
    assert bf16_error < fp8_error / 4


def test_fp8_weights_with_lora_fuser_fuse_once_from_pristine():
    model = tiny_dit()
    lora = random_lora(model)
    fuser = LoraFuser(model, lora)
    pristine = model.blocks[1].ffn.net[2].weight.detach().clone()
    enable_fp8_weights(model, compute_dtype=torch.float32)
    fuser.set_alpha(1.4)
    fuser.set_alpha(1.5)
    down, up = lora.modules["blocks.1.ffn.net.2"]
    expected = (pristine + 1.5 * (up @ down)).to(torch.float8_e4m3fn)
    assert torch.equal(model.blocks[1].ffn.net[2].weight, expected)
    forward(model)


def test_fp8_after_offloading_is_refused():
    model = tiny_dit()
    apply_memory_tier({"transformer": model}, "balanced", "cpu")
    with pytest.raises(ValueError, match="before applying a memory tier"):
        enable_fp8_weights(model, compute_dtype=torch.float32)


def test_relative_error():
    reference = torch.tensor([3.0, 4.0])
    assert relative_error(reference, reference) == 0.0
    assert relative_error(torch.tensor([3.0, 4.5]), reference) == pytest.approx(0.1)


# ---------------------------------------------------------------- attention, compile, FLOPs


def test_attention_backend_on_cpu_is_native():
    assert select_attention_backend("cpu") == "native"
    model = tiny_dit()
    reference = forward(model)
    assert apply_attention_backend(model, "auto", "cpu") == "native"
    assert model.blocks[0].attn1.processor._attention_backend in (None, "native")  # None: the default
    assert torch.equal(forward(model), reference)
    with raises_input_error("attention", "flash_hub") as caught:
        apply_attention_backend(model, "flash_hub", "cpu")
    assert "_native_cudnn" in caught.value.allowed and "flash_hub" not in caught.value.allowed
    with pytest.raises(ValueError, match=r"'_native_cudnn' needs a CUDA device"):
        apply_attention_backend(model, "_native_cudnn", "cpu")
    assert apply_attention_backend(model, "_native_math", "cpu") == "_native_math"
    torch.testing.assert_close(forward(model), reference)
    apply_attention_backend(model, "native", "cpu")
    assert model.blocks[0].attn1.processor._attention_backend == "native"


def test_compile_blocks_fullgraph_keeps_output():
    model = tiny_dit()
    reference = forward(model)
    compile_blocks(model, backend="eager")  # traces every block with fullgraph=True: no graph breaks
    try:
        assert torch.equal(forward(model), reference)
    finally:
        torch._dynamo.reset()


def test_compile_blocks_under_offloading_allows_the_hook_graph_breaks():
    model = tiny_dit()
    reference = forward(model)
    apply_memory_tier({"transformer": model}, "balanced", "cpu")
    compile_blocks(model, backend="eager")
    try:
        assert torch.equal(forward(model), reference)
    finally:
        torch._dynamo.reset()


def test_prepare_for_device_runs_everything_in_order(baseline_video):
    pipe = PusaPipeline(**tiny_random_components())
    with raises_input_error("memory", "huge"):
        prepare_for_device(pipe, "cpu", memory="huge", fp8=True)
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float32  # nothing changed yet

    report = prepare_for_device(
        pipe, "cpu", memory="low", fp8=True, compile=True, compile_kwargs={"backend": "eager"}
    )
    assert report["memory_tier"] == "low" and report["attention"] == "native"
    assert report["fp8"] and report["compiled"] and report["placement"]["vae"].endswith("tiled")
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    try:
        video = pipe.text_to_video("a fox", **PIPELINE_ARGS).frames
    finally:
        torch._dynamo.reset()
    assert video.shape == baseline_video.shape


def test_dit_forward_flops_matches_flop_counter_and_wan_14b():
    with torch.device("meta"):
        one_layer = PusaTransformer3DModel(num_layers=1, num_attention_heads=8, attention_head_dim=64)
        latents = torch.zeros(1, 16, 5, 30, 52)
        timestep = torch.zeros(1, 5)
        text = torch.zeros(1, 512, 4096)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        one_layer(latents, timestep, text)
    counted = counter.get_total_flops()
    assert dit_forward_flops(one_layer.config, 5, 30, 52) == pytest.approx(counted, rel=0.01)

    wan_14b = WAN_14B_TRANSFORMER_CONFIG
    assert dit_forward_flops(wan_14b, 21, 60, 104) == pytest.approx(1.68e15, rel=0.01)
    assert dit_forward_flops(wan_14b, 21, 90, 160) > 3.5 * dit_forward_flops(wan_14b, 21, 60, 104)


@pytest.mark.parametrize("tier", MEMORY_TIERS)
def test_from_preset_applies_the_named_tier_and_records_it(tier, baseline_video):
    pipe = PusaPipeline.from_preset("tiny-random", memory=tier)
    out = pipe.text_to_video("a fox", **PIPELINE_ARGS)
    assert out.settings["acceleration"]["memory_tier"] == tier
    assert np.array_equal(out.frames, baseline_video)


def test_attention_is_chosen_at_the_models_native_length():
    """ "auto" times the kernels at the length attention will run at: 32,760 tokens for Wan's 81x480x832 (the
    winner changes with length: on an H100 plain SDPA won at 4,096 tokens and cuDNN at 32,760)."""
    from types import SimpleNamespace

    from pusa.pipeline import native_tokens
    from pusa.request import WAN_DEFAULTS
    from pusa.weights.registry import TINY_DEFAULTS

    wan_vae = SimpleNamespace(config=SimpleNamespace(temperal_downsample=[False, True, True]))
    wan_dit = SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2)))
    assert native_tokens(wan_dit, wan_vae, WAN_DEFAULTS) == 21 * 30 * 52 == 32_760
    pipe = PusaPipeline.from_model("pusa-tiny")
    assert (
        native_tokens(pipe.transformer, pipe.vae, pipe.defaults) == 5 * 4 * 4
    )  # 17 frames 64x64, 4x + 1x4x4
    tiny = tiny_random_components()
    tokens = native_tokens(tiny["transformer"], tiny["vae"], TINY_DEFAULTS)
    assert tokens == 5 * (64 // 8 // 2) ** 2
    model = tiny_dit()
    assert apply_attention_backend(model, "auto", "cpu", seq_len=tokens) == "native"


def test_attention_backends_name_the_package_they_need():
    from pusa.runtime.kernels import attention_package

    assert attention_package("flash") == attention_package("flash_varlen") == "flash_attn"
    assert attention_package("_flash_3") == attention_package("_flash_varlen_3") == "flash_attn_interface"
    assert attention_package("sage") == attention_package("_sage_qk_int8_pv_fp16_cuda") == "sageattention"
    assert attention_package("xformers") == "xformers"
    for builtin in ("native", "_native_cudnn", "_native_flash", "_native_efficient", "_native_math", "flex"):
        assert attention_package(builtin) is None, builtin
