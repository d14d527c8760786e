"""The Pusa training recipe in miniature (pusa-algorithm.md section 7), and the `pusa-tiny` demo model.

Stages, each resumable from `<run_dir>/<stage>/checkpoint.pt`:

    tokenizer  a sentencepiece vocabulary for the world's captions (seconds)
    vae        train a small Wan VAE (AutoencoderKLWan) on short windows of world clips: L1 + MSE + anchors
    decoder    fine-tune its decoder on whole clips, encoder frozen (the latents stay the same)
    pool       encode a pool of world clips once with the frozen VAE; set the VAE's latents_mean/std from it
    base       text-to-video base: DiT + umT5 encoder trained together with flow matching, ONE shared
               timestep per clip (as Wan was trained)
    vta        Pusa's vectorized-timestep adaptation: a LoRA on the frozen base, trained with an independent
               timestep per latent frame (plus clips shaped like the conditioning tasks)
    export     write the diffusers-layout model folder + the LoRA in pusa_v1.pt's key style

Run everything (`pusa train demo --run-dir runs/pusa-tiny`), or one stage (`--stages base`). Progress goes to
a tqdm bar and to `<run_dir>/log.jsonl`. The VTA stage also runs on a real Wan folder with a folder of
pre-encoded latents (`pusa train vta --model DIR --latents DIR`): see `train_vta_on_folder`.

The flow-matching conventions are the sampler's (pusa-algorithm.md section 4): `x_s = (1 - s) x0 + s eps`,
the network predicts `v = eps - x0` at timestep `1000 s`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pusa import presets
from pusa.loading import PUSA_LORA_TARGETS
from pusa.model import PusaTransformer3DModel
from pusa.schedule import shift_sigmas
from pusa.train import STAGES
from pusa.train.data import (
    LatentBatch,
    LatentFolder,
    LatentPool,
    render_pixels,
    video_pixels,
    world_pixel_batch,
)
from pusa.train.detector import DEFAULT_THRESHOLD, analyze_clip
from pusa.train.world import (
    LINEAR_MOTIONS,
    OBJECT_COLORS,
    SHAPES,
    TRAIN_SEED_LIMIT,
    ClipSpec,
    caption,
    eval_specs,
    render_clip,
    sample_clip_spec,
)

LORA_TARGETS = PUSA_LORA_TARGETS


# ---------------------------------------------------------------------------------------------- configs
@dataclass
class ClipConfig:
    num_frames: int = 17  # 4k+1; 17 frames -> 5 latent frames, enough for keyframes and extension demos
    width: int = 64
    height: int = 64
    fps: float = 8.0


@dataclass
class TokenizerConfig:
    vocab_size: int = 192  # at most: ~90 caption words, their pieces, characters (the corpus gives ~166)
    num_captions: int = 20000  # generated captions the vocabulary is learned from
    max_sequence_length: int = 32  # longest caption is ~20 tokens; longer prompts are truncated


@dataclass
class VaeConfig:
    # AutoencoderKLWan: 4x spatial (2 downsamples), 4x causal temporal, 4 latent channels. Wan's own VAE is 8x
    # spatial with 16 channels; at 64x64 with objects of 8-16 px that loses their outline (every shape decoded
    # as a round blob: the detector read 23% of shapes right, chance), 4x keeps it (56-81%).
    # base_dim 8 trains at ~1 s/step on 2 CPU cores and reaches ~30 dB on the world.
    base_dim: int = 8
    # One spatial 2x downsample between consecutive entries; the last two also halve time (4x temporal, as
    # Wan). (1, 2, 4, 4) gives Wan's 8x spatial: pair it with dit.patch_size (1, 2, 2).
    dim_mult: tuple[int, ...] = (1, 2, 4)
    # 4x4 latent pixels x 4 channels = 64 values per DiT token: they must fit the DiT's width (`check_dit_width`)
    z_dim: int = 4
    num_res_blocks: int = 1
    steps: int = 4000
    batch_size: int = 8
    window: int = 9  # frames per training clip: 1 + 4 + 4, so the first-frame and the 4-frame paths train
    crop: int | None = 32  # train on random crops (the VAE is convolutional): 4x cheaper per clip than 64x64
    lr: float = 2e-3
    warmup: int = 20
    latent_noise: float = 0.1  # decoder input = posterior mean + this * N(0, 1): a smooth latent space
    latent_weight: float = 1e-4  # penalty on mean(latent**2); keeps the scale bounded (rescaled later anyway)
    anchor_weight: float = 1.0  # see train_vae
    object_weight: float = 10.0  # object pixels weigh 1 + this in the loss (see DecoderConfig.object_weight)
    eval_every: int = 100
    eval_clips: int = 4
    # Wall-clock budget; the stage ends at `steps` or at this, whichever first. The defaults of every stage are
    # the settings that made the shipped pusa-tiny on 2 CPU cores (~2.5 hours in all), except that its base was
    # trained in two parts (README: "The built-in model").
    minutes: float | None = 25


@dataclass
class DecoderConfig:
    # Stage "decoder": the VAE's decoder (encoder frozen, so latents do not change) fine-tuned on whole clips.
    # The VAE stage trains on short windows (cheap), which leaves the causal decoder drifting on the latent
    # frames it never reached (measured: frames 12-16 of a 17-frame clip at 17-22 dB vs 28 dB for frames 0-8).
    steps: int = 1200
    batch_size: int = 4
    lr: float = 5e-4
    warmup: int = 10
    latent_noise: float = 0.05
    # Pixels of the object (far from their row's background) weigh 1 + object_weight in the loss. The object
    # covers ~3% of a frame, so an unweighted loss buys PSNR with the background and leaves the object's
    # colour and outline blurred (measured before this: red decoded as orange, cyan and purple as blue, every
    # shape as a round blob, while the clip PSNR read 28 dB).
    object_weight: float = 10.0
    eval_every: int = 200
    eval_clips: int = 16
    minutes: float | None = 15


@dataclass
class PoolConfig:
    num_clips: int = 4000  # world clips encoded once for the DiT stages (~0.05 s each on the CPU)
    batch_size: int = 32
    image_positions: tuple[int, ...] = (2, 4)  # slots also encoded from single frames (keyframe/end images)


@dataclass
class TextEncoderConfig:
    # umT5 encoder at toy size; trained jointly with the base DiT (it starts random).
    d_model: int = 64
    d_kv: int = 16
    d_ff: int = 128
    num_layers: int = 2
    num_heads: int = 4
    relative_attention_num_buckets: int = 16


@dataclass
class DitConfig:
    # PusaTransformer3DModel: 5 x 4 x 4 = 80 tokens per 17x64x64 clip; ~1.8M parameters.
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 512
    num_layers: int = 6
    freq_dim: int = 64
    rope_max_seq_len: int = 32
    patch_size: tuple[int, ...] = (1, 4, 4)  # (frames, height, width) of latent per token (16x16 latents)


@dataclass
class BaseConfig:
    # 13000 steps, ~80 min on 2 cores. Direction is learned last: the shipped base's direction gap
    # (`caption_sensitivity`) stayed ~0 for 4500 steps, while colour's was already 0.16.
    steps: int = 13000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    # Training sigmas: u ~ U(0, 1) through the shift map. 8 puts most samples at the high noise where the
    # layout, and so the motion's direction, forms: resumed from the same checkpoint with the same batches,
    # shift 8 grew the direction gap about twice as fast as shift 3 (0.023 vs 0.014 after 1300 steps).
    shift: float = 8.0
    caption_dropout: float = 0.1  # -> "" or the default negative prompt, so classifier-free guidance works
    ema_decay: float = 0.998
    # Latent cells the object touches weigh 1 + this in the flow-matching loss (as the decoder's object_weight
    # does for pixels): the object is ~7% of the cells, so an unweighted loss spends the model on the
    # background. Needs a pool of world clips (the masks are rendered from its seeds). The shipped base ran
    # 10000 steps at 0, then 3000 at 10: caption gaps colour 0.18 -> 0.28, shape 0.022 -> 0.040, direction
    # 0.074 -> 0.15; T2V on 44 held-out clips shape 34% -> 41%, direction 38% -> 81%.
    object_weight: float = 10.0
    minutes: float | None = None  # wall-clock budget (see VaeConfig.minutes); None: run all `steps`
    eval_every: int = 500  # log `caption_sensitivity` (a few seconds) every this many steps; 0: never


@dataclass
class VtaConfig:
    rank: int = 32  # no rank scaling: the delta is up @ down, as pusa_v1.pt (PEFT alpha = rank)
    steps: int = 10000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 0.0
    shift: float = 3.0
    # Fraction of samples shaped like the conditioning tasks (some frames at m * sigma, the rest at sigma);
    # the others get fully independent per-frame sigmas, as upstream.
    task_fraction: float = 0.5
    # In task-shaped samples, how often a conditioned slot holds the single-image latent the pipeline feeds.
    image_latent_fraction: float = 0.5
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    # The exported model's default LoRA strength. Chosen by `pusa eval demo --alphas 0.6,1.0,1.4` on the
    # shipped LoRA: 0.6 gave the best T2V and start-end/keyframe frames; 1.4 (Pusa V1's) moved objects off
    # their keyframes (2.0 px vs 1.1) and lost colour (55% vs 100%). The same held for the LoRA before it.
    alpha: float = 0.6
    # 30 min on 2 cores (the shipped LoRA: 4946 steps). An earlier LoRA on an older base, 20 min (2500 steps)
    # vs 65 (9926), alpha 1.0 / 1.4: T2V direction 12% / 6% -> 31% / 31%, I2V motion 55% / 45% -> 59% / 59%.
    minutes: float | None = 30  # wall-clock budget (see VaeConfig.minutes)


@dataclass
class RunConfig:
    seed: int = 0
    clip: ClipConfig = field(default_factory=ClipConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    dit: DitConfig = field(default_factory=DitConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    vta: VtaConfig = field(default_factory=VtaConfig)
    checkpoint_every: int = 100  # steps
    log_every: int = 10
    num_threads: int | None = None  # torch CPU threads (None: torch's default)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if isinstance(value, dict):
                sub = type(f.default_factory())  # type: ignore[misc]
                value = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            kwargs[f.name] = value
        return cls(**kwargs)


def tiny_test_config() -> RunConfig:
    """A seconds-long version of the recipe for tests: the same code at toy sizes."""
    return RunConfig(
        clip=ClipConfig(num_frames=9, width=32, height=32),
        tokenizer=TokenizerConfig(vocab_size=120, num_captions=1500, max_sequence_length=24),
        vae=VaeConfig(  # 8x spatial, 4 latent channels: the 16-wide DiT predicts 2x2x4 values per token
            base_dim=4, z_dim=4, dim_mult=(1, 1, 1, 1), steps=4, batch_size=2, eval_every=2, eval_clips=1
        ),
        decoder=DecoderConfig(steps=3, batch_size=2, eval_every=3, eval_clips=1, minutes=None),
        pool=PoolConfig(num_clips=8, batch_size=4, image_positions=(2,)),
        text_encoder=TextEncoderConfig(d_model=16, d_kv=4, d_ff=32, num_heads=2),
        dit=DitConfig(
            num_attention_heads=2,
            attention_head_dim=8,
            ffn_dim=32,
            num_layers=2,
            freq_dim=16,
            patch_size=(1, 2, 2),
        ),
        base=BaseConfig(steps=4, batch_size=4, warmup=1),
        vta=VtaConfig(rank=4, steps=4, batch_size=4, warmup=1),
        checkpoint_every=2,
        log_every=1,
    )


# ---------------------------------------------------------------------------------------------- models
def build_vae(
    cfg: VaeConfig, latents_mean: list[float] | None = None, latents_std: list[float] | None = None
):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=cfg.base_dim,
        z_dim=cfg.z_dim,
        dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        temperal_downsample=vae_temporal_downsample(cfg.dim_mult),
        latents_mean=latents_mean or [0.0] * cfg.z_dim,
        latents_std=latents_std or [1.0] * cfg.z_dim,
    )


def build_text_encoder(cfg: TextEncoderConfig, vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **asdict(cfg)))


def vae_temporal_downsample(dim_mult: tuple[int, ...]) -> list[bool]:
    """Which of the VAE's `len(dim_mult) - 1` spatial downsamples also halve time: the last two (4x temporal)."""
    levels = len(dim_mult) - 1
    if levels < 2:
        raise ValueError(
            f"vae.dim_mult={list(dim_mult)} gives {max(levels, 0)} downsample(s); at least 3 entries are needed "
            "(4x temporal compression takes two)"
        )
    return [False] * (levels - 2) + [True, True]


