"""The training run's stages before the DiT: tokenizer (a sentencepiece vocabulary for the world's captions), vae
(train a small Wan VAE), decoder (fine-tune its decoder on whole clips) and pool (encode world clips once
with the frozen VAE), with their reconstruction losses, object masks, `psnr` / `vae_psnr` and `load_vae`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pusa.train.builders import build_vae
from pusa.train.config import RunConfig, clip_lengths, length_batch
from pusa.train.data import LatentPool, LengthMix, render_pixels, video_pixels, world_pixel_batch
from pusa.train.detector import DEFAULT_THRESHOLD, analyze_clip
from pusa.train.loop import RunLog, Stage, checkpoint_path, load_checkpoint, train_stage
from pusa.train.world import TRAIN_SEED_LIMIT, caption, eval_specs, render_clip, sample_clip_spec


# ---------------------------------------------------------------------------------------------- stage: tokenizer
def _tokenizer_corpus(cfg: RunConfig) -> list[str]:
    from pusa.params import DEFAULT_NEGATIVE_PROMPT

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

    lengths = clip_lengths(c)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        seed = (cfg.seed * 1_000_003 + 700_001 + step) % TRAIN_SEED_LIMIT
        frames = lengths[step % len(lengths)]  # whole clips, each length in turn
        pixels = world_pixel_batch(seed, length_batch(d.batch_size, c, frames), frames, c.width, c.height)
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
def pool_path(run_dir: Path, cfg: RunConfig, num_frames: int) -> Path:
    """`pool.safetensors` for the native clip length, `pool-<N>f.safetensors` for the other training lengths."""
    name = "pool" if num_frames == cfg.clip.num_frames else f"pool-{num_frames}f"
    return run_dir / f"{name}.safetensors"


def encode_pool(run_dir: Path, cfg: RunConfig, log: RunLog, device: str = "cpu") -> LatentPool:
    """Encode `pool.num_clips` world clips with the frozen VAE (on `device`); normalize them per channel with
    the run's latent statistics (computed from the native pool, or the `init` folder's). Each further training
    length gets its own pool, of `num_clips` scaled to about as many latent frames."""
    pools = [_encode_pool(run_dir, cfg, log, frames, device) for frames in clip_lengths(cfg.clip)]
    return pools[0]


def load_pools(run_dir: Path, cfg: RunConfig) -> LatentPool | LengthMix:
    """The DiT stages' source: the native pool alone, or every training length's pool as a `LengthMix`."""
    lengths = clip_lengths(cfg.clip)
    pools = {frames: LatentPool.load(pool_path(run_dir, cfg, frames)) for frames in lengths}
    return pools[lengths[0]] if len(pools) == 1 else LengthMix(pools)


@torch.no_grad()
def _encode_pool(run_dir: Path, cfg: RunConfig, log: RunLog, num_frames: int, device: str) -> LatentPool:
    path = pool_path(run_dir, cfg, num_frames)
    if path.is_file():
        return LatentPool.load(path)
    c, p = cfg.clip, cfg.pool
    stats_path = run_dir / "latent_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else None
    vae = load_vae(run_dir, cfg).to(device)
    num_clips = length_batch(p.num_clips, c, num_frames)
    salt = (11,) if num_frames == c.num_frames else (11, num_frames)
    seeds = np.random.default_rng((cfg.seed, *salt)).integers(TRAIN_SEED_LIMIT, size=num_clips)
    latents, image_latents = [], []
    for start in tqdm(range(0, num_clips, p.batch_size), desc=f"pool {num_frames}f", dynamic_ncols=True):
        chunk = seeds[start : start + p.batch_size]
        pixels = render_pixels(chunk, num_frames, c.width, c.height, device)  # [B, 3, F, H, W]
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
    if stats is None:
        stats = {
            "latents_mean": raw.mean(dim=(0, 2, 3, 4)).tolist(),
            "latents_std": raw.std(dim=(0, 2, 3, 4)).tolist(),
        }
    mean, std = torch.tensor(stats["latents_mean"]), torch.tensor(stats["latents_std"])
    view = (1, -1, 1, 1, 1)
    pool = LatentPool(
        latents=(raw - mean.view(view)) / std.view(view),
        seeds=torch.from_numpy(seeds.astype(np.int64)),
        num_frames=num_frames,
        width=c.width,
        height=c.height,
        image_latents=(torch.cat(image_latents) - mean.view(view)) / std.view(view)
        if image_latents
        else None,
        image_positions=tuple(p.image_positions),
    )
    if not stats_path.is_file():
        stats_path.write_text(json.dumps(stats, indent=1) + "\n")
    pool.save(path)
    log.write(stage="pool", event="done", num_frames=num_frames, num_clips=num_clips, **stats)
    return pool


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
