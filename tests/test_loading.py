"""Loading real weights: both layouts, strict errors, whole folders. Tiny real classes, no mocks.

Wan's original layout is produced here by hand-written inverses of diffusers' key converters, so the
tests prove that our loader (which uses diffusers' converters) maps every key back to where it was.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel, UMT5Model

from helpers import TINY_DIT
from pusa.model import PusaTransformer3DModel
from pusa.weights.checkpoints import CheckpointError, load_text_encoder, load_transformer, load_vae
from pusa.weights.folders import find_layout, load_components

TINY_DIT = {**TINY_DIT, "rope_max_seq_len": 1024}  # what the loader sets for Wan's original configs
# Wan's original config for the same model.
TINY_DIT_ORIGINAL = {
    "_class_name": "WanModel",
    "dim": 24,
    "ffn_dim": 32,
    "freq_dim": 16,
    "in_dim": 4,
    "out_dim": 4,
    "num_heads": 2,
    "num_layers": 2,
    "text_len": 512,
    "eps": 1e-6,
    "model_type": "t2v",
}
# diffusers' Wan VAE converter hard-codes Wan2.1's structure (dim_mult [1, 2, 4, 4], num_res_blocks 2),
# so the tiny VAE keeps that structure and shrinks the width.
TINY_VAE = dict(
    base_dim=4,
    z_dim=4,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    temperal_downsample=[False, True, True],
    latents_mean=[0.0] * 4,
    latents_std=[1.0] * 4,
)
TINY_UMT5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


# --- hand-written inverses of diffusers' converters ---------------------------------------------------

_DIT_TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "patch_embedding": "patch_embedding",
    "proj_out": "head.head",
}
_DIT_BLOCK = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",  # diffusers' norm2 is the cross-attention norm: Wan calls it norm3
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def original_dit_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if block:
        if block[2] == "scale_shift_table":
            return f"blocks.{block[1]}.modulation"
        module, param = block[2].rsplit(".", 1)
        return f"blocks.{block[1]}.{_DIT_BLOCK[module]}.{param}"
    module, param = key.rsplit(".", 1)
    return f"{_DIT_TOP[module]}.{param}"


_VAE_RESNET = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}


def original_vae_key(key: str) -> str:
    if key.startswith("quant_conv."):
        return key.replace("quant_conv.", "conv1.")
    if key.startswith("post_quant_conv."):
        return key.replace("post_quant_conv.", "conv2.")
    part, rest = key.split(".", 1)  # encoder / decoder
    for diffusers_name, wan_name in (
        ("conv_in.", "conv1."),
        ("norm_out.", "head.0."),
        ("conv_out.", "head.2."),
    ):
        if rest.startswith(diffusers_name):
            return f"{part}.{wan_name}{rest[len(diffusers_name) :]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
        return f"{part}.middle.{2 * int(m[1])}.{_VAE_RESNET[m[2]]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{part}.middle.1.{m[1]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest):
        return f"encoder.downsamples.{m[1]}.{_VAE_RESNET.get(m[2], m[2])}"
    # Wan's decoder is flat: per level 3 residual blocks then the upsampler, 4 entries a level.
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_VAE_RESNET[m[3]]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    raise AssertionError(f"no inverse for {key}")


# --- writers ----------------------------------------------------------------------------------------


def write_dit_original(model: torch.nn.Module, folder: Path, num_shards: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {original_dit_key(k): v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    for shard in range(num_shards):
        part = {k: state[k] for k in keys[shard::num_shards]}
        save_file(
            part, str(folder / f"diffusion_pytorch_model-{shard + 1:05d}-of-{num_shards:05d}.safetensors")
        )
    (folder / "config.json").write_text(json.dumps(TINY_DIT_ORIGINAL))


def write_vae_original(vae: AutoencoderKLWan, pth: Path) -> None:
    pth.parent.mkdir(parents=True, exist_ok=True)
    torch.save({original_vae_key(k): v for k, v in vae.state_dict().items()}, pth)
    (pth.parent / "vae_config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **TINY_VAE}))


def write_tokenizer(folder: Path) -> T5Tokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    sentences = ["a cat walks on the grass", "a red ball bounces", "the sun sets over the sea", "a dog runs"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 20),
        model_writer=model,
        vocab_size=28,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(folder, extra_ids=0)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_dit(seed: int = 0) -> PusaTransformer3DModel:
    torch.manual_seed(seed)
    model = PusaTransformer3DModel(**TINY_DIT)
    # The defaults zero some tables; random values make every key matter.
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    return model.eval()


def tiny_vae(seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**TINY_VAE).eval()


def tiny_umt5(vocab_size: int, seed: int = 0) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **TINY_UMT5)).eval()


def dit_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 4, 3, 4, 4, generator=generator),
        "timestep": torch.tensor([[1000.0, 500.0, 0.0]]),  # one per latent frame
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=generator),
    }


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype, key
        assert torch.equal(state_a[key], state_b[key]), key


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The same tiny model written in both layouts, component by component and as whole folders."""
    base = tmp_path_factory.mktemp("models")
    dit, vae = tiny_dit(), tiny_vae()

    diffusers_root = base / "diffusers"
    dit.save_pretrained(diffusers_root / "transformer")
    vae.save_pretrained(diffusers_root / "vae")
    tokenizer = write_tokenizer(diffusers_root / "tokenizer")
    encoder = tiny_umt5(len(tokenizer))
    encoder.save_pretrained(diffusers_root / "text_encoder")
    (diffusers_root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))

    original_root = base / "wan-original"
    write_dit_original(dit, original_root)
    write_vae_original(vae, original_root / "Wan2.1_VAE.pth")
    umt5_dir = original_root / "google" / "umt5-xxl"
    write_tokenizer(umt5_dir)
    # A full encoder-decoder umT5, as google/umt5-xxl is: the decoder must be ignored.
    torch.manual_seed(0)
    full = UMT5Model(UMT5Config(vocab_size=len(tokenizer), **TINY_UMT5))
    full.encoder.load_state_dict(encoder.encoder.state_dict())
    full.shared.load_state_dict(encoder.shared.state_dict())
    full.save_pretrained(umt5_dir)
    return {
        "dit": dit,
        "vae": vae,
        "encoder": encoder,
        "tokenizer": tokenizer,
        "diffusers": diffusers_root,
        "original": original_root,
    }


