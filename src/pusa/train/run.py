"""A training run: Pusa's training in miniature (docs/algorithm.md, "Training"), which made the `pusa-tiny`
demo model. (Named `run`, not `recipe`: in pusa a recipe is a conditioning recipe, `pusa.recipes`.)

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

The flow-matching conventions are the sampler's (docs/algorithm.md, "The schedule"): `x_s = (1 - s) x0 + s eps`,
the network predicts `v = eps - x0` at timestep `1000 s`.

This module is the driver (`run_training`, `pusa train demo|vta`; the command line is `pusa.train.cli`). The pieces: `config` (settings),
`builders` (models), `lora`, `loop` (the training loop and checkpoints), `stages_vae` (tokenizer, vae,
decoder, pool), `stages_dit` (base, vta) and `export`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pusa.runtime import device as runtime_device
from pusa.train import STAGES
from pusa.train.builders import check_dit_width
from pusa.train.config import RunConfig, TokenizerConfig, load_run_config, tiny_test_config
from pusa.train.data import LatentFolder
from pusa.train.export import export_demo_model
from pusa.train.loop import RunLog
from pusa.train.stages_dit import load_vta_lora, train_base, train_vta
from pusa.train.stages_vae import encode_pool, make_tokenizer, train_decoder, train_vae


def check_device(device: str) -> torch.device:
    """`device` as a torch device training can run on here, or a ValueError naming it."""
    return runtime_device.check_device(device, ("cpu", "cuda"), "training")


def run_training(
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
    check_clip_lengths(cfg)
    init = None
    if cfg.init:
        from pusa.train.init import resolve_init

        init = resolve_init(cfg.init)
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
        if name == "tokenizer" and init is not None:
            from pusa.train.init import init_tokenizer

            init_tokenizer(run_dir, init)
        elif name == "tokenizer":
            make_tokenizer(run_dir, cfg)
        elif name == "vae" and init is not None:
            from pusa.train.init import init_vae

            init_vae(run_dir, cfg, init, log)
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


def check_clip_lengths(cfg: RunConfig) -> None:
    """Every training length is 4k+1 frames (Wan's VAE: one frame, then groups of 4), refused by name."""
    for frames in (cfg.clip.num_frames, *cfg.clip.train_frames):
        if not isinstance(frames, int) or frames < 5 or (frames - 1) % 4:
            raise ValueError(
                f"clip.train_frames={list(cfg.clip.train_frames)} / clip.num_frames={cfg.clip.num_frames}: {frames!r} "
                "is not a clip length; each must be 4k+1 frames, at least 5 (e.g. 17, 33, 49)"
            )


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
        if isinstance(current, str) or (current is None and name == "init"):
            parsed: Any = value or None
        else:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"--set {assignment!r}: {value!r} is not a value for {key} ({error})"
                ) from None
        setattr(target, name, tuple(parsed) if isinstance(current, tuple) else parsed)
    return cfg


def run_training_cli(
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
    return run_training(run_dir, cfg, stages, export_dir, device)


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
    from pusa.weights.folders import load_components
    from pusa.weights.lora import save_lora_original

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
