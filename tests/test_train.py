"""The training run (pusa.train.run, pusa.train.data): every stage lowers its loss, checkpoints resume
exactly, the LoRA exports in pusa_v1.pt's style and fuses to the trained model, the latents folder reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pusa.train.builders import build_text_encoder, build_transformer, build_vae, check_dit_width
from pusa.train.config import DitConfig, TextEncoderConfig, VaeConfig, VtaConfig
from pusa.train.data import LatentFolder, LatentPool, save_latent_clip, world_pixel_batch
from pusa.train.loop import Stage, train_stage
from pusa.train.stages_dit import flow_matching_loss, vta_sigmas
from pusa.train.stages_vae import object_mask
from pusa.weights.lora import (
    PUSA_LORA_TARGETS,
    LoraFuser,
    add_lora,
    load_lora,
    lora_state,
    save_lora_original,
)

TINY_DIT = DitConfig(
    num_attention_heads=2, attention_head_dim=32, ffn_dim=32, num_layers=2, freq_dim=16, patch_size=(1, 2, 2)
)  # 64 wide: 2x2x16
TINY_TEXT = TextEncoderConfig(d_model=16, d_kv=4, d_ff=32, num_heads=2)


class _NullLog:
    def write(self, **record) -> None:
        pass


def _fit(stage_modules, params, loss_fn, steps=12, lr=3e-3) -> tuple[float, float]:
    """Loss before and after `steps` AdamW steps on the same batch."""
    with torch.no_grad():
        before = float(loss_fn())
    optimizer = torch.optim.AdamW(params, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss_fn())
    return before, after


@pytest.mark.slow  # VAE training steps
def test_vae_steps_reduce_reconstruction_loss():
    torch.manual_seed(0)
    vae = build_vae(VaeConfig(base_dim=4, dim_mult=(1, 1, 1, 1)))
    pixels = world_pixel_batch(seed=3, batch_size=2, num_frames=5, width=32, height=32)  # [2, 3, 5, 32, 32]
    assert pixels.shape == (2, 3, 5, 32, 32) and -1.0 <= float(pixels.min()) < float(pixels.max()) <= 1.0

    def loss_fn():
        recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        return (recon - pixels).abs().mean()

    before, after = _fit([vae], list(vae.parameters()), loss_fn, steps=10)
    assert after < 0.8 * before


def test_object_mask_finds_the_world_object_and_nothing_else():
    from pusa.train.world import render_clip, sample_clip_spec, shape_coverage, trajectory

    specs = [
        sample_clip_spec(seed, 9, 32, 32, background=bg) for seed, bg in ((1, "black"), (2, "dark blue"))
    ]
    videos = np.stack([render_clip(spec) for spec in specs])  # [2, 9, 32, 32, 3]
    pixels = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    mask = object_mask(pixels, grow=0)  # [2, 1, 9, 32, 32]
    grown = object_mask(pixels, grow=1)
    assert mask.shape == (2, 1, 9, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    for i, spec in enumerate(specs):
        truth = shape_coverage(spec.shape, *trajectory(spec), 32, 32)  # [9, 32, 32]
        found = mask[i, 0].numpy() > 0
        assert found[truth >= 0.75].all()  # every mostly-covered pixel is object
        assert not found[truth == 0].any()  # no background pixel is
        assert (grown[i, 0].numpy() > 0)[truth > 0].all()  # grown by a pixel: the anti-aliased edge too
        assert grown[i].sum() > mask[i].sum()


def _latents(batch=4, frames=3, size=4, seed=0) -> torch.Tensor:
    return torch.randn(batch, 16, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_base_steps_reduce_flow_matching_loss():
    torch.manual_seed(0)
    text_encoder = build_text_encoder(TINY_TEXT, vocab_size=64)
    transformer = build_transformer(TINY_DIT, TINY_TEXT.d_model)
    latents, noise = _latents(), _latents(seed=1)
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(2))
    sigmas = torch.tensor([0.2, 0.5, 0.7, 0.9])  # one per clip

    def loss_fn():
        text = text_encoder(ids).last_hidden_state
        return flow_matching_loss(transformer, latents, sigmas, text, noise)

    params = [*transformer.parameters(), *text_encoder.parameters()]
    before, after = _fit([transformer, text_encoder], params, loss_fn)
    assert after < 0.8 * before


def test_flow_matching_loss_weights_latent_cells():
    """Uniform weights give the plain MSE; weights are rescaled to mean 1, so only their ratios matter; a cell
    weighted 0 does not count at all."""
    torch.manual_seed(0)
    transformer = build_transformer(TINY_DIT, TINY_TEXT.d_model).eval()
    latents, noise = _latents(), _latents(seed=1)
    sigmas, text = torch.tensor([0.2, 0.5, 0.7, 0.9]), torch.randn(4, 8, TINY_TEXT.d_model)
    with torch.no_grad():
        plain = flow_matching_loss(transformer, latents, sigmas, text, noise)
        uniform = flow_matching_loss(
            transformer, latents, sigmas, text, noise, torch.full((4, 1, 3, 4, 4), 7.0)
        )
        torch.testing.assert_close(uniform, plain)
        weights = torch.zeros(4, 1, 3, 4, 4)
        weights[:, :, 1, :2, :2] = 1.0  # one 2x2 corner of latent frame 1
        velocity = transformer(
            (1 - sigmas[:, None, None, None, None]) * latents + sigmas[:, None, None, None, None] * noise,
            sigmas * 1000.0, text, return_dict=False,
        )[0]  # fmt: skip
        corner = (velocity - (noise - latents))[:, :, 1, :2, :2].pow(2).mean()
        weighted = flow_matching_loss(transformer, latents, sigmas, text, noise, weights)
    torch.testing.assert_close(weighted, corner)
    assert abs(float(weighted) - float(plain)) > 1e-4


def test_pool_object_masks_mark_the_latent_cells_the_object_covers():
    """Rendered again from the pool's seeds: a cell is 1 where its frames/pixels hold object pixels."""
    from pusa.train.stages_vae import pool_object_masks
    from pusa.train.world import render_clip, sample_clip_spec

    pool = LatentPool(torch.zeros(3, 4, 3, 8, 8), torch.tensor([4, 11, 23]), 9, 32, 32)  # 4x spatial latents
    masks = pool_object_masks(pool, batch_size=2)
    assert masks.shape == (3, 1, 3, 8, 8) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert 0.0 < float(masks.mean()) < 0.5  # a small object on a large background
    for i, seed in enumerate(pool.seeds.tolist()):
        video = render_clip(sample_clip_spec(seed, 9, 32, 32))
        pixels = torch.from_numpy(video[None]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        truth = object_mask(pixels, grow=0)[0, 0]  # [9, 32, 32]
        first = truth[0].reshape(8, 4, 8, 4).amax(dim=(1, 3))  # latent frame 0: pixel frame 0 alone
        later = truth[5:9].reshape(4, 8, 4, 8, 4).amax(dim=(0, 2, 4))  # latent frame 2: pixel frames 5-8
        torch.testing.assert_close(masks[i, 0, 0], first)
        torch.testing.assert_close(masks[i, 0, 2], later)


def test_base_object_weight_needs_the_world_pool(tmp_path):
    from pusa.train.config import BaseConfig, RunConfig
    from pusa.train.stages_dit import train_base

    (tmp_path / "clips").mkdir()
    save_latent_clip(tmp_path / "clips" / "a.safetensors", _latents(batch=1)[0], "a red circle moves left")
    cfg = RunConfig(base=BaseConfig(object_weight=10.0))
    with pytest.raises(
        ValueError, match=r"base.object_weight=10.0: object masks are rendered from the seeds"
    ):
        train_base(tmp_path / "run", cfg, _NullLog(), source=LatentFolder(tmp_path / "clips"))


def test_vta_lora_steps_reduce_loss_and_leave_the_base_untouched():
    torch.manual_seed(0)
    transformer = build_transformer(TINY_DIT, TINY_TEXT.d_model)
    base_state = {k: v.clone() for k, v in transformer.state_dict().items()}
    for p in transformer.parameters():
        p.requires_grad_(False)
    wrapped = add_lora(transformer, rank=4)
    assert len(wrapped) == len(PUSA_LORA_TARGETS) * TINY_DIT.num_layers
    latents, noise = _latents(), _latents(seed=1)
    text = torch.randn(4, 8, TINY_TEXT.d_model, generator=torch.Generator().manual_seed(3))
    sigmas, _ = vta_sigmas(np.random.default_rng(0), 4, 3, VtaConfig())  # [B, F], independent per frame
    assert sigmas.shape == (4, 3) and (sigmas >= 0).all() and (sigmas <= 1).all()

    def loss_fn():
        return flow_matching_loss(transformer, latents, sigmas, text, noise)

    params = [p for m in wrapped.values() for p in (m.down, m.up)]
    before, after = _fit([transformer], params, loss_fn, steps=15, lr=1e-2)
    assert after < 0.9 * before
    for name, module in wrapped.items():
        assert torch.equal(module.base.weight, base_state[f"{name}.weight"])


def test_vta_sigmas_shape_conditioning_like_samples():
    cfg = VtaConfig(task_fraction=1.0)
    sigmas, conditioned = vta_sigmas(np.random.default_rng(1), 64, 5, cfg)
    for row, frames in zip(sigmas, conditioned, strict=True):
        free = [f for f in range(5) if f not in frames]
        assert frames, "every sample is task-shaped at task_fraction=1"
        if free:
            assert torch.allclose(row[free], row[free[0]].expand(len(free)))  # one sigma for free frames
            assert (row[frames] <= row[free[0]] + 1e-6).all()  # conditioning frames are cleaner


def test_exported_lora_fuses_to_the_trained_model(tmp_path):
    """LoraLinear (training) at alpha 1 == LoraFuser on the base after a pusa_v1.pt-style round trip."""
    torch.manual_seed(0)
    transformer = build_transformer(TINY_DIT, TINY_TEXT.d_model).eval()
    x, text = _latents(batch=1), torch.randn(1, 8, TINY_TEXT.d_model)
    timestep = torch.tensor([[900.0, 100.0, 500.0]])
    reference = build_transformer(TINY_DIT, TINY_TEXT.d_model).eval()
    reference.load_state_dict(transformer.state_dict())
    wrapped = add_lora(transformer, rank=4)
    with torch.no_grad():
        for module in wrapped.values():
            module.up.normal_(std=0.05)
        trained = transformer(x, timestep, text, return_dict=False)[0]
    path = tmp_path / "lora.safetensors"
    save_lora_original(lora_state(wrapped), path)
    lora = load_lora(path)
    assert any(key.startswith("blocks.0.self_attn.q.lora_A") for key in lora.file_keys.values())
    LoraFuser(reference, lora).set_alpha(1.0)
    with torch.no_grad():
        fused = reference(x, timestep, text, return_dict=False)[0]
    torch.testing.assert_close(fused, trained, rtol=1e-4, atol=1e-5)


def _pool(num=6) -> LatentPool:
    return LatentPool(
        latents=_latents(batch=num),
        seeds=torch.arange(num, dtype=torch.int64),
        num_frames=9,
        width=32,
        height=32,
        image_latents=_latents(batch=num, frames=1, seed=5),
        image_positions=(2,),
    )


def test_swap_attribute_changes_one_attribute_and_its_caption_words():
    from pusa.train.stages_dit import swap_attribute
    from pusa.train.world import canonical_caption, sample_clip_spec

    spec = sample_clip_spec(3, 9, 32, 32, motion="left", color="red", shape="circle")
    rng = np.random.default_rng(0)
    for attribute, field_name in (("color", "color"), ("shape", "shape"), ("direction", "motion")):
        swapped = swap_attribute(spec, attribute, rng)
        changed = [
            f
            for f in ("color", "shape", "motion", "background", "x", "y")
            if getattr(swapped, f) != getattr(spec, f)
        ]
        assert changed == [field_name]
        assert canonical_caption(swapped) != canonical_caption(spec)


def test_caption_sensitivity_is_zero_for_a_model_deaf_to_text_and_positive_otherwise():
    from pusa.train.builders import load_tokenizer
    from pusa.train.stages_dit import TextEncoding, caption_sensitivity
    from pusa.weights.registry import PUSA_TINY_DIR

    torch.manual_seed(0)
    tokenizer = load_tokenizer(PUSA_TINY_DIR / "tokenizer")
    text_encoder = build_text_encoder(TINY_TEXT, vocab_size=len(tokenizer)).eval()
    transformer = build_transformer(TINY_DIT, TINY_TEXT.d_model).eval()
    pool = _pool(num=40)
    encode = TextEncoding(tokenizer, text_encoder, 32)
    gaps = caption_sensitivity(transformer, encode, pool, num_clips=8, sigmas=(0.9,))
    assert set(gaps) == {"text_gap_color", "text_gap_shape", "text_gap_direction", "loss"}
    assert gaps["loss"] > 0 and all(
        abs(gaps[f"text_gap_{a}"]) > 1e-7 for a in ("color", "shape", "direction")
    )
    with torch.no_grad():  # a text encoder whose output ignores the tokens: every gap is exactly 0
        for param in text_encoder.parameters():
            param.zero_()
    deaf = caption_sensitivity(transformer, encode, pool, num_clips=8, sigmas=(0.9,))
    assert all(deaf[f"text_gap_{a}"] == 0.0 for a in ("color", "shape", "direction"))


def _dit_stage(steps: int, pool: LatentPool) -> tuple[Stage, torch.nn.Module]:
    torch.manual_seed(0)
    transformer = build_transformer(TINY_DIT, TINY_TEXT.d_model)
    text = torch.zeros(4, 8, TINY_TEXT.d_model)

    def loss_fn(step):
        rng = np.random.default_rng((0, step))
        batch = pool.batch(rng, 4)
        sigmas = torch.from_numpy(rng.random(4)).float()
        noise = torch.from_numpy(rng.standard_normal(batch.latents.shape, dtype=np.float32))
        return flow_matching_loss(transformer, batch.latents, sigmas, text, noise), {}

    stage = Stage("base", {"transformer": transformer}, dict(transformer.named_parameters()), loss_fn,
                  steps=steps, lr=1e-3, warmup=1, ema_decay=0.9)  # fmt: skip
    return stage, transformer


def test_resume_reproduces_the_same_weights(tmp_path):
    """Stopping after a checkpoint and resuming gives bit-identical weights to never stopping."""
    pool = _pool()
    stage, straight = _dit_stage(4, pool)
    train_stage(stage, tmp_path / "a", _NullLog(), checkpoint_every=2, log_every=1)

    stage_b, _ = _dit_stage(4, pool)
    calls = {"n": 0}
    inner = stage_b.loss_fn

    def interrupted(step):
        if step == 2:
            raise KeyboardInterrupt  # the process dies right after the step-2 checkpoint
        calls["n"] += 1
        return inner(step)

    stage_b.loss_fn = interrupted
    with pytest.raises(KeyboardInterrupt):
        train_stage(stage_b, tmp_path / "b", _NullLog(), checkpoint_every=2, log_every=1)
    stage_c, resumed = _dit_stage(4, pool)
    final = train_stage(stage_c, tmp_path / "b", _NullLog(), checkpoint_every=2, log_every=1)
    assert calls["n"] == 2 and final["step"] == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_latent_folder_reads_pre_encoded_clips(tmp_path):
    latents = _latents(batch=3, frames=2)
    save_latent_clip(tmp_path / "a.safetensors", latents[0], caption_text="a red circle moves left")
    save_latent_clip(
        tmp_path / "b.safetensors", latents[1], caption_text="a blue square", prompt_embeds=torch.ones(5, 16)
    )
    save_latent_clip(tmp_path / "c.safetensors", latents[2], prompt_embeds=torch.ones(7, 16))
    folder = LatentFolder(tmp_path)
    assert len(folder) == 3 and folder.latent_shape == (16, 2, 4, 4)
    batch = folder.batch(np.random.default_rng(0), 4)
    assert batch.latents.shape == (4, 16, 2, 4, 4)
    assert (batch.captions is None) != (batch.prompt_embeds is None)
    torch.testing.assert_close(folder.item(0)[0], latents[0])
    assert folder.item(0)[1] == "a red circle moves left"

    save_latent_clip(tmp_path / "d.safetensors", torch.zeros(16, 3, 4, 4), caption_text="x")
    with pytest.raises(ValueError, match="mixes latent shapes"):
        LatentFolder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        LatentFolder(tmp_path / "empty")


def test_latent_pool_round_trips_and_draws_fresh_captions(tmp_path):
    pool = _pool()
    pool.save(tmp_path / "pool.safetensors")
    loaded = LatentPool.load(tmp_path / "pool.safetensors")
    torch.testing.assert_close(loaded.latents, pool.latents)
    assert loaded.image_positions == (2,) and loaded.num_frames == 9
    batch = loaded.batch(np.random.default_rng(0), 3)
    assert len(batch.captions) == 3 and all(isinstance(c, str) and c for c in batch.captions)
    assert batch.image_latents.shape == (3, 16, 1, 4, 4)


@pytest.mark.slow
def test_train_demo_command_runs_every_stage_end_to_end_and_exports_a_loadable_model(tmp_path, capsys):
    from pusa.main import main
    from pusa.pipeline import PusaPipeline

    run, model = tmp_path / "run", tmp_path / "model"
    args = ["train", "demo", "--tiny", "--run-dir", str(run), "--export-dir", str(model)]
    assert main([*args, "--set", "vta.steps=3"]) == 0
    assert json.loads((run / "config.json").read_text())["vta"]["steps"] == 3
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records if r.get("event") == "finished"} == {"vae", "decoder", "base", "vta"}
    # The decoder stage changes the decoder only: the encoder (so every latent of the pool) is the VAE stage's.
    vae_state = torch.load(run / "vae" / "checkpoint.pt", weights_only=False)["modules"]["vae"]
    tuned = torch.load(run / "decoder" / "checkpoint.pt", weights_only=False)["modules"]["vae"]
    for name, value in vae_state.items():
        same = torch.equal(value, tuned[name])
        assert same == (not name.startswith(("decoder.", "post_quant_conv."))) or name.endswith(
            "num_batches_tracked"
        ), name
    # Run again: every stage is finished, nothing retrains; --tiny on an existing run is refused.
    assert main(["train", "demo", "--run-dir", str(run), "--stages", "vta"]) == 0
    assert main(args) == 2 and "--tiny starts new runs only" in capsys.readouterr().err

    assert json.loads((model / "training_config.json").read_text())["vta"]["steps"] == 3  # what made it
    pipe = PusaPipeline.from_model(model)  # the folder's manifest: native size + its LoRA
    assert pipe.lora is not None and pipe.defaults.num_frames == 9
    out = pipe.text_to_video("a red circle moves left", num_inference_steps=1, seed=0)
    assert out.frames.shape == (9, 32, 32, 3)
    assert out.settings["lora"].endswith("pusa_tiny_lora.safetensors")
    # The model's own LoRA strength (vta.alpha) is its default; a request may still name another.
    assert out.settings["lora_alpha"] == pipe.defaults.lora_alpha == VtaConfig().alpha
    assert pipe.text_to_video("x", num_inference_steps=1, lora_alpha=2.0).settings["lora_alpha"] == 2.0
    base = PusaPipeline.from_model(model, lora=None)
    assert base.lora is None
    fused = dict(pipe.transformer.named_parameters())
    changed = [n for n, w in base.transformer.named_parameters() if not torch.equal(w, fused[n])]
    assert changed and all(n.endswith(".weight") and ".blocks." in f".{n}" for n in changed)  # LoRA-fused

    # The same VTA loop on "a real model folder" with pre-encoded latents (here the exported tiny model).
    latents = tmp_path / "latents"
    for i in range(3):
        channels = pipe.transformer.config.in_channels  # the tiny config's vae.z_dim
        save_latent_clip(
            latents / f"{i}.safetensors", torch.randn(channels, 3, 4, 4), caption_text=f"clip {i}"
        )
    vta_args = [
        "train",
        "vta",
        "--model",
        str(model),
        "--latents",
        str(latents),
        "--run-dir",
        str(tmp_path / "v"),
    ]
    assert main([*vta_args, "--set", "vta.steps=2", "--set", "vta.rank=2", "--set", "vta.batch_size=2"]) == 0
    lora = load_lora(tmp_path / "v" / "pusa_lora.safetensors")
    fuser = LoraFuser(pipe.transformer, lora)  # every key lands on the model
    assert fuser is not None
    assert main([*vta_args, "--set", "base.steps=1"]) == 2
    assert "pusa train vta takes vta.*" in capsys.readouterr().err


