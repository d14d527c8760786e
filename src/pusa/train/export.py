"""The training run's last stage: `export_demo_model` writes a finished run as the pusa-tiny model folder
(diffusers layout, the VTA LoRA in pusa_v1.pt's key style, `pusa_model.json`, `training_config.json`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pusa.train.config import clip_lengths, load_run_config
from pusa.train.loop import checkpoint_path, load_checkpoint
from pusa.train.stages_dit import load_base, load_vta_lora
from pusa.train.stages_vae import load_vae

DEMO_LORA_NAME = "pusa_tiny_lora.safetensors"

DEMO_STEPS = 10


def export_demo_model(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the demo model folder: diffusers layout (transformer/, vae/, text_encoder/, tokenizer/,
    model_index.json), the LoRA in pusa_v1.pt's key style, and `pusa_model.json` (native clip settings and
    the LoRA's file name, so `PusaPipeline.from_model(out_dir)` applies it) and `training_config.json` (the
    run's settings)."""
    from pusa.weights.lora import save_lora_original
    from pusa.weights.registry import MODEL_MANIFEST

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
        "trained_by": "pusa train demo (pusa.train.run)",
        # What the studio bounds its clip fields by (registry.folder_defaults): every length it trained on.
        "trained": {
            "num_frames": sorted(clip_lengths(cfg.clip)),
            "sizes": [[cfg.clip.width, cfg.clip.height]],
        },
    }
    if cfg.init:
        from pusa.train.init import resolve_init
        from pusa.weights.registry import read_manifest

        before = read_manifest(resolve_init(cfg.init)) or {}
        manifest["fine_tuned_from"] = {
            "name": before.get("name"),
            "trained_steps": before.get("trained_steps"),
            "trained": before.get("trained"),
        }
    (out_dir / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / "training_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return out_dir