# --- transformer --------------------------------------------------------------------------------------


def test_inverse_dit_mapping_covers_every_key(models):
    keys = models["dit"].state_dict().keys()
    originals = {original_dit_key(k) for k in keys}
    assert len(originals) == len(keys)
    assert "blocks.0.norm3.weight" in originals and "blocks.0.norm2.weight" not in originals


def test_both_transformer_layouts_load_identically(models):
    from_diffusers = load_transformer(models["diffusers"] / "transformer")
    from_original = load_transformer(models["original"])
    assert isinstance(from_original, PusaTransformer3DModel)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(from_original.config) == public(from_diffusers.config)
    assert_same_state(from_original, models["dit"])
    assert_same_state(from_diffusers, models["dit"])
    with torch.no_grad():
        expected = models["dit"](**dit_inputs()).sample
        assert torch.equal(from_diffusers(**dit_inputs()).sample, expected)
        assert torch.equal(from_original(**dit_inputs()).sample, expected)


def test_bf16_keeps_the_same_tensors_in_fp32_as_diffusers(models):
    folder = models["diffusers"] / "transformer"
    reference = WanTransformer3DModel.from_pretrained(
        folder, local_files_only=True, torch_dtype=torch.bfloat16
    )
    from_diffusers = load_transformer(folder, dtype=torch.bfloat16)
    from_original = load_transformer(models["original"], dtype=torch.bfloat16)
    assert_same_state(from_diffusers, reference)
    assert_same_state(from_original, reference)
    assert from_original.scale_shift_table.dtype == torch.float32
    assert from_original.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


def test_transformer_missing_paths_are_named(tmp_path, models):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_transformer(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"no config\.json in .*did you mean its transformer/"):
        load_transformer(models["diffusers"])
    (tmp_path / "config.json").write_text(json.dumps(TINY_DIT_ORIGINAL))
    with pytest.raises(CheckpointError, match=r"no diffusion_pytorch_model\.safetensors.*original layout"):
        load_transformer(tmp_path)


def _copy_original(models, tmp_path: Path) -> Path:
    folder = tmp_path / "dit"
    write_dit_original(models["dit"], folder)
    return folder


def _edit_shard(folder: Path, index: int, edit) -> Path:
    shard = folder / f"diffusion_pytorch_model-{index:05d}-of-00002.safetensors"
    state = load_file(str(shard))
    edit(state)
    save_file(state, str(shard))
    return shard


def test_transformer_missing_key_is_named(tmp_path, models):
    folder = _copy_original(models, tmp_path)
    for index in (1, 2):
        _edit_shard(folder, index, lambda state: state.pop("blocks.1.self_attn.q.weight", None))
    with pytest.raises(CheckpointError) as error:
        load_transformer(folder)
    assert str(folder) in str(error.value)
    assert "missing" in str(error.value) and "blocks.1.attn1.to_q.weight [24, 24]" in str(error.value)


