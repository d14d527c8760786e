"""The training run's settings: one dataclass per stage (their commented defaults are the shipped pusa-tiny's),
`RunConfig` that holds them all, `tiny_test_config` (the seconds-long version for tests) and
`load_run_config` (a run folder's saved `config.json`).

Imports nothing but the standard library.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ClipConfig:
    num_frames: int = 17  # 4k+1; 17 frames -> 5 latent frames, enough for keyframes and extension demos
    width: int = 64
    height: int = 64
    fps: float = 8.0
    # More clip lengths (4k+1) the decoder, base and VTA stages train on besides `num_frames` (the exported
    # default). Each training step draws one length; its batch is scaled so every step holds about as many
    # latent frames as a `num_frames` batch. pusa-tiny v5: (33, 49), so 17, 33 and 49 frames all work.
    train_frames: tuple[int, ...] = ()


def clip_lengths(clip: ClipConfig) -> tuple[int, ...]:
    """Every clip length a run trains on: `num_frames` first, then `train_frames` (no repeats)."""
    return tuple(dict.fromkeys((clip.num_frames, *clip.train_frames)))


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // 4 + 1


def length_batch(batch_size: int, clip: ClipConfig, num_frames: int) -> int:
    """The batch size at `num_frames` that holds about as many latent frames as `batch_size` native clips."""
    return max(1, round(batch_size * latent_frames(clip.num_frames) / latent_frames(num_frames)))


@dataclass
class TokenizerConfig:
    vocab_size: int = 192  # at most: ~90 caption words, their pieces, characters (the corpus gives ~166)
    num_captions: int = 20000  # generated captions the vocabulary is learned from
    max_sequence_length: int = 32  # longest caption is ~20 tokens; longer prompts are truncated


@dataclass
class VaeConfig:
    # AutoencoderKLWan: 4x spatial (2 downsamples), 4x causal temporal, 4 latent channels. Not Wan's own 8x
    # spatial: at 64x64 it loses the outline of objects of 8-16 px, 4x keeps it.
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
    # frames it never reached.
    steps: int = 1200
    batch_size: int = 4
    lr: float = 5e-4
    warmup: int = 10
    latent_noise: float = 0.05
    # Pixels of the object (far from their row's background) weigh 1 + object_weight in the loss. The object
    # covers ~3% of a frame, so an unweighted loss buys PSNR with the background and leaves the object's
    # colour and outline blurred.
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
    # Many steps: the motion's direction is learned last, long after colour (`caption_sensitivity`).
    steps: int = 13000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    # Training sigmas: u ~ U(0, 1) through the shift map. 8 puts most samples at the high noise where the
    # layout, and so the motion's direction, forms.
    shift: float = 8.0
    caption_dropout: float = 0.1  # -> "" or the default negative prompt, so classifier-free guidance works
    ema_decay: float = 0.998
    # Latent cells the object touches weigh 1 + this in the flow-matching loss (as the decoder's object_weight
    # does for pixels): the object is ~7% of the cells, so an unweighted loss spends the model on the
    # background. Needs a pool of world clips (the masks are rendered from its seeds).
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
    # The exported model's default LoRA strength: the best of `pusa eval demo --alphas` (stronger ones, such as
    # Pusa V1's 1.4, move objects off their keyframes and lose colour).
    alpha: float = 0.6
    minutes: float | None = 30  # wall-clock budget (see VaeConfig.minutes); longer runs learn motion better


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
    # A model folder (or "pusa-tiny") to start from instead of random weights: the tokenizer and VAE are copied
    # from it (the VAE stage does not train, so every latent keeps its meaning), the decoder, base and VTA
    # stages fine-tune its decoder, DiT + text encoder and LoRA. pusa-tiny v5 is v4 fine-tuned this way.
    init: str | None = None
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
                sub = type(f.default_factory())  # type: ignore[operator]  # fields holding a dict have a factory
                value = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            kwargs[f.name] = value
        return cls(**kwargs)


def tiny_test_config() -> RunConfig:
    """A seconds-long version of the training run for tests: the same code at toy sizes."""
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


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run_dir} a training run folder?")
    return RunConfig.from_dict(json.loads(path.read_text()))
