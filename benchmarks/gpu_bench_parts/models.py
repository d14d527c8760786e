"""The random models and inputs the DiT rows time: a DiT built on the device, a random rank-r LoRA, the inputs
of one forward (per-frame or per-token timesteps), one forward and one CFG step as callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pusa.caching import StepCache
from pusa.sampling import cfg_text_batch, guided_velocity
from pusa.schedule import flow_sigmas
from pusa.weights.lora import LoraWeights

from .specs import CFG, I2V_NOISE_MULTIPLIER, LORA_TARGETS, NUM_STEPS, Size, Spec
from .timing import default_dtype


def build_dit(cls: type, spec: Spec, seed: int = 0) -> torch.nn.Module:
    """A random DiT created directly on the device in the run dtype, with the modules diffusers keeps in
    float32 (`_keep_in_fp32_modules`) in float32, as `from_pretrained` and `weights.checkpoints` leave them."""
    torch.manual_seed(seed)
    with torch.device(spec.device), default_dtype(spec.dtype):
        model = cls(**spec.dit)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        if keep.intersection(name.split(".")):
            param.data = param.data.float()
    return model.eval().requires_grad_(False)


def random_lora(spec: Spec, seed: int = 1) -> LoraWeights:
    """A LoRA of `spec.lora_rank` on Pusa's targets in every block, drawn on the device, kept on the CPU
    (where `load_lora` leaves a real one)."""
    dim = spec.dit["num_attention_heads"] * spec.dit["attention_head_dim"]
    shapes = {target: (dim, dim) for target in LORA_TARGETS}  # (in, out)
    shapes["ffn.net.0.proj"] = (dim, spec.dit["ffn_dim"])
    shapes["ffn.net.2"] = (spec.dit["ffn_dim"], dim)
    generator = torch.Generator(spec.device).manual_seed(seed)
    rank = spec.lora_rank
    modules = {}
    for block in range(spec.dit["num_layers"]):
        for target, (fan_in, fan_out) in shapes.items():
            options = dict(generator=generator, device=spec.device, dtype=spec.dtype)
            down = torch.randn(rank, fan_in, **options) / math.sqrt(fan_in)
            up = torch.randn(fan_out, rank, **options) * (0.02 / math.sqrt(rank))
            modules[f"blocks.{block}.{target}"] = (down.cpu(), up.cpu())
    return LoraWeights(modules=modules, source=f"random rank-{rank} LoRA")


@dataclass
class DitInputs:
    latents: torch.Tensor  # [1, 16, F, h, w]
    timestep: torch.Tensor  # [1, F] (ours) or [1, L] (stock, per token)
    text: torch.Tensor  # [1, text_len, text_dim]
    negative_text: torch.Tensor
    sigma: torch.Tensor  # [F] this step's per-frame sigma
    sigma_next: torch.Tensor  # [F]


def dit_inputs(spec: Spec, size: Size, per_token: bool) -> DitInputs:
    generator = torch.Generator().manual_seed(2)
    sigmas = flow_sigmas(NUM_STEPS, 5.0)
    scale = torch.ones(size.num_latent_frames)
    scale[0] = I2V_NOISE_MULTIPLIER
    sigma, sigma_next = scale * float(sigmas[1]), scale * float(sigmas[2])
    timestep = (1000.0 * sigma).unsqueeze(0)  # [1, F]
    if per_token:
        _, p_h, p_w = spec.dit["patch_size"]
        tokens_per_frame = (size.height // p_h) * (size.width // p_w)
        timestep = timestep.repeat_interleave(tokens_per_frame, dim=1)  # [1, L]
    shape = (1, spec.dit["in_channels"], size.num_latent_frames, size.height, size.width)
    text_shape = (1, spec.text_len, spec.dit["text_dim"])

    def draw(*dims: int) -> torch.Tensor:
        return torch.randn(*dims, generator=generator).to(spec.device, spec.dtype)

    return DitInputs(
        latents=draw(*shape),
        timestep=timestep.to(spec.device),
        text=draw(*text_shape),
        negative_text=draw(*text_shape),
        sigma=sigma.to(spec.device),
        sigma_next=sigma_next.to(spec.device),
    )


def forward_fn(model: torch.nn.Module, x: DitInputs) -> Callable[[], torch.Tensor]:
    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x.latents, x.timestep, x.text, return_dict=False)[0]

    return forward


def cfg_step_fn(
    model: torch.nn.Module, x: DitInputs, batched: bool = False, cache: StepCache | None = None
) -> Callable[[], torch.Tensor]:
    """One sampler step as `pusa.sampling.sample` takes it: two forwards (or one of batch 2: `batched`), the
    CFG mix, the Euler update; through `cache` (the model's block runner) if given."""
    batched_text = cfg_text_batch(x.text, x.negative_text) if batched else None

    def velocity(latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return model(latents, timestep, text, return_dict=False)[0]

    if cache is not None:
        velocity = cache.wrap(velocity)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            v = guided_velocity(velocity, x.latents, x.timestep, x.text, x.negative_text, CFG, batched_text)
            dt = (x.sigma_next - x.sigma).view(1, 1, -1, 1, 1)
            return (x.latents.float() + v.float() * dt).to(x.latents.dtype)

    return step


def attention_of(model: torch.nn.Module) -> str:
    backend = getattr(model.blocks[0].attn1.processor, "_attention_backend", None)
    return getattr(backend, "value", backend) or "default"