def test_transformer_unexpected_key_is_named(tmp_path, models):
    folder = _copy_original(models, tmp_path)
    shard = _edit_shard(
        folder, 1, lambda state: state.update({"blocks.0.self_attn.extra.weight": torch.ones(3)})
    )
    with pytest.raises(CheckpointError) as error:
        load_transformer(folder)
    assert "unexpected" in str(error.value)
    assert f"blocks.0.self_attn.extra.weight in {shard.name}" in str(error.value)


def test_transformer_wrong_shape_is_named(tmp_path, models):
    folder = tmp_path / "transformer"
    models["dit"].save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["blocks.0.ffn.net.2.weight"] = torch.zeros(24, 31)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as error:
        load_transformer(folder)
    message = str(error.value)
    assert str(folder) in message
    assert "blocks.0.ffn.net.2.weight in diffusion_pytorch_model.safetensors is [24, 31]" in message
    assert "the model's blocks.0.ffn.net.2.weight is [24, 32]" in message


def test_transformer_missing_shard_is_named(tmp_path, models):
    folder = _copy_original(models, tmp_path)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shards: diffusion_pytorch_model-00002-of-00002"):
        load_transformer(folder)


# --- VAE ------------------------------------------------------------------------------------------------


def test_inverse_vae_mapping_round_trips_through_diffusers_converter(models):
    state = models["vae"].state_dict()
    original = {original_vae_key(k): v for k, v in state.items()}
    assert len(original) == len(state)
    converted = convert_wan_vae_to_diffusers(original)
    assert converted.keys() == state.keys()
    assert all(converted[k] is state[k] for k in state)


def test_both_vae_layouts_load_identically(models):
    from_diffusers = load_vae(models["diffusers"] / "vae")
    from_file = load_vae(models["original"] / "Wan2.1_VAE.pth")
    from_folder = load_vae(models["original"])  # the folder holding Wan2.1_VAE.pth
    latents = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = models["vae"].decode(latents).sample
        for vae in (from_diffusers, from_file, from_folder):
            assert_same_state(vae, models["vae"])
            assert torch.equal(vae.decode(latents).sample, expected)


def test_vae_errors_name_the_file_and_key(tmp_path, models):
    with pytest.raises(CheckpointError, match=r"no VAE at .*Wan2\.1_VAE\.pth"):
        load_vae(tmp_path)
    pth = tmp_path / "Wan2.1_VAE.pth"
    write_vae_original(models["vae"], pth)
    state = torch.load(pth, weights_only=True)
    del state["decoder.head.2.bias"]
    state["decoder.extra.weight"] = torch.ones(2)
    torch.save(state, pth)
    with pytest.raises(CheckpointError) as error:
        load_vae(pth)
    message = str(error.value)
    assert str(pth) in message
    assert "decoder.conv_out.bias [3]" in message  # missing, in diffusers' naming
    assert "decoder.extra.weight" in message  # unexpected
    assert "vae_config.json" in message


# --- text encoder ---------------------------------------------------------------------------------------


def test_text_encoder_layouts(models):
    ids = models["tokenizer"]("a red cat", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = models["encoder"](ids).last_hidden_state
        for folder in (models["diffusers"], models["original"] / "google" / "umt5-xxl"):
            encoder, tokenizer = load_text_encoder(folder)
            assert tokenizer("a red cat", return_tensors="pt").input_ids.tolist() == ids.tolist()
            assert torch.equal(encoder(ids).last_hidden_state, expected)


def test_text_encoder_missing(tmp_path, models):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_text_encoder(tmp_path / "nowhere")
    write_tokenizer(tmp_path / "tokenizer-only")
    with pytest.raises(CheckpointError, match=r"no umT5 encoder .*models_t5_umt5-xxl-enc-bf16\.pth"):
        load_text_encoder(tmp_path / "tokenizer-only")


# --- whole folders --------------------------------------------------------------------------------------


def test_find_layout(models):
    diffusers = find_layout(models["diffusers"])
    assert diffusers.layout == "diffusers"
    assert diffusers.identity == f"diffusers:{models['diffusers'].resolve()}"
    assert diffusers.text_encoder == models["diffusers"].resolve() / "text_encoder"
    original = find_layout(models["original"])
    assert original.layout == "wan-original"
    assert original.vae.name == "Wan2.1_VAE.pth"
    assert original.text_encoder == original.tokenizer == models["original"].resolve() / "google" / "umt5-xxl"


def test_load_components_from_both_layouts(models):
    from_diffusers = load_components(models["diffusers"])
    from_original = load_components(models["original"])
    assert from_original.identity.startswith("wan-original:/")
    for name in ("transformer", "vae", "text_encoder"):
        assert_same_state(getattr(from_original, name), getattr(from_diffusers, name))


def test_find_layout_lists_what_is_missing(tmp_path, models):
    with pytest.raises(CheckpointError, match="neither a diffusers layout"):
        find_layout(tmp_path)
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "transformer").mkdir()
    with pytest.raises(CheckpointError) as error:
        find_layout(tmp_path)
    message = str(error.value)
    assert "diffusers layout" in message
    assert "transformer/config.json" in message and "vae/config.json" in message
    assert "no umT5 encoder" in message and "no tokenizer" in message