def check_dit_width(cfg: DitConfig, z_dim: int) -> None:
    """The DiT must be at least as wide as the values each token predicts (patch volume x latent channels).

    Its output layer maps the width to those values, so a narrower model predicts velocities in a
    subspace: the starting noise outside it is never removed and every sample stays noisy, however long
    it trains (the 4x-spatial s4 run: 4x4 patches of 16 channels = 256 values from a 128-wide model).
    """
    width = cfg.num_attention_heads * cfg.attention_head_dim
    values = math.prod(cfg.patch_size) * z_dim
    if width < values:
        raise ValueError(
            f"dit: each token predicts {values} values (patch {list(cfg.patch_size)} x vae.z_dim={z_dim}) but the "
            f"transformer is {width} wide (dit.num_attention_heads x dit.attention_head_dim); it could never "
            f"remove all the noise. Widen it to >= {values}, or use a smaller dit.patch_size or vae.z_dim"
        )


def build_transformer(cfg: DitConfig, text_dim: int, z_dim: int = 16) -> PusaTransformer3DModel:
    check_dit_width(cfg, z_dim)
    return PusaTransformer3DModel(
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=text_dim,
        **asdict(cfg),
    )


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# ---------------------------------------------------------------------------------------------- LoRA
class LoraLinear(nn.Module):
    """`base(x) + x @ down.T @ up.T`: a trainable low-rank delta `up @ down` beside a frozen Linear.

    `up` starts at zero, so the wrapped model starts equal to the base. No rank scaling: the delta is exactly
    what `loading.LoraFuser` adds at alpha 1.
    """

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(
            F.linear(x.to(self.down.dtype), self.down), self.up
        )  # float32 LoRA on any base dtype
        return self.base(x) + delta.to(x.dtype)