def test_training_run_trains_a_4x_spatial_vae_with_a_matching_dit_patch(tmp_path):
    """vae.dim_mult with 2 downsamples gives 4x spatial (still 4x temporal); dit.patch_size (1, 4, 4) keeps the
    token count. The exported model generates at its native size and the pipeline reads the new factors."""
    from pusa.main import main
    from pusa.pipeline import PusaPipeline

    run, model = tmp_path / "run", tmp_path / "model"
    args = ["train", "demo", "--tiny", "--run-dir", str(run), "--export-dir", str(model)]
    overrides = ["--set", "vae.dim_mult=[1,1,1]", "--set", "dit.patch_size=[1,4,4]", "--set", "vta.steps=2",
                 "--set", "dit.attention_head_dim=32",  # 2 x 32 wide for 4x4x4 values per token
                 "--set", "base.object_weight=10"]  # fmt: skip
    assert main([*args, *overrides]) == 0
    assert json.loads((run / "config.json").read_text())["dit"]["patch_size"] == [1, 4, 4]
    pipe = PusaPipeline.from_model(model)
    assert pipe.vae_scale == (4, 4) and tuple(pipe.transformer.config.patch_size) == (1, 4, 4)
    out = pipe.text_to_video("a red circle moves left", num_inference_steps=1, seed=0)
    assert out.frames.shape == (9, 32, 32, 3)