def test_wan_download_without_encoder_weights_needs_an_override(tmp_path, models):
    # Wan's own download ships google/umt5-xxl with the tokenizer only.
    root = tmp_path / "wan"
    write_dit_original(models["dit"], root)
    write_vae_original(models["vae"], root / "Wan2.1_VAE.pth")
    write_tokenizer(root / "google" / "umt5-xxl")
    with pytest.raises(CheckpointError, match=r"models_t5_umt5-xxl-enc-bf16\.pth has no converter"):
        find_layout(root)
    folder = find_layout(root, text_encoder_dir=models["diffusers"])
    assert folder.text_encoder == models["diffusers"].resolve() / "text_encoder"


# --- end to end: the CLI users run, on both layouts, with the Pusa LoRA ----------------------------------


def write_pusa_lora(dit: torch.nn.Module, path: Path) -> Path:
    """A rank-2 LoRA on Pusa's targets in `pusa_v1.pt`'s PEFT key style (Wan's original names)."""
    generator = torch.Generator().manual_seed(7)
    targets = {"self_attn.q": "attn1.to_q", "cross_attn.v": "attn2.to_v", "ffn.0": "ffn.net.0.proj"}
    state = {}
    for index, block in enumerate(dit.blocks):
        for original, name in targets.items():
            weight = block.get_submodule(name).weight
            state[f"blocks.{index}.{original}.lora_A.default.weight"] = torch.randn(
                2, weight.shape[1], generator=generator
            )
            state[f"blocks.{index}.{original}.lora_B.default.weight"] = torch.randn(
                weight.shape[0], 2, generator=generator
            )
    torch.save(state, path)
    return path


def test_cli_on_both_layouts_with_lora_gives_identical_videos(tmp_path, models):
    from pusa.cli import main
    from pusa.video import read_video

    lora = write_pusa_lora(models["dit"], tmp_path / "pusa_v1.pt")
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    common = ["--image", str(image), "-p", "a cat", "--frames", "5", "--width", "32", "--height", "32",
              "--steps", "2", "--seed", "1", "-q", "--lora", str(lora)]  # fmt: skip
    videos = {}
    for layout in ("diffusers", "original"):
        for alpha in ("1.0", "1.4"):
            out = tmp_path / f"{layout}-{alpha}.mp4"
            assert (
                main(
                    [
                        "generate",
                        "i2v",
                        "--model",
                        str(models[layout]),
                        "--lora-alpha",
                        alpha,
                        *common,
                        "-o",
                        str(out),
                    ]
                )
                == 0
            )
            videos[layout, alpha] = read_video(out)[0]
            settings = json.loads(out.with_suffix(".json").read_text())
            assert settings["lora"] == str(lora) and settings["lora_alpha"] == float(alpha)
    assert videos["diffusers", "1.4"].shape == (5, 32, 32, 3)
    assert np.array_equal(videos["diffusers", "1.0"], videos["original", "1.0"])
    assert np.array_equal(videos["diffusers", "1.4"], videos["original", "1.4"])
    assert not np.array_equal(videos["diffusers", "1.0"], videos["diffusers", "1.4"])


def test_a_pipeline_without_its_text_encoder_never_reads_it(tmp_path):
    """`load_text_encoder=False` (a parallel group's follower ranks): the umT5 weights are not read at all,
    so a folder whose encoder file is unreadable still loads, with the same DiT and tokenizer; asking it to
    encode a prompt says why it cannot."""
    import shutil

    from pusa.pipeline import PusaPipeline
    from pusa.weights.registry import PUSA_TINY_DIR

    folder = tmp_path / "pusa-tiny"
    shutil.copytree(PUSA_TINY_DIR, folder)
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot load the text encoder"):
        PusaPipeline.from_pretrained(folder)  # the default reads it
    pipe = PusaPipeline.from_pretrained(folder, load_text_encoder=False)
    whole = PusaPipeline.from_model("pusa-tiny", lora=None)
    assert pipe.text_encoder is None and pipe.vae is not None
    assert_same_state(pipe.transformer, whole.transformer)
    assert pipe.tokenizer("a red cat").input_ids == whole.tokenizer("a red cat").input_ids
    with pytest.raises(RuntimeError, match=r"loaded without its text encoder \(load_text_encoder=False\)"):
        pipe.encode_prompt("a red cat")
