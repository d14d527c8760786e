"""`pusa train demo|vta` and `pusa eval demo`: the training and evaluation commands.

They sit above the generation commands (`pusa.cli`) in the layers: `pusa.main` puts both sets in one
`pusa` command, and `pusa.cli` knows nothing of training. Importing this module is cheap (no torch): the
training and the evaluation load torch only when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import parse_float_list, parse_int_list
from ..params import add_load_options
from . import EVAL_TASKS, STAGES


def add_commands(commands: Any) -> None:
    """Add `pusa train demo|vta` and `pusa eval demo` to `commands` (the subparsers of `pusa`)."""
    train = commands.add_parser(
        "train", help="train the pusa-tiny demo model, or a VTA LoRA on a real model",
        description="Pusa's training: VAE, then a text-to-video base with one timestep per clip, then the VTA "
        "LoRA with a timestep per frame. Every stage checkpoints and resumes; progress goes to a bar and to "
        "RUN/log.jsonl.",
    )  # fmt: skip
    kinds = train.add_subparsers(dest="train_kind", required=True, metavar="{demo,vta}")
    demo = kinds.add_parser(
        "demo", help="every stage of pusa-tiny's training on the procedural world (about 4 hours on 2 CPU cores)",
        description="Train pusa-tiny end to end (tokenizer, vae, decoder, pool, base, vta, export). Run it again to "
        "resume; finished stages are skipped.",
    )  # fmt: skip
    demo.add_argument(
        "--run-dir", default="runs/pusa-tiny", help="config, checkpoints, log (default: %(default)s)"
    )
    demo.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma list of {', '.join(STAGES)} (default: all)",
    )
    demo.add_argument("--export-dir", default=None, help="where the model folder goes (default: RUN/export)")
    demo.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="change a config value, e.g. --set base.steps=2000 --set base.minutes=60 (saved in RUN/config.json)",
    )  # fmt: skip
    demo.add_argument("--tiny", action="store_true", help="the seconds-long toy config (a smoke test)")
    demo.add_argument(
        "--device", default="cpu",
        help="torch device of the pool, base and vta stages, e.g. cuda (default: cpu; the others run on the CPU)",
    )  # fmt: skip
    vta = kinds.add_parser(
        "vta", help="VTA-fine-tune a LoRA on a real model folder from pre-encoded latents",
        description="The VTA stage of the training on any model folder (a Wan2.1 folder on GPUs): a LoRA with a "
        "timestep per latent frame, trained on a folder of latent clips (*.safetensors with 'latents' "
        "[16, F, h, w], and 'prompt_embeds' or a caption; see pusa.train.data.save_latent_clip). "
        "Writes RUN/pusa_lora.safetensors in pusa_v1.pt's key style.",
    )  # fmt: skip
    vta.add_argument("--model", required=True, metavar="DIR", help="model folder (diffusers or Wan layout)")
    vta.add_argument("--latents", required=True, metavar="DIR", help="folder of pre-encoded latent clips")
    vta.add_argument("--run-dir", required=True, help="checkpoints, log and the LoRA go here")
    vta.add_argument(
        "--set", action="append", default=[], metavar="VTA.FIELD=VALUE",
        help="e.g. --set vta.rank=512 --set vta.steps=1000 --set vta.lr=1e-5",
    )  # fmt: skip
    add_load_options(vta, "device")
    vta.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="default: float32 on CPU")

    evaluate = commands.add_parser(
        "eval", help="evaluate the demo model: base vs VTA, every task, scored from the pixels",
        description="Print a table (base model without LoRA vs the VTA model) over held-out prompts/seeds of "
        "the procedural world: T2V colour/shape/direction accuracy, I2V and start-end PSNR, keyframe and "
        "extension continuity, flicker.",
    )  # fmt: skip
    ekinds = evaluate.add_subparsers(dest="eval_kind", required=True, metavar="{demo}")
    edemo = ekinds.add_parser("demo", help="the evaluation table of pusa-tiny (or a model trained like it)")
    edemo.add_argument(
        "--model", default="pusa-tiny", help="pusa-tiny or an exported folder (default: %(default)s)"
    )
    edemo.add_argument(
        "--num-clips", type=int, default=22, help="held-out clips, two per motion (default: %(default)s)"
    )
    edemo.add_argument("--eval-seed", type=int, default=0, help="which held-out set (default: %(default)s)")
    edemo.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    edemo.add_argument("--cfg", type=float, default=3.0, help="guidance scale (default: %(default)s)")
    edemo.add_argument("--shift", type=float, default=None, help="sigma shift (default: the pipeline's)")
    edemo.add_argument(
        "--alphas", default=None, help="comma list of LoRA alphas to score (default: the model's own)"
    )
    edemo.add_argument("--no-base", action="store_true", help="skip the base model column")
    edemo.add_argument("--tasks", default=",".join(EVAL_TASKS), help=f"comma list of {', '.join(EVAL_TASKS)}")
    edemo.add_argument("--json", default=None, metavar="FILE", help="also write every result, per clip, here")
    edemo.add_argument(
        "--frames", default=None, metavar="N[,N...]",
        help="clip lengths to score every task at, one column each (default: the model's own)",
    )  # fmt: skip


def run_train(args: argparse.Namespace) -> None:
    from .run import run_training_cli, train_vta_on_folder

    if args.train_kind == "demo":
        stages = [s for s in args.stages.split(",") if s]
        run_training_cli(args.run_dir, stages, args.set, args.tiny, args.export_dir, args.device)
    else:
        path = train_vta_on_folder(
            args.model, args.latents, args.run_dir, args.set, device=args.device, dtype=args.dtype
        )
        print(f"LoRA written to {path}")


def run_eval(args: argparse.Namespace) -> None:
    from .evaluate import EvalSettings, evaluate_demo, format_table

    tasks = tuple(t for t in args.tasks.split(",") if t)
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown:
        raise ValueError(
            f"--tasks={args.tasks!r}: {unknown} are not tasks; choose from {', '.join(EVAL_TASKS)}"
        )
    if args.num_clips < 1:
        raise ValueError(f"--num-clips={args.num_clips}: must be 1 or more")
    alphas = parse_float_list(args.alphas, "alphas") if args.alphas is not None else None
    settings = EvalSettings(args.num_clips, args.eval_seed, args.steps, args.cfg, args.shift, tasks=tasks)
    lengths = parse_int_list(args.frames, "frames") if args.frames else [None]
    bad = [n for n in lengths if n is not None and (n < 5 or (n - 1) % 4)]
    if bad:
        raise ValueError(
            f"--frames={args.frames!r}: {bad} are not clip lengths; give 4k+1 values of 5 or more"
        )
    results = evaluate_demo(args.model, settings, alphas, include_base=not args.no_base, lengths=lengths)
    print(format_table({name: r["metrics"] for name, r in results.items()}))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n")


# What `pusa.main` runs for each command added by `add_commands`.
RUNNERS = {"train": run_train, "eval": run_eval}