def test_a_dit_narrower_than_its_token_values_is_refused_before_training(tmp_path, capsys):
    """4x4 patches of 16 latent channels are 256 values per token: a 128-wide DiT can only predict a 128-dim
    part of them, so its samples keep noise forever (what the s4 run showed). Refused before any stage runs."""
    from pusa.main import main

    run = tmp_path / "run"
    args = ["train", "demo", "--tiny", "--run-dir", str(run), "--set", "vae.z_dim=16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "dit: each token predicts 64 values (patch [1, 2, 2] x vae.z_dim=16) but the transformer is 16 wide"
        in err
    )
    assert not (run / "vae").exists()
    check_dit_width(
        DitConfig(num_attention_heads=4, attention_head_dim=32, patch_size=(1, 2, 2)), 16
    )  # v3: fits
    with pytest.raises(ValueError, match="predicts 256 values"):
        check_dit_width(DitConfig(num_attention_heads=4, attention_head_dim=32, patch_size=(1, 4, 4)), 16)
    check_dit_width(DitConfig(num_attention_heads=4, attention_head_dim=32, patch_size=(1, 4, 4)), 4)


def test_vae_needs_two_downsamples_for_4x_temporal():
    from pusa.train.builders import vae_temporal_downsample

    assert vae_temporal_downsample((1, 2, 4, 4)) == [False, True, True]
    assert vae_temporal_downsample((1, 2, 4)) == [True, True]
    with pytest.raises(ValueError, match=r"vae.dim_mult=\[1, 2\] gives 1 downsample"):
        build_vae(VaeConfig(dim_mult=(1, 2)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no GPU is")
def test_train_demo_names_a_device_it_cannot_use(tmp_path, capsys):
    from pusa.main import main

    run = str(tmp_path / "run")
    assert main(["train", "demo", "--tiny", "--run-dir", run, "--device", "cuda"]) == 2
    assert "--device='cuda' is not available: no CUDA device here" in capsys.readouterr().err
    assert main(["train", "demo", "--tiny", "--run-dir", run, "--device", "gpu0"]) == 2
    assert "--device='gpu0' is not a torch device; use cpu or cuda (cuda:N)" in capsys.readouterr().err
    assert main(["train", "demo", "--tiny", "--run-dir", run, "--device", "meta"]) == 2
    assert "training runs on cpu or cuda" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_run_started_from_a_model_folder_fine_tunes_it_on_several_clip_lengths(tmp_path, capsys):
    """`--set init=FOLDER`: the tokenizer and VAE are the folder's, the decoder, base and VTA stages start from
    its weights (at lr 0 the export is the folder again, bit for bit), every training length gets a pool of
    latents normalized by the folder's statistics, and the export declares the lengths it trained on."""
    from safetensors.torch import load_file

    from pusa.main import main
    from pusa.pipeline import PusaPipeline

    first, model = tmp_path / "first", tmp_path / "model"
    assert main(["train", "demo", "--tiny", "--run-dir", str(first), "--export-dir", str(model)]) == 0
    run, tuned = tmp_path / "run", tmp_path / "tuned"
    frozen = [f"--set={stage}.lr=0" for stage in ("decoder", "base", "vta")]
    args = ["train", "demo", "--tiny", "--run-dir", str(run), "--export-dir", str(tuned)]
    assert main([*args, f"--set=init={model}", "--set=clip.train_frames=[13]", *frozen]) == 0
    for part in ("vae", "transformer", "text_encoder"):
        ours = load_file(str(next((tuned / part).glob("*.safetensors"))))
        theirs = load_file(str(next((model / part).glob("*.safetensors"))))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), part
    ours, theirs = (
        load_lora(tuned / "pusa_tiny_lora.safetensors"),
        load_lora(model / "pusa_tiny_lora.safetensors"),
    )
    assert all(torch.equal(ours.modules[m][i], theirs.modules[m][i]) for m in theirs.modules for i in (0, 1))
    vae_config = json.loads((model / "vae" / "config.json").read_text())
    assert (run / "tokenizer").is_dir() and json.loads((run / "latent_stats.json").read_text()) == {
        "latents_mean": vae_config["latents_mean"], "latents_std": vae_config["latents_std"],
    }  # fmt: skip
    native, longer = LatentPool.load(run / "pool.safetensors"), LatentPool.load(run / "pool-13f.safetensors")
    assert (native.num_frames, longer.num_frames) == (9, 13)
    assert longer.latents.shape[2] == 4 and len(longer) == round(
        len(native) * 3 / 4
    )  # ~ as many latent frames
    manifest = json.loads((tuned / "pusa_model.json").read_text())
    assert manifest["trained"] == {"num_frames": [9, 13], "sizes": [[32, 32]]}
    assert manifest["fine_tuned_from"]["trained_steps"]["base"] == 4
    assert (
        PusaPipeline.from_model(tuned)
        .text_to_video("x", num_frames=13, num_inference_steps=1)
        .frames.shape[0]
        == 13
    )

    # Bad settings are named before anything trains.
    assert main(["train", "demo", "--tiny", "--run-dir", str(tmp_path / "a"), "--set=init=/nowhere"]) == 2
    assert "init='/nowhere': no such folder" in capsys.readouterr().err
    assert (
        main(["train", "demo", "--tiny", "--run-dir", str(tmp_path / "b"), "--set=clip.train_frames=[12]"])
        == 2
    )
    assert "12 is not a clip length" in capsys.readouterr().err