def add_lora(model: nn.Module, rank: int, targets: Iterable[str] = LORA_TARGETS) -> dict[str, LoraLinear]:
    """Wrap every `blocks.{i}.<target>` Linear of `model` in a `LoraLinear`; returns them by module name."""
    wrapped = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not any(name.endswith("." + t) for t in targets):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lora = LoraLinear(module, rank).to(module.weight.device)
        setattr(parent, child, lora) if not child.isdigit() else parent.__setitem__(int(child), lora)
        wrapped[name] = lora
    if not wrapped:
        raise ValueError(f"no Linear named like {list(targets)} in the model")
    return wrapped


def lora_state(wrapped: dict[str, LoraLinear]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{diffusers module name: (down [r, in], up [out, r])}`, the form `loading.save_lora_original` takes."""
    return {name: (m.down.detach().clone(), m.up.detach().clone()) for name, m in wrapped.items()}


# ---------------------------------------------------------------------------------------------- training loop
def cosine_lr(step: int, progress: float, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio * lr` as `progress` goes 0 -> 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class RunLog:
    """Appends one JSON object per line to `<run_dir>/log.jsonl` (stage, step, loss, lr, ...)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "log.jsonl"

    def write(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


@dataclass
class Stage:
    """What the loop needs to train one stage.

    modules: everything whose state a checkpoint keeps, by name.
    trainable: the named parameters the optimizer updates (an EMA copy of them is kept too).
    loss_fn(step) -> (loss, extra metrics): builds its own batch from the step number, so a resumed run sees
        the same batches as an uninterrupted one.
    """

    name: str
    modules: dict[str, nn.Module]
    trainable: dict[str, nn.Parameter]
    loss_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]]
    steps: int
    lr: float
    warmup: int
    weight_decay: float = 0.0
    ema_decay: float | None = None
    eval_fn: Callable[[], dict[str, float]] | None = None
    eval_every: int = 0
    # Wall-clock budget: on a shared CPU the step rate varies, so a stage may end (and its learning rate
    # anneal) by time instead of by step count: progress = max(step / steps, elapsed / budget).
    time_budget_s: float | None = None


def checkpoint_path(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "checkpoint.pt"


def load_checkpoint(run_dir: Path, stage: str) -> dict[str, Any]:
    path = checkpoint_path(run_dir, stage)
    if not path.is_file():
        raise FileNotFoundError(f"stage {stage!r} has no checkpoint at {path}; run that stage first")
    return torch.load(path, map_location="cpu", weights_only=False)


def stage_finished(run_dir: Path, stage: str) -> bool:
    path = checkpoint_path(run_dir, stage)
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=False)
    return bool(state.get("finished"))


def train_stage(stage: Stage, run_dir: Path, log: RunLog, checkpoint_every: int, log_every: int) -> dict:
    """The loop: resume if a checkpoint exists, then step, log, checkpoint. Returns the final checkpoint."""
    path = checkpoint_path(run_dir, stage.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = list(stage.trainable.values())
    # On a GPU the tiny models are launch-bound: one fused optimizer kernel, one EMA call, and no
    # host-device sync except on logging steps.
    fused = all(p.device.type == "cuda" for p in params) or None
    optimizer = torch.optim.AdamW(
        params, lr=stage.lr, betas=(0.9, 0.99), weight_decay=stage.weight_decay, fused=fused
    )
    ema = {name: p.detach().clone() for name, p in stage.trainable.items()} if stage.ema_decay else None
    step, elapsed_before = 0, 0.0
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)
        for name, module in stage.modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        ema = state.get("ema")
        if ema is not None:  # saved from wherever it trained; continue where the parameters are now
            ema = {name: ema[name].to(p.device) for name, p in stage.trainable.items()}
        step, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        torch.set_rng_state(state["torch_rng"])
        log.write(stage=stage.name, event="resume", step=step)

    started = time.perf_counter()

    def progress() -> float:
        done = step / stage.steps
        if stage.time_budget_s:
            done = max(done, (elapsed_before + time.perf_counter() - started) / stage.time_budget_s)
        return done

    def save(finished: bool = False) -> dict:
        state = {
            "stage": stage.name,
            "step": step,
            "steps": stage.steps,
            "finished": finished,
            "elapsed_s": elapsed_before + time.perf_counter() - started,
            "modules": {name: m.state_dict() for name, m in stage.modules.items()},
            "optimizer": optimizer.state_dict(),
            "ema": ema,
            "torch_rng": torch.get_rng_state(),
        }
        _atomic_save(state, path)
        return state

    for module in stage.modules.values():
        module.train()
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, dynamic_ncols=True)
    running, state = None, None  # running: on-device EMA of the loss, read on logging steps
    while progress() < 1.0:
        lr = cosine_lr(step, progress(), stage.lr, stage.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, metrics = stage.loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                targets = [ema[name] for name in stage.trainable]
                torch._foreach_lerp_(targets, [p.detach() for p in params], 1.0 - stage.ema_decay)
        step += 1
        loss = loss.detach()
        running = loss.clone() if running is None else running.mul_(0.95).add_(loss, alpha=0.05)
        bar.update(1)
        if step % log_every == 0 or step == stage.steps:
            value, average = loss.item(), running.item()
            bar.set_postfix(loss=f"{average:.4f}", lr=f"{lr:.1e}")
            elapsed = elapsed_before + time.perf_counter() - started
            log.write(stage=stage.name, step=step, loss=value, loss_avg=average, lr=lr,
                      grad_norm=float(grad_norm), elapsed_s=round(elapsed, 1), **metrics)  # fmt: skip
        if stage.eval_fn is not None and stage.eval_every and step % stage.eval_every == 0:
            for module in stage.modules.values():
                module.eval()
            result = stage.eval_fn()
            for module in stage.modules.values():
                module.train()
            log.write(stage=stage.name, step=step, event="eval", **result)
            bar.write(f"{stage.name} step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.items()))
        if step % checkpoint_every == 0:
            state = save()
    state = save(finished=True)
    log.write(stage=stage.name, event="finished", step=step, elapsed_s=round(state["elapsed_s"], 1))
    bar.close()
    for module in stage.modules.values():
        module.eval()
    return state


def _apply_ema(stage_state: dict, module: nn.Module, prefix: str) -> None:
    """Copy the EMA of a checkpoint's trainable parameters named `prefix.<param>` into `module`."""
    ema = stage_state.get("ema") or {}
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in ema.items():
            if name.startswith(prefix + "."):
                params[name[len(prefix) + 1 :]].copy_(value)


# ---------------------------------------------------------------------------------------------- stage: tokenizer
def _tokenizer_corpus(cfg: RunConfig) -> list[str]:
    from pusa.pipeline import DEFAULT_NEGATIVE_PROMPT

    rng = np.random.default_rng((cfg.seed, 7))
    lines = []
    for _ in range(cfg.tokenizer.num_captions):
        spec = sample_clip_spec(rng, cfg.clip.num_frames, cfg.clip.width, cfg.clip.height)
        lines.append(caption(spec, rng))
    # The negative prompt is the unconditional text for CFG; a few copies keep its pieces in the vocabulary.
    lines += [DEFAULT_NEGATIVE_PROMPT] * 20
    return lines


def make_tokenizer(run_dir: Path, cfg: RunConfig) -> Path:
    """Train the sentencepiece model and save a T5 tokenizer folder (`<run_dir>/tokenizer`)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    out = run_dir / "tokenizer"
    if (out / "tokenizer_config.json").is_file():
        return out
    raw = run_dir / "tokenizer_sp"
    raw.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_corpus(cfg)),
        model_prefix=str(raw / "spiece"),
        vocab_size=cfg.tokenizer.vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,  # the captions may not support vocab_size pieces; take what they do
        minloglevel=2,
    )
    tokenizer = T5Tokenizer.from_pretrained(str(raw), extra_ids=0)
    tokenizer.model_max_length = cfg.tokenizer.max_sequence_length
    tokenizer.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------- stage: VAE
def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """PSNR in dB of two uint8 images/videos (or float arrays in 0..255)."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def object_mask(pixels: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, grow: int = 1) -> torch.Tensor:
    """`[B, 1, F, H, W]` float mask of the object in world clips `[B, 3, F, H, W]` (values in -1..1).

    As the detector does it: a pixel is object when it lies more than `threshold` (0..255 RGB units) from
    its row's median colour (world backgrounds vary only slowly down a row), grown by `grow` pixels.
    """
    background = pixels.median(dim=-1, keepdim=True).values  # [B, 3, F, H, 1]
    distance = (pixels - background).norm(dim=1, keepdim=True) * 127.5  # [B, 1, F, H, W]
    mask = (distance > threshold).float()
    if grow:
        size = 2 * grow + 1
        mask = F.max_pool3d(mask, (1, size, size), stride=1, padding=(0, grow, grow))
    return mask


def weighted_reconstruction_loss(
    recon: torch.Tensor, pixels: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, MSE) of `recon` vs `pixels` `[B, 3, F, H, W]`, each pixel weighted by `weight` `[B, 1, F, H, W]`
    rescaled to mean 1 (a uniform weight gives the plain means)."""
    weight = weight / weight.mean()
    return ((recon - pixels).abs() * weight).mean(), ((recon - pixels).pow(2) * weight).mean()


@torch.no_grad()
def vae_psnr(vae, cfg: RunConfig, num_clips: int, seed: int = 1) -> dict[str, float]:
    """Reconstruction quality on held-out clips: PSNR of the whole clip, of its object pixels alone, of the
    first frame encoded alone, and how often the detector reads the right colour and shape from the clip."""
    specs = eval_specs(num_clips, seed, cfg.clip.num_frames, cfg.clip.width, cfg.clip.height)
    videos = np.stack([render_clip(spec) for spec in specs])  # [B, F, H, W, 3]
    pixels = video_pixels(videos)
    recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1).numpy()
    on_object = object_mask(pixels, grow=0)[:, 0].numpy() > 0  # [B, F, H, W]
    last = pixels[:, :, -1:]
    last_recon = vae.decode(vae.encode(last).latent_dist.mode()).sample
    last_recon = ((last_recon.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1).numpy()
    analyses = [analyze_clip(clip.astype(np.uint8)) for clip in recon]
    return {
        "psnr_clip": psnr(recon, videos),
        "psnr_object": psnr(recon[on_object], videos[on_object]),
        "psnr_image": psnr(last_recon[:, 0], videos[:, -1]),
        "color_acc": float(np.mean([a.color == s.color for a, s in zip(analyses, specs, strict=True)])),
        "shape_acc": float(np.mean([a.shape == s.shape for a, s in zip(analyses, specs, strict=True)])),
    }


def _random_crop(pixels: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random `size` x `size` window of each clip `[B, 3, F, H, W]` (multiples of 8 from the corner)."""
    height, width = pixels.shape[-2:]
    crops = []
    for clip in pixels:
        top = 8 * int(rng.integers((height - size) // 8 + 1))
        left = 8 * int(rng.integers((width - size) // 8 + 1))
        crops.append(clip[..., top : top + size, left : left + size])
    return torch.stack(crops)


def _pool_like(pixels: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """`[B, 3, F, H, W]` pixels averaged onto the latent grid `[B, 3, F_lat, h, w]` (frame 0 alone, then 4s)."""
    first = pixels[:, :, :1]
    rest = pixels[:, :, 1:]
    size = (latents.shape[3], latents.shape[4])
    pooled = [F.adaptive_avg_pool3d(first, (1, *size))]
    if rest.shape[2]:
        pooled.append(F.adaptive_avg_pool3d(rest, (latents.shape[2] - 1, *size)))
    return torch.cat(pooled, dim=2)


def train_vae(run_dir: Path, cfg: RunConfig, log: RunLog) -> None:
    """Stage (a): the VAE, on short windows of world clips (random seeds drawn from the step number)."""
    c, v = cfg.clip, cfg.vae
    torch.manual_seed(cfg.seed)
    vae = build_vae(v)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        seed = (cfg.seed * 1_000_003 + step) % TRAIN_SEED_LIMIT
        pixels = world_pixel_batch(seed, v.batch_size, c.num_frames, c.width, c.height, v.window)
        weight = 1.0 + v.object_weight * object_mask(pixels)  # on whole frames: the row medians need them
        if v.crop and v.crop < min(c.width, c.height):
            both = _random_crop(torch.cat([pixels, weight], 1), v.crop, np.random.default_rng((seed, 2)))
            pixels, weight = both[:, :3], both[:, 3:]
        mean = vae.encode(pixels).latent_dist.mean  # [B, 16, F_lat, h, w]
        # The posterior mean plus a small fixed noise, not a posterior sample: sampling at the initial unit
        # variance drowns the tiny latents and the decoder collapses to the average clip (measured).
        latents = mean + v.latent_noise * torch.randn_like(mean)
        recon = vae.decode(latents).sample
        l1, mse = weighted_reconstruction_loss(recon, pixels, weight)
        # Anchor: the first 3 latent channels regress the average colour of their pixels (8x8 at 8x spatial). At toy width the
        # Wan VAE otherwise sits for hundreds of steps on the average clip (encoder features barely depend on
        # the input at init); the anchor gives the decoder a usable signal from the first step.
        anchor = (mean[:, :3] - _pool_like(pixels, mean)).pow(2).mean()
        loss = l1 + mse + v.anchor_weight * anchor + v.latent_weight * mean.pow(2).mean()
        return loss, {"l1": l1.item(), "mse": mse.item(), "anchor": anchor.item()}

    stage = Stage(
        name="vae",
        modules={"vae": vae},
        trainable=dict(vae.named_parameters(prefix="vae")),
        loss_fn=loss_fn,
        steps=v.steps,
        lr=v.lr,
        warmup=v.warmup,
        eval_fn=lambda: vae_psnr(vae, cfg, v.eval_clips),
        eval_every=v.eval_every,
        time_budget_s=v.minutes * 60 if v.minutes else None,
    )
    train_stage(stage, run_dir, log, cfg.checkpoint_every, cfg.log_every)


def load_vae(run_dir: Path, cfg: RunConfig, decoder: bool = True):
    """The trained VAE, with latents_mean/std from the pool statistics once the pool exists, and the
    fine-tuned decoder of the "decoder" stage once it has a checkpoint (`decoder=False`: without it)."""
    state = load_checkpoint(run_dir, "vae")
    stats_path = run_dir / "latent_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    vae = build_vae(cfg.vae, stats.get("latents_mean"), stats.get("latents_std"))
    vae.load_state_dict(state["modules"]["vae"])
    if decoder and checkpoint_path(run_dir, "decoder").is_file():
        vae.load_state_dict(load_checkpoint(run_dir, "decoder")["modules"]["vae"])
    return vae.eval()


def train_decoder(run_dir: Path, cfg: RunConfig, log: RunLog) -> None:
    """Stage (a'): fine-tune the decoder on whole clips; the encoder (hence every latent) stays as it is."""
    c, d = cfg.clip, cfg.decoder
    vae = load_vae(run_dir, cfg, decoder=False)
    decoder_parts = ("decoder.", "post_quant_conv.")
    trainable = {}
    for name, param in vae.named_parameters():
        param.requires_grad_(name.startswith(decoder_parts))
        if param.requires_grad:
            trainable[f"vae.{name}"] = param

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        seed = (cfg.seed * 1_000_003 + 700_001 + step) % TRAIN_SEED_LIMIT
        pixels = world_pixel_batch(seed, d.batch_size, c.num_frames, c.width, c.height)  # whole clips
        with torch.no_grad():
            mean = vae.encode(pixels).latent_dist.mean
        generator = torch.Generator().manual_seed(seed)
        latents = mean + d.latent_noise * torch.randn(mean.shape, generator=generator)
        recon = vae.decode(latents).sample
        weight = 1.0 + d.object_weight * object_mask(pixels)  # [B, 1, F, H, W]
        l1, mse = weighted_reconstruction_loss(recon, pixels, weight)
        return l1 + mse, {"l1": l1.item(), "mse": mse.item()}

    stage = Stage(
        name="decoder",
        modules={"vae": vae},
        trainable=trainable,
        loss_fn=loss_fn,
        steps=d.steps,
        lr=d.lr,
        warmup=d.warmup,
        eval_fn=lambda: vae_psnr(vae, cfg, d.eval_clips),
        eval_every=d.eval_every,
        time_budget_s=d.minutes * 60 if d.minutes else None,
    )
    train_stage(stage, run_dir, log, cfg.checkpoint_every, cfg.log_every)


# ---------------------------------------------------------------------------------------------- stage: pool
@torch.no_grad()
def encode_pool(run_dir: Path, cfg: RunConfig, log: RunLog, device: str = "cpu") -> LatentPool:
    """Encode `pool.num_clips` world clips with the frozen VAE (on `device`); normalize them per channel."""
    path = run_dir / "pool.safetensors"
    if path.is_file():
        return LatentPool.load(path)
    c, p = cfg.clip, cfg.pool
    vae = load_vae(run_dir, cfg).to(device)
    seeds = np.random.default_rng((cfg.seed, 11)).integers(TRAIN_SEED_LIMIT, size=p.num_clips)
    latents, image_latents = [], []
    for start in tqdm(range(0, p.num_clips, p.batch_size), desc="pool", dynamic_ncols=True):
        chunk = seeds[start : start + p.batch_size]
        pixels = render_pixels(chunk, c.num_frames, c.width, c.height, device)  # [B, 3, F, H, W]
        latents.append(vae.encode(pixels).latent_dist.mode().cpu())  # [B, 16, F_lat, h, w]
        if p.image_positions:
            frames = pixels[:, :, [4 * k for k in p.image_positions]]  # [B, 3, K, H, W]
            singles = frames.permute(0, 2, 1, 3, 4).flatten(0, 1).unsqueeze(2)  # [B*K, 3, 1, H, W]
            encoded = vae.encode(singles).latent_dist.mode().cpu()  # [B*K, 16, 1, h, w]
            encoded = encoded.squeeze(2).unflatten(
                0, (len(chunk), len(p.image_positions))
            )  # [B, K, 16, h, w]
            image_latents.append(encoded.transpose(1, 2))  # [B, 16, K, h, w]
    raw = torch.cat(latents)
    mean = raw.mean(dim=(0, 2, 3, 4))  # [16]
    std = raw.std(dim=(0, 2, 3, 4))
    view = (1, -1, 1, 1, 1)
    pool = LatentPool(
        latents=(raw - mean.view(view)) / std.view(view),
        seeds=torch.from_numpy(seeds.astype(np.int64)),
        num_frames=c.num_frames,
        width=c.width,
        height=c.height,
        image_latents=(torch.cat(image_latents) - mean.view(view)) / std.view(view)
        if image_latents
        else None,
        image_positions=tuple(p.image_positions),
    )
    stats = {"latents_mean": mean.tolist(), "latents_std": std.tolist()}
    (run_dir / "latent_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    pool.save(path)
    log.write(stage="pool", event="done", num_clips=p.num_clips, **stats)
    return pool


# ---------------------------------------------------------------------------------------------- text
class TextEncoding:
    """Captions -> `[B, L, D]` embeddings exactly as `PusaPipeline.encode_prompt` makes them (padding zeroed).

    Token ids are cached per caption: captions repeat a lot and tokenizing is slower than the tiny encoder.
    """

    def __init__(self, tokenizer, text_encoder: nn.Module, max_length: int) -> None:
        self.tokenizer, self.text_encoder, self.max_length = tokenizer, text_encoder, max_length
        self._ids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._ids]
        if missing:
            out = self.tokenizer(missing, padding="max_length", max_length=self.max_length, truncation=True,
                                 add_special_tokens=True, return_attention_mask=True, return_tensors="pt")  # fmt: skip
            for i, text in enumerate(missing):
                self._ids[text] = (out.input_ids[i], out.attention_mask[i])
        ids = torch.stack([self._ids[t][0] for t in texts])
        mask = torch.stack([self._ids[t][1] for t in texts])
        return ids, mask

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokens(texts)
        device = next(self.text_encoder.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.text_encoder(ids, attention_mask=mask).last_hidden_state  # [B, L, D]
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def drop_captions(captions: list[str], rng: np.random.Generator, probability: float) -> list[str]:
    """Replace captions by "" or the default negative prompt with `probability`: the unconditional text of CFG."""
    from pusa.pipeline import DEFAULT_NEGATIVE_PROMPT

    out = []
    for text in captions:
        if rng.random() < probability:
            text = "" if rng.random() < 0.5 else DEFAULT_NEGATIVE_PROMPT
        out.append(text)
    return out


def sample_sigmas(rng: np.random.Generator, shape: tuple[int, ...], shift: float) -> torch.Tensor:
    """`shift(u)` with `u ~ U(0, 1)`, float32 of `shape`."""
    u = torch.from_numpy(rng.random(shape)).float()
    return shift_sigmas(u, shift)


def flow_matching_loss(
    transformer: nn.Module,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    text: torch.Tensor,
    noise: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the predicted and the true velocity `noise - latents`.

    latents, noise: `[B, C, F, h, w]`; sigmas: `[B]` (one per clip) or `[B, F]` (one per latent frame);
    weights: optional `[B, 1, F, h, w]` per latent cell, rescaled to mean 1 (uniform weights: the plain MSE).
    """
    weight = next(transformer.parameters())  # batches are built on the CPU; the model may live elsewhere
    latents, noise, sigmas = (t.to(weight.device, torch.float32) for t in (latents, noise, sigmas))
    per_frame = sigmas if sigmas.ndim == 2 else sigmas[:, None].expand(-1, latents.shape[2])  # [B, F]
    s = per_frame[:, None, :, None, None]  # [B, 1, F, 1, 1]
    noisy = (1 - s) * latents + s * noise
    velocity = transformer(
        noisy.to(weight.dtype), (sigmas * 1000.0).to(weight.dtype), text.to(weight.device, weight.dtype),
        return_dict=False,
    )[0]  # fmt: skip
    if weights is None:
        return F.mse_loss(velocity.float(), noise - latents)
    weights = weights.to(weight.device, torch.float32)
    return ((velocity.float() - (noise - latents)).pow(2) * (weights / weights.mean())).mean()


@torch.no_grad()
def pool_object_masks(pool: LatentPool, batch_size: int = 64) -> torch.Tensor:
    """`[N, 1, F_lat, h, w]`: 1 where a latent cell of a pool clip holds any object pixel (rendered again from
    the clip's world seed, so nothing is stored), else 0."""
    masks = []
    seeds = pool.seeds.tolist()
    for start in range(0, len(seeds), batch_size):
        pixels = render_pixels(seeds[start : start + batch_size], pool.num_frames, pool.width, pool.height)
        masks.append((_pool_like(object_mask(pixels, grow=0), pool.latents[:1]) > 0).float())
    return torch.cat(masks)


# ---------------------------------------------------------------------------------------------- stage: base
def build_base_models(run_dir: Path, cfg: RunConfig):
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    torch.manual_seed(cfg.seed + 1)
    text_encoder = build_text_encoder(cfg.text_encoder, len(tokenizer))
    transformer = build_transformer(cfg.dit, cfg.text_encoder.d_model, cfg.vae.z_dim)
    return tokenizer, text_encoder, transformer


CAPTION_ATTRIBUTES = ("color", "shape", "direction")


def swap_attribute(spec: ClipSpec, attribute: str, rng: np.random.Generator) -> ClipSpec:
    """`spec` with its colour, shape or (straight) direction replaced by another value drawn from `rng`."""
    field_name, values = {
        "color": ("color", tuple(OBJECT_COLORS)),
        "shape": ("shape", SHAPES),
        "direction": ("motion", LINEAR_MOTIONS),
    }[attribute]
    current = getattr(spec, field_name)
    others = [v for v in values if v != current]
    return dataclasses.replace(spec, **{field_name: others[int(rng.integers(len(others)))]})


@torch.no_grad()
def caption_sensitivity(
    transformer: nn.Module,
    encode: TextEncoding,
    pool: LatentPool,
    num_clips: int = 64,
    sigmas: Iterable[float] = (0.8, 0.9, 0.95),
    seed: int = 0,
) -> dict[str, float]:
    """How much the model listens to each part of the caption.

    For clips of the pool that move in a straight line: the flow-matching loss with every caption's colour,
    shape or direction swapped for a wrong one, minus the loss with the true captions (same latents, noise,
    sigmas and wording), averaged over `sigmas`. A gap near 0 means the model ignores those words: text-to-video
    then draws that attribute at random, whatever the prompt says. Keys `text_gap_<attribute>` and `loss`.
    """
    specs, index = [], []
    for i, clip_seed in enumerate(pool.seeds.tolist()):
        spec = sample_clip_spec(int(clip_seed), pool.num_frames, pool.width, pool.height)
        if spec.motion in LINEAR_MOTIONS:
            specs.append(spec)
            index.append(i)
        if len(index) == num_clips:
            break
    latents = pool.latents[index]
    noise = torch.from_numpy(
        np.random.default_rng((seed, 41)).standard_normal(latents.shape, dtype=np.float32)
    )
    swap_rng = np.random.default_rng((seed, 42))

    def texts(attribute: str | None) -> torch.Tensor:
        out = []
        for k, spec in enumerate(specs):
            if attribute is not None:
                spec = swap_attribute(spec, attribute, swap_rng)
            out.append(caption(spec, np.random.default_rng((seed, 43, k))))  # the same template per clip
        return encode(out)

    def loss(text: torch.Tensor) -> float:
        values = [
            flow_matching_loss(transformer, latents, torch.full((len(index),), float(s)), text, noise).item()
            for s in sigmas
        ]
        return float(np.mean(values))

    reference = loss(texts(None))
    result = {f"text_gap_{a}": loss(texts(a)) - reference for a in CAPTION_ATTRIBUTES}
    return {**result, "loss": reference}


def train_base(
    run_dir: Path,
    cfg: RunConfig,
    log: RunLog,
    source: LatentPool | LatentFolder | None = None,
    device: str = "cpu",
) -> None:
    """Stage (b): the text-to-video base with one shared timestep per clip; umT5 trains jointly. Batches are
    drawn on the CPU (the same ones on any device) and the models train in float32 on `device`."""
    b = cfg.base
    if b.object_weight and source is not None and not isinstance(source, LatentPool):
        raise ValueError(
            f"base.object_weight={b.object_weight}: object masks are rendered from the seeds of the recipe's "
            "pool of world clips; a folder of latents has none (use 0)"
        )
    source = source or LatentPool.load(run_dir / "pool.safetensors")
    if b.object_weight:  # a copy: the caller's pool keeps its own (uniform) weights
        source = dataclasses.replace(source, weights=1.0 + b.object_weight * pool_object_masks(source))
    tokenizer, text_encoder, transformer = build_base_models(run_dir, cfg)
    text_encoder.to(device)
    transformer.to(device)
    encode = TextEncoding(tokenizer, text_encoder, cfg.tokenizer.max_sequence_length)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = np.random.default_rng((cfg.seed, 21, step))
        batch = source.batch(rng, b.batch_size)
        text = _batch_text(batch, encode, rng, b.caption_dropout)
        sigmas = sample_sigmas(rng, (b.batch_size,), b.shift)  # [B]: one per clip
        noise = torch.from_numpy(rng.standard_normal(batch.latents.shape, dtype=np.float32))
        return flow_matching_loss(transformer, batch.latents, sigmas, text, noise, batch.weights), {}

    trainable = {**dict(transformer.named_parameters(prefix="transformer")),
                 **dict(text_encoder.named_parameters(prefix="text_encoder"))}  # fmt: skip
    stage = Stage(
        name="base",
        modules={"transformer": transformer, "text_encoder": text_encoder},
        trainable=trainable,
        loss_fn=loss_fn,
        eval_fn=(lambda: caption_sensitivity(transformer, encode, source))
        if isinstance(source, LatentPool)
        else None,
        eval_every=b.eval_every,
        steps=b.steps,
        lr=b.lr,
        warmup=b.warmup,
        weight_decay=b.weight_decay,
        ema_decay=b.ema_decay,
        time_budget_s=b.minutes * 60 if b.minutes else None,
    )
    train_stage(stage, run_dir, log, cfg.checkpoint_every, cfg.log_every)


def _batch_text(
    batch: LatentBatch, encode: TextEncoding, rng: np.random.Generator, dropout: float
) -> torch.Tensor:
    if batch.prompt_embeds is not None:
        text = batch.prompt_embeds.clone()
        drop = torch.from_numpy(rng.random(text.shape[0]) < dropout)
        text[drop] = 0.0  # pre-encoded data: the empty prompt's embedding is close to zeros after masking
        return text
    return encode(drop_captions(batch.captions, rng, dropout))


def load_base(run_dir: Path, cfg: RunConfig, use_ema: bool = True):
    """(tokenizer, text_encoder, transformer) of the finished (or latest) base checkpoint, EMA weights."""
    tokenizer, text_encoder, transformer = build_base_models(run_dir, cfg)
    state = load_checkpoint(run_dir, "base")
    transformer.load_state_dict(state["modules"]["transformer"])
    text_encoder.load_state_dict(state["modules"]["text_encoder"])
    if use_ema:
        _apply_ema(state, transformer, "transformer")
        _apply_ema(state, text_encoder, "text_encoder")
    return tokenizer, text_encoder.eval(), transformer.eval()


# ---------------------------------------------------------------------------------------------- stage: VTA
def vta_sigmas(
    rng: np.random.Generator, batch_size: int, num_latent: int, cfg: VtaConfig
) -> tuple[torch.Tensor, list[list[int]]]:
    """Per-frame sigmas `[B, F]` and, per sample, the frames treated as conditioning (possibly none).

    Independent samples: every frame its own `shift(u)` (upstream's recipe). Task-shaped samples: one sigma
    for the clip and `m * sigma` (m in [0, 0.6], a quarter of them exactly 0) at the conditioning frames,
    which are a prefix (extension), the first (I2V), first + last, or a random subset (keyframes).
    """
    sigmas = sample_sigmas(rng, (batch_size, num_latent), cfg.shift)
    conditioned: list[list[int]] = []
    for i in range(batch_size):
        if rng.random() >= cfg.task_fraction:
            conditioned.append([])
            continue
        pattern = rng.integers(4)
        if pattern == 0:
            frames = [0]
        elif pattern == 1:
            frames = list(range(int(rng.integers(1, num_latent))))
        elif pattern == 2:
            frames = [0, num_latent - 1]
        else:
            frames = sorted(
                set(rng.choice(num_latent, size=int(rng.integers(1, num_latent)), replace=False).tolist())
            )
        multipliers = rng.uniform(0.0, 0.6, size=len(frames)) * (rng.random(len(frames)) > 0.25)
        sigmas[i, :] = sigmas[i, int(rng.integers(num_latent))]
        sigmas[i, frames] = sigmas[i, frames] * torch.from_numpy(multipliers).float()
        conditioned.append(frames)
    return sigmas, conditioned


def _substitute_image_latents(
    batch: LatentBatch, conditioned: list[list[int]], rng: np.random.Generator, probability: float
) -> torch.Tensor:
    """Latents where some conditioned slots hold the single-image latent the pipeline would feed there."""
    latents = batch.latents.clone()
    if batch.image_latents is None:
        return latents
    for i, frames in enumerate(conditioned):
        for j, position in enumerate(batch.image_positions):
            if position in frames and rng.random() < probability:
                latents[i, :, position] = batch.image_latents[i, :, j]
    return latents


def train_vta(
    run_dir: Path,
    cfg: RunConfig,
    log: RunLog,
    source: LatentPool | LatentFolder | None = None,
    base: tuple[Any, nn.Module, nn.Module] | None = None,
    device: str | None = None,
) -> dict[str, LoraLinear]:
    """Stage (c): Pusa's VTA. A LoRA on the frozen base; an independent timestep per latent frame.

    `base`: (tokenizer, text_encoder, transformer) to adapt; default: the base stage's EMA weights. For a real
    model pass `pusa.loading.load_components(...)`'s parts (bf16 on a GPU, `transformer.
    enable_gradient_checkpointing()`) and a `LatentFolder` of clips pre-encoded with its VAE and umT5.
    """
    v = cfg.vta
    source = source or LatentPool.load(run_dir / "pool.safetensors")
    tokenizer, text_encoder, transformer = base or load_base(run_dir, cfg)
    if device is not None:  # None: where `base` already is
        text_encoder.to(device)
        transformer.to(device)
    for p in [*transformer.parameters(), *text_encoder.parameters()]:
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed + 2)
    wrapped = add_lora(transformer, v.rank)
    encode = TextEncoding(tokenizer, text_encoder, cfg.tokenizer.max_sequence_length)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = np.random.default_rng((cfg.seed, 31, step))
        batch = source.batch(rng, v.batch_size)
        with torch.no_grad():
            text = _batch_text(batch, encode, rng, v.caption_dropout)
        sigmas, conditioned = vta_sigmas(rng, v.batch_size, batch.latents.shape[2], v)  # [B, F]
        latents = _substitute_image_latents(batch, conditioned, rng, v.image_latent_fraction)
        noise = torch.from_numpy(rng.standard_normal(latents.shape, dtype=np.float32))
        return flow_matching_loss(transformer, latents, sigmas, text, noise), {}

    trainable = {
        f"lora.{name}.{kind}": getattr(m, kind) for name, m in wrapped.items() for kind in ("down", "up")
    }
    lora_modules = nn.ModuleDict({name.replace(".", "/"): m for name, m in wrapped.items()})
    stage = Stage(
        name="vta",
        modules={"lora": _LoraOnly(lora_modules)},
        trainable=trainable,
        loss_fn=loss_fn,
        steps=v.steps,
        lr=v.lr,
        warmup=v.warmup,
        weight_decay=v.weight_decay,
        ema_decay=v.ema_decay,
        time_budget_s=v.minutes * 60 if v.minutes else None,
    )
    train_stage(stage, run_dir, log, cfg.checkpoint_every, cfg.log_every)
    return wrapped


class _LoraOnly(nn.Module):
    """Checkpoints only the LoRA matrices (the frozen base weights live in the base checkpoint)."""

    def __init__(self, modules: nn.ModuleDict) -> None:
        super().__init__()
        self.wrapped = modules

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return {f"{name}.{kind}": getattr(m, kind).detach().clone()
                for name, m in self.wrapped.items() for kind in ("down", "up")}  # fmt: skip

    def load_state_dict(self, state, strict: bool = True):  # type: ignore[override]
        with torch.no_grad():
            for name, m in self.wrapped.items():
                m.down.copy_(state[f"{name}.down"])
                m.up.copy_(state[f"{name}.up"])


def load_vta_lora(run_dir: Path, use_ema: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{diffusers module name: (down, up)}` from the VTA checkpoint (EMA weights by default)."""
    state = load_checkpoint(run_dir, "vta")
    ema = state.get("ema") if use_ema else None
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, value in state["modules"]["lora"].items():
        name, kind = key.rsplit(".", 1)
        module = name.replace("/", ".")
        if ema:
            value = ema[f"lora.{module}.{kind}"]
        down, up = modules.get(module, (None, None))
        modules[module] = (value, up) if kind == "down" else (down, value)
    return modules


# ---------------------------------------------------------------------------------------------- export
DEMO_LORA_NAME = "pusa_tiny_lora.safetensors"


def export_demo_model(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the demo model folder: diffusers layout (transformer/, vae/, text_encoder/, tokenizer/,
    model_index.json), the LoRA in pusa_v1.pt's key style, and `pusa_model.json` (native clip settings and
    the LoRA's file name, so `PusaPipeline.from_model(out_dir)` applies it) and `training_config.json` (the
    run's settings)."""
    from pusa.loading import save_lora_original
    from pusa.presets import MODEL_MANIFEST

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = load_run_config(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, text_encoder, transformer = load_base(run_dir, cfg)
    vae = load_vae(run_dir, cfg)
    transformer.save_pretrained(out_dir / "transformer", safe_serialization=True)
    vae.save_pretrained(out_dir / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    lora_steps = None
    if checkpoint_path(run_dir, "vta").is_file():
        lora = load_vta_lora(run_dir)
        save_lora_original(lora, out_dir / DEMO_LORA_NAME)
        lora_steps = load_checkpoint(run_dir, "vta")["step"]
    elif (out_dir / DEMO_LORA_NAME).exists():
        (out_dir / DEMO_LORA_NAME).unlink()
    index = {
        "_class_name": "PusaPipeline",
        "transformer": ["pusa.model", "PusaTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    manifest = {
        "name": "pusa-tiny",
        "defaults": {
            "num_frames": cfg.clip.num_frames,
            "width": cfg.clip.width,
            "height": cfg.clip.height,
            "num_inference_steps": DEMO_STEPS,
            "fps": cfg.clip.fps,
            "max_sequence_length": cfg.tokenizer.max_sequence_length,
            "lora_alpha": cfg.vta.alpha,
        },
        "lora": DEMO_LORA_NAME if lora_steps is not None else None,
        "trained_steps": {
            "vae": load_checkpoint(run_dir, "vae")["step"],
            "decoder": load_checkpoint(run_dir, "decoder")["step"]
            if checkpoint_path(run_dir, "decoder").is_file()
            else None,
            "base": load_checkpoint(run_dir, "base")["step"],
            "vta": lora_steps,
        },
        "recipe": "pusa train demo (pusa.train.recipe)",
    }
    (out_dir / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / "training_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return out_dir


DEMO_STEPS = 10


# ---------------------------------------------------------------------------------------------- driver
def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run_dir} a training run folder?")
    return RunConfig.from_dict(json.loads(path.read_text()))


def check_device(device: str) -> torch.device:
    """`device` as a torch device the recipe can train on here, or a ValueError naming it."""
    return presets.check_device(device, ("cpu", "cuda"), "the recipe")


def run_recipe(
    run_dir: str | Path,
    cfg: RunConfig | None = None,
    stages: Iterable[str] = STAGES,
    export_dir: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Run `stages` in order (finished ones are skipped, interrupted ones resume). The run's config is saved
    on the first call; later calls must agree with it or pass `cfg=None` to reuse it. `device` runs the
    pool, base and vta stages (the bulk of the time); the tokenizer, VAE and decoder stages stay on the CPU.
    A stage may resume on another device than it started on."""
    check_device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if config_path.is_file():
        saved = load_run_config(run_dir)
        if cfg is not None and asdict(cfg) != asdict(saved):
            raise ValueError(
                f"{config_path} holds a different config; use a new --run-dir or leave the config unchanged"
            )
        cfg = saved
    else:
        cfg = cfg or RunConfig()
        config_path.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    check_dit_width(cfg.dit, cfg.vae.z_dim)  # before hours of VAE training, not after
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    log = RunLog(run_dir)
    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages {unknown} are not stages; choose from {', '.join(STAGES)}")
    for name in STAGES:
        if name not in stages:
            continue
        started = time.perf_counter()
        log.write(stage=name, event="start")
        if name == "tokenizer":
            make_tokenizer(run_dir, cfg)
        elif name == "vae":
            train_vae(run_dir, cfg, log)
        elif name == "decoder":
            train_decoder(run_dir, cfg, log)
        elif name == "pool":
            encode_pool(run_dir, cfg, log, device)
        elif name == "base":
            train_base(run_dir, cfg, log, device=device)
        elif name == "vta":
            train_vta(run_dir, cfg, log, device=device)
        elif name == "export":
            export_demo_model(run_dir, export_dir or run_dir / "export")
        log.write(stage=name, event="end", elapsed_s=round(time.perf_counter() - started, 1))
    return run_dir


def _override(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply `section.field=value` overrides (e.g. `base.steps=2000`)."""
    cfg = copy.deepcopy(cfg)
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        section, _, name = key.partition(".")
        target = getattr(cfg, section) if name else cfg
        name = name or section
        if not hasattr(target, name):
            raise ValueError(f"--set {assignment!r}: {key} is not a config field")
        current = getattr(target, name)
        parsed: Any = json.loads(value) if not isinstance(current, str) else value
        setattr(target, name, tuple(parsed) if isinstance(current, tuple) else parsed)
    return cfg


def run_recipe_cli(
    run_dir: str | Path,
    stages: Iterable[str] = STAGES,
    assignments: Iterable[str] = (),
    tiny: bool = False,
    export_dir: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """`pusa train demo`: a new run starts from the default (or `tiny`) config plus `assignments`; an existing
    run keeps its saved config, changed only by `assignments` (e.g. a longer time budget to train further)."""
    run_dir = Path(run_dir)
    assignments = list(assignments)
    cfg = None
    if (run_dir / "config.json").is_file():
        if tiny:
            raise ValueError(f"--tiny: {run_dir} already holds a run; --tiny starts new runs only")
        if assignments:
            cfg = _override(load_run_config(run_dir), assignments)
            (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    else:
        cfg = _override(tiny_test_config() if tiny else RunConfig(), assignments)
    return run_recipe(run_dir, cfg, stages, export_dir, device)


VTA_LORA_NAME = "pusa_lora.safetensors"


def train_vta_on_folder(
    model_dir: str | Path,
    latents_dir: str | Path,
    run_dir: str | Path,
    assignments: Iterable[str] = (),
    device: str = "cpu",
    dtype: str | None = None,
) -> Path:
    """`pusa train vta`: the VTA stage on any model folder (a real Wan2.1 one on GPUs) from pre-encoded latents.

    The base weights stay frozen in `dtype`; the LoRA trains in float32. `assignments` change `vta.*` (and
    `tokenizer.max_sequence_length`, the text length used for captions). Writes and returns
    `RUN/pusa_lora.safetensors` (pusa_v1.pt's key style, loadable with `--lora`)."""
    from pusa.loading import load_components, save_lora_original

    check_device(device)
    run_dir = Path(run_dir)
    assignments = list(assignments)
    for assignment in assignments:
        key = assignment.partition("=")[0]
        if not (key.startswith("vta.") or key == "tokenizer.max_sequence_length"):
            raise ValueError(
                f"--set {assignment!r}: pusa train vta takes vta.* and tokenizer.max_sequence_length"
            )
    cfg = _override(RunConfig(tokenizer=TokenizerConfig(max_sequence_length=512)), assignments)
    source = LatentFolder(latents_dir)  # checks the folder before the (large) model loads
    torch_dtype = getattr(torch, dtype or ("float32" if device == "cpu" else "bfloat16"))
    components = load_components(model_dir, dtype=torch_dtype, device=device)
    if components.transformer.config.in_channels != source.latent_shape[0]:
        raise ValueError(
            f"--latents={str(latents_dir)!r}: clips have {source.latent_shape[0]} latent channels, the model "
            f"takes {components.transformer.config.in_channels}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"model": str(model_dir), "latents": str(latents_dir), "vta": asdict(cfg.vta),
              "max_sequence_length": cfg.tokenizer.max_sequence_length}  # fmt: skip
    (run_dir / "vta_config.json").write_text(json.dumps(record, indent=2) + "\n")
    base = (components.tokenizer, components.text_encoder, components.transformer)
    train_vta(run_dir, cfg, RunLog(run_dir), source=source, base=base)
    path = run_dir / VTA_LORA_NAME
    save_lora_original(load_vta_lora(run_dir), path)
    return path
