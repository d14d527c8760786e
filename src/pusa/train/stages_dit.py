"""The training run's DiT stages: base (text-to-video DiT + umT5 trained together with flow matching, one shared
timestep per clip) and vta (Pusa's vectorized-timestep adaptation: a LoRA on the frozen base, an independent
timestep per latent frame), with what they share: `TextEncoding`, caption dropout, sigma sampling,
`flow_matching_loss`, `caption_sensitivity`, and `load_base` / `load_vta_lora` for their checkpoints.

The flow-matching conventions are the sampler's (docs/algorithm.md, "The schedule"): `x_s = (1 - s) x0 + s eps`,
the network predicts `v = eps - x0` at timestep `1000 s`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pusa.schedule import shift_sigmas
from pusa.train.builders import build_text_encoder, build_transformer, load_tokenizer
from pusa.train.config import RunConfig, VtaConfig
from pusa.train.data import LatentBatch, LatentFolder, LatentPool, LengthMix
from pusa.train.loop import RunLog, Stage, apply_ema, checkpoint_path, load_checkpoint, train_stage
from pusa.train.stages_vae import load_pools, pool_object_masks
from pusa.train.world import LINEAR_MOTIONS, OBJECT_COLORS, SHAPES, ClipSpec, caption, sample_clip_spec
from pusa.weights.lora import LoraLinear, add_lora


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
    from pusa.params import DEFAULT_NEGATIVE_PROMPT

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
    changes: dict[str, Any] = {field_name: others[int(rng.integers(len(others)))]}
    return dataclasses.replace(spec, **changes)


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
    source: LatentPool | LengthMix | LatentFolder | None = None,
    device: str = "cpu",
) -> None:
    """Stage (b): the text-to-video base with one shared timestep per clip; umT5 trains jointly. Batches are
    drawn on the CPU (the same ones on any device) and the models train in float32 on `device`."""
    b = cfg.base
    if b.object_weight and source is not None and not isinstance(source, LatentPool | LengthMix):
        raise ValueError(
            f"base.object_weight={b.object_weight}: object masks are rendered from the seeds of the training run's "
            "pool of world clips; a folder of latents has none (use 0)"
        )
    source = source or load_pools(run_dir, cfg)
    if b.object_weight:  # copies: the caller's pools keep their own (uniform) weights
        source = _with_object_weights(source, b.object_weight)
    tokenizer, text_encoder, transformer = build_base_models(run_dir, cfg)
    if cfg.init and not checkpoint_path(run_dir, "base").is_file():
        from pusa.train.init import init_base, resolve_init

        init_base(resolve_init(cfg.init), transformer, text_encoder)
    text_encoder.to(device)
    transformer.to(device)
    encode = TextEncoding(tokenizer, text_encoder, cfg.tokenizer.max_sequence_length)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = np.random.default_rng((cfg.seed, 21, step))
        batch = source.batch(rng, b.batch_size)
        text = _batch_text(batch, encode, rng, b.caption_dropout)
        sigmas = sample_sigmas(rng, (batch.latents.shape[0],), b.shift)  # [B]: one per clip
        noise = torch.from_numpy(rng.standard_normal(batch.latents.shape, dtype=np.float32))
        return flow_matching_loss(transformer, batch.latents, sigmas, text, noise, batch.weights), {}

    native = source.native if isinstance(source, LengthMix) else source
    probe = native if isinstance(native, LatentPool) else None
    trainable = {**dict(transformer.named_parameters(prefix="transformer")),
                 **dict(text_encoder.named_parameters(prefix="text_encoder"))}  # fmt: skip
    stage = Stage(
        name="base",
        modules={"transformer": transformer, "text_encoder": text_encoder},
        trainable=trainable,
        loss_fn=loss_fn,
        eval_fn=(lambda: caption_sensitivity(transformer, encode, probe)) if probe is not None else None,
        eval_every=b.eval_every,
        steps=b.steps,
        lr=b.lr,
        warmup=b.warmup,
        weight_decay=b.weight_decay,
        ema_decay=b.ema_decay,
        time_budget_s=b.minutes * 60 if b.minutes else None,
    )
    train_stage(stage, run_dir, log, cfg.checkpoint_every, cfg.log_every)


def _with_object_weights(source: LatentPool | LengthMix, weight: float) -> LatentPool | LengthMix:
    if isinstance(source, LengthMix):
        return LengthMix({n: _with_object_weights(pool, weight) for n, pool in source.pools.items()})  # type: ignore[misc]
    return dataclasses.replace(source, weights=1.0 + weight * pool_object_masks(source))


def _batch_text(
    batch: LatentBatch, encode: TextEncoding, rng: np.random.Generator, dropout: float
) -> torch.Tensor:
    if batch.prompt_embeds is not None:
        text = batch.prompt_embeds.clone()
        drop = torch.from_numpy(rng.random(text.shape[0]) < dropout)
        text[drop] = 0.0  # pre-encoded data: the empty prompt's embedding is close to zeros after masking
        return text
    assert batch.captions is not None  # a batch carries its prompt embeddings or its captions
    return encode(drop_captions(batch.captions, rng, dropout))


def load_base(run_dir: Path, cfg: RunConfig, use_ema: bool = True):
    """(tokenizer, text_encoder, transformer) of the finished (or latest) base checkpoint, EMA weights."""
    tokenizer, text_encoder, transformer = build_base_models(run_dir, cfg)
    state = load_checkpoint(run_dir, "base")
    transformer.load_state_dict(state["modules"]["transformer"])
    text_encoder.load_state_dict(state["modules"]["text_encoder"])
    if use_ema:
        apply_ema(state, transformer, "transformer")
        apply_ema(state, text_encoder, "text_encoder")
    return tokenizer, text_encoder.eval(), transformer.eval()


# ---------------------------------------------------------------------------------------------- stage: VTA
def vta_sigmas(
    rng: np.random.Generator, batch_size: int, num_latent: int, cfg: VtaConfig
) -> tuple[torch.Tensor, list[list[int]]]:
    """Per-frame sigmas `[B, F]` and, per sample, the frames treated as conditioning (possibly none).

    Independent samples: every frame its own `shift(u)` (as upstream trains). Task-shaped samples: one sigma
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
    source: LatentPool | LengthMix | LatentFolder | None = None,
    base: tuple[Any, nn.Module, nn.Module] | None = None,
    device: str | None = None,
) -> dict[str, LoraLinear]:
    """Stage (c): Pusa's VTA. A LoRA on the frozen base; an independent timestep per latent frame.

    `base`: (tokenizer, text_encoder, transformer) to adapt; default: the base stage's EMA weights. For a real
    model pass `pusa.weights.folders.load_components(...)`'s parts (bf16 on a GPU, `transformer.
    enable_gradient_checkpointing()`) and a `LatentFolder` of clips pre-encoded with its VAE and umT5.
    """
    v = cfg.vta
    source = source or load_pools(run_dir, cfg)
    tokenizer, text_encoder, transformer = base or load_base(run_dir, cfg)
    if device is not None:  # None: where `base` already is
        text_encoder.to(device)
        transformer.to(device)
    for p in [*transformer.parameters(), *text_encoder.parameters()]:
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed + 2)
    wrapped = add_lora(transformer, v.rank)
    if cfg.init and base is None and not checkpoint_path(run_dir, "vta").is_file():
        from pusa.train.init import init_lora, resolve_init

        init_lora(resolve_init(cfg.init), wrapped)
    encode = TextEncoding(tokenizer, text_encoder, cfg.tokenizer.max_sequence_length)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = np.random.default_rng((cfg.seed, 31, step))
        batch = source.batch(rng, v.batch_size)
        with torch.no_grad():
            text = _batch_text(batch, encode, rng, v.caption_dropout)
        sigmas, conditioned = vta_sigmas(rng, batch.latents.shape[0], batch.latents.shape[2], v)  # [B, F]
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

    def state_dict(self, *args, **kwargs):
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
