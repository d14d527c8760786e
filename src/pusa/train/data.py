"""Training data sources for the training run (`pusa.train.run`).

Three sources, one batch format for the DiT stages: `LatentBatch(latents [B, 16, F_lat, h, w] normalized,
captions list[str] | None, prompt_embeds [B, L, D] | None, image_latents ...)`.

- `world_pixel_batch`: clips of the procedural world rendered on the fly (the VAE stage).
- `LatentPool`: world clips encoded once by the trained VAE and held in memory (the tiny DiT stages). Each
  clip keeps its world seed, so a fresh caption can be drawn for it at every step.
- `LatentFolder`: a folder of pre-encoded clips, `*.safetensors` files each holding `latents [16, F, h, w]`
  (normalized with the VAE's latents_mean/std) and either `prompt_embeds [L, D]` (zero past the prompt, as
  `PusaPipeline.encode_prompt` makes them) or a `caption` in the file's metadata. This is how a full-size
  run feeds the training: encode the videos once with the real Wan VAE and umT5, then train the LoRA on GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pusa.train.world import caption, make_batch, render_clip, sample_clip_spec

__all__ = [
    "LatentBatch",
    "LatentFolder",
    "LatentPool",
    "LengthMix",
    "save_latent_clip",
    "world_pixel_batch",
]


def world_pixel_batch(
    seed: int, batch_size: int, num_frames: int, width: int = 64, height: int = 64, window: int | None = None
) -> torch.Tensor:
    """World clips as VAE input: float32 `[B, 3, F, H, W]` in [-1, 1].

    window: keep a random run of this many consecutive frames of each clip (short clips train the causal VAE
    faster and it generalizes to long ones).
    """
    videos, _, _ = make_batch(seed, batch_size, num_frames, width, height)  # [B, F, H, W, 3] uint8
    if window is not None and window < num_frames:
        rng = np.random.default_rng((seed, 1))
        starts = rng.integers(0, num_frames - window + 1, size=batch_size)
        videos = np.stack([v[s : s + window] for v, s in zip(videos, starts, strict=True)])
    return video_pixels(videos)


def video_pixels(videos: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 videos `[B, F, H, W, 3]` -> the VAE's input: float pixels `[B, 3, F, H, W]` in -1..1 on `device`."""
    return torch.from_numpy(videos).to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def render_pixels(
    seeds: Sequence[int], num_frames: int, width: int, height: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """The world clips of these seeds as `video_pixels` `[B, 3, F, H, W]`."""
    videos = np.stack([render_clip(sample_clip_spec(int(s), num_frames, width, height)) for s in seeds])
    return video_pixels(videos, device)


@dataclass
class LatentBatch:
    """One DiT training batch. Either `captions` (encoded by the text encoder being trained) or
    `prompt_embeds` (pre-encoded, `[B, L, D]`) is set.

    image_latents: optional `[B, 16, K, h, w]`: latent frames `image_positions` re-encoded from a single pixel
        frame (4k) as a one-frame video, i.e. what the pipeline feeds when a user gives an image for slot k.
    """

    latents: torch.Tensor  # [B, 16, F_lat, h, w], normalized
    captions: list[str] | None = None
    prompt_embeds: torch.Tensor | None = None
    image_latents: torch.Tensor | None = None
    image_positions: tuple[int, ...] = ()
    weights: torch.Tensor | None = None  # [B, 1, F_lat, h, w] loss weight per latent cell (None: uniform)


@dataclass
class LatentPool:
    """World clips encoded once: `latents [N, 16, F_lat, h, w]` (normalized) with their world `seeds [N]`.

    image_latents `[N, 16, K, h, w]` hold latent slots `image_positions` encoded from the single pixel frame
    4k of the clip (see `LatentBatch`).
    """

    latents: torch.Tensor
    seeds: torch.Tensor  # int64 [N]
    num_frames: int
    width: int
    height: int
    image_latents: torch.Tensor | None = None
    image_positions: tuple[int, ...] = ()
    weights: torch.Tensor | None = None  # [N, 1, F_lat, h, w] (see `LatentBatch.weights`); not saved

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(self, rng: np.random.Generator, batch_size: int) -> LatentBatch:
        """A random batch; each clip gets a freshly drawn caption (paraphrases of the same content)."""
        index = torch.from_numpy(rng.integers(len(self), size=batch_size))
        captions = []
        for seed in self.seeds[index].tolist():
            spec = sample_clip_spec(int(seed), self.num_frames, self.width, self.height)
            captions.append(caption(spec, rng))
        image_latents = None if self.image_latents is None else self.image_latents[index]
        weights = None if self.weights is None else self.weights[index]
        return LatentBatch(self.latents[index], captions, None, image_latents, self.image_positions, weights)

    def save(self, path: str | Path) -> None:
        tensors = {"latents": self.latents.contiguous(), "seeds": self.seeds}
        if self.image_latents is not None:
            tensors["image_latents"] = self.image_latents.contiguous()
        metadata = {
            "num_frames": str(self.num_frames),
            "width": str(self.width),
            "height": str(self.height),
            "image_positions": ",".join(map(str, self.image_positions)),
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> LatentPool:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        positions = tuple(int(p) for p in metadata["image_positions"].split(",") if p)
        return cls(
            tensors["latents"],
            tensors["seeds"],
            int(metadata["num_frames"]),
            int(metadata["width"]),
            int(metadata["height"]),
            tensors.get("image_latents"),
            positions,
        )


@dataclass
class LengthMix:
    """Pools of several clip lengths as one source: each batch is drawn from one length (uniformly chosen),
    its size scaled so every batch holds about as many latent frames as `batch_size` clips of the native length
    (the first pool: the exported default, which the caption-sensitivity probe reads)."""

    pools: dict[int, LatentPool]  # num_frames -> pool; the first is the native length

    @property
    def native(self) -> LatentPool:
        return next(iter(self.pools.values()))

    def batch(self, rng: np.random.Generator, batch_size: int) -> LatentBatch:
        lengths = list(self.pools)
        length = lengths[int(rng.integers(len(lengths)))]
        native, chosen = self.native.latents.shape[2], self.pools[length].latents.shape[2]
        return self.pools[length].batch(rng, max(1, round(batch_size * native / chosen)))


def save_latent_clip(
    path: str | Path,
    latents: torch.Tensor,
    caption_text: str | None = None,
    prompt_embeds: torch.Tensor | None = None,
) -> None:
    """Write one pre-encoded clip for `LatentFolder`: `latents [16, F, h, w]` and a caption or `[L, D]` embeds."""
    if latents.ndim != 4:
        raise ValueError(
            f"latents has shape {list(latents.shape)}; expected [channels, frames, height, width]"
        )
    if caption_text is None and prompt_embeds is None:
        raise ValueError("give caption_text or prompt_embeds (or both)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensors = {"latents": latents.detach().float().contiguous().cpu()}
    if prompt_embeds is not None:
        tensors["prompt_embeds"] = prompt_embeds.detach().float().contiguous().cpu()
    save_file(tensors, str(path), metadata={"caption": caption_text} if caption_text is not None else None)


class LatentFolder:
    """A folder of `*.safetensors` clips written by `save_latent_clip` (or anything with the same keys).

    All clips must share one latent shape (one resolution and length per folder, as Wan training buckets do).
    Batches use prompt_embeds when every file in the batch has them, else captions.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise ValueError(f"latents folder {self.folder} does not exist")
        self.files = sorted(self.folder.glob("*.safetensors"))
        if not self.files:
            raise ValueError(f"latents folder {self.folder} holds no *.safetensors clips")
        shapes: dict[tuple[int, ...], Path] = {}
        for file in self.files:
            with safe_open(str(file), framework="pt") as handle:
                if "latents" not in handle.keys():  # noqa: SIM118
                    raise ValueError(f"{file} has no 'latents' tensor; keys: {sorted(handle.keys())}")
                has_caption = (handle.metadata() or {}).get("caption") is not None
                if "prompt_embeds" not in handle.keys() and not has_caption:  # noqa: SIM118
                    raise ValueError(f"{file} has neither 'prompt_embeds' nor a 'caption' in its metadata")
                shapes.setdefault(tuple(handle.get_slice("latents").get_shape()), file)
        if len(shapes) > 1:
            listed = ", ".join(f"{list(shape)} ({file.name})" for shape, file in shapes.items())
            raise ValueError(f"latents folder {self.folder} mixes latent shapes: {listed}")
        self.latent_shape = next(iter(shapes))  # (16, F, h, w)

    def __len__(self) -> int:
        return len(self.files)

    def item(self, index: int) -> tuple[torch.Tensor, str | None, torch.Tensor | None]:
        with safe_open(str(self.files[index]), framework="pt") as handle:
            latents = handle.get_tensor("latents")
            embeds = handle.get_tensor("prompt_embeds") if "prompt_embeds" in handle.keys() else None  # noqa: SIM118
            text = (handle.metadata() or {}).get("caption")
        return latents, text, embeds

    def batch(self, rng: np.random.Generator, batch_size: int) -> LatentBatch:
        items = [self.item(int(i)) for i in rng.integers(len(self), size=batch_size)]
        latents = torch.stack([latent for latent, _, _ in items])
        embeds = [e for _, _, e in items if e is not None]
        if len(embeds) == len(items):  # every clip has its embeddings
            length = max(e.shape[0] for e in embeds)
            padded = [torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[0])) for e in embeds]
            return LatentBatch(latents, None, torch.stack(padded))
        return LatentBatch(latents, [text or "" for _, text, _ in items])
