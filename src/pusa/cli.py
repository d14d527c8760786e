"""`pusa` command line: `pusa generate t2v|i2v|frames|v2v ...`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__

TASK_HELP = {
    "t2v": "text-to-video",
    "i2v": "image-to-video: the image becomes the first frame",
    "frames": "multi-frames-to-video: start/end frames or keyframes at chosen latent positions",
    "v2v": "video-to-video: keep chosen latent frames of a source video (recipes: extension, completion, transition)",
}


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected comma-separated whole numbers, e.g. 0,20") from None


def parse_float_list(text: str, flag: str) -> list[float]:
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise ValueError(
            f"{flag}={text!r}: expected comma-separated numbers in [0, 1], e.g. 0.2,0.5"
        ) from None


def _attention_backend(value: str) -> str:
    """`--attention` values, checked against diffusers' backends only when one is named (keeps --help fast)."""
    if value == "auto":
        return value
    from .acceleration import validate_attention_backend

    try:
        return validate_attention_backend(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    # Only the import-light presets module here: `pusa --help` must not pay for torch and diffusers.
    from .presets import (
        DEFAULT_CFG,
        DEFAULT_LORA_ALPHA,
        DEFAULT_MODEL,
        DEFAULT_SHIFT,
        MEMORY_TIER_CHOICES,
        PRESETS,
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="DIR|NAME",
        help="a local model folder (diffusers layout or Wan's original layout) or a built-in model: "
        f"{', '.join(PRESETS)} (default: {DEFAULT_MODEL}, the shipped demo model; its frame count, size "
        "and steps are the defaults below)",
    )  # fmt: skip
    model.add_argument(
        "--lora", metavar="FILE",
        help="Pusa LoRA file (pusa_v1.pt or .safetensors), applied at --lora-alpha "
        "(default: the one the model folder ships with, as pusa-tiny's VTA LoRA)",
    )  # fmt: skip
    model.add_argument(
        "--no-lora",
        action="store_true",
        help="run without any LoRA (pusa-tiny: its base text-to-video model)",
    )
    model.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    model.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"),
        help="weights precision (default: float32 on CPU, bfloat16 on GPU)",
    )  # fmt: skip

    model.add_argument(
        "--memory", default="auto", choices=MEMORY_TIER_CHOICES,
        help="GPU memory tier: full (all on the GPU), balanced (fits 24 GB), low (fits 12 GB); "
        "auto picks from free VRAM (default: auto)",
    )  # fmt: skip
    model.add_argument(
        "--attention", default="auto", type=_attention_backend, metavar="BACKEND",
        help="attention kernel: auto (times the fused ones and keeps the fastest) or a diffusers backend "
        "name such as native, flash, _flash_3, sage, xformers (default: auto)",
    )  # fmt: skip
    model.add_argument("--compile", action="store_true", help="torch.compile the repeated transformer blocks")
    model.add_argument(
        "--fp8", action="store_true", help="store the transformer weights in float8 (half the memory)"
    )

    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", "-p", default="", help="what the video shows")
    gen.add_argument(
        "--negative-prompt", default=None, help="what to avoid (default: Wan's standard negative prompt)"
    )
    gen.add_argument(
        "--lora-alpha",
        type=float,
        default=None,
        help=f"LoRA strength 0.1-5.0 (default: the model's; {DEFAULT_LORA_ALPHA} for Pusa V1)",
    )
    gen.add_argument(
        "--steps", type=int, default=None, help="inference steps 1-50 (default: the model's, 10 for Pusa V1)"
    )
    gen.add_argument(
        "--cfg",
        type=float,
        default=DEFAULT_CFG,
        help="classifier-free guidance 1.0-20.0; 1.0 skips the negative pass (default: %(default)s)",
    )
    gen.add_argument(
        "--shift", type=float, default=DEFAULT_SHIFT, help="noise schedule shift (default: %(default)s)"
    )
    gen.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (default: random; the seed used is printed and saved)",
    )
    gen.add_argument(
        "--num-videos",
        "-n",
        type=int,
        default=1,
        help="videos to make with one model load, 1-100: seeds --seed, --seed+1, ... (random ones without "
        "--seed); with several, --output FILE.mp4 becomes FILE-<seed>.mp4 (default: 1)",
    )
    gen.add_argument(
        "--frames",
        type=int,
        default=None,
        help="number of frames, 4k+1 (default: the model's, 81 for Pusa V1)",
    )
    gen.add_argument(
        "--width", type=int, default=None, help="width in pixels, a multiple of 16 (default: the model's)"
    )
    gen.add_argument(
        "--height", type=int, default=None, help="height in pixels, a multiple of 16 (default: the model's)"
    )
    gen.add_argument(
        "--fps", type=float, default=None, help="playback frame rate (default: the model's, 16 for Wan)"
    )
    gen.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="FILE.mp4",
        help="where to write the video; a .json sidecar goes beside it (default: outputs/<task>-<time>-<seed>.mp4)",
    )
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pusa",
        description="Pusa V1 video generation: one model, every task, by giving every frame its own noise level.",
    )
    parser.add_argument("--version", action="version", version=f"pusa {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    generate = commands.add_parser(
        "generate", help="generate a video", description="Generate a video (one task)."
    )
    tasks = generate.add_subparsers(dest="task", metavar="TASK", required=True)

    t2v = tasks.add_parser("t2v", help=TASK_HELP["t2v"], description=TASK_HELP["t2v"])
    _add_common(t2v)

    i2v = tasks.add_parser("i2v", help=TASK_HELP["i2v"], description=TASK_HELP["i2v"])
    i2v.add_argument(
        "--image", required=True, help="the first frame (PNG, JPEG, ...), center-cropped to the video size"
    )
    i2v.add_argument(
        "--noise-multiplier",
        type=float,
        default=0.2,
        help="0.0 keeps the image exactly, 1.0 ignores it (default: %(default)s)",
    )
    _add_common(i2v)

    frames = tasks.add_parser(
        "frames", help=TASK_HELP["frames"],
        description=TASK_HELP["frames"] + ". Positions are latent frame indices: latent 0 is pixel frame 0, "
        "latent k covers pixel frames 4k-3..4k (for 81 frames, 0,20 = first and last).",
    )  # fmt: skip
    frames.add_argument(
        "--images", nargs="+", required=True, metavar="IMAGE", help="two or more images, in order"
    )
    frames.add_argument(
        "--positions",
        default=None,
        help="latent frame per image, comma-separated (default: spread from first to last)",
    )
    frames.add_argument(
        "--noise-multipliers",
        default=None,
        help="one per image, 0.0-1.0, comma-separated (default: 0.2 then 0.5)",
    )
    _add_common(frames)

    v2v = tasks.add_parser(
        "v2v", help=TASK_HELP["v2v"],
        description=TASK_HELP["v2v"] + ". Positions are latent frame indices of the source video; "
        "it needs at least 4*max(position)+1 frames.",
    )  # fmt: skip
    v2v.add_argument("--video", required=True, help="source video (mp4, webm, mov, ...)")
    v2v.add_argument(
        "--recipe", choices=("extension", "completion", "transition"), default=None,
        help="extension: continue the clip from its last 13 frames; completion: regenerate the middle from "
        "its first frame and last 4; transition: bridge --video to --end-video",
    )  # fmt: skip
    v2v.add_argument("--end-video", default=None, help="second clip, for --recipe transition")
    v2v.add_argument(
        "--positions",
        default=None,
        help="latent frames to keep, comma-separated, e.g. 0,1,2,3 (required without --recipe)",
    )
    v2v.add_argument(
        "--noise-multipliers",
        default=None,
        help="one per position, 0.0-1.0, comma-separated (default: the recipe's, else 0.2 each)",
    )
    _add_common(v2v)
    _add_train_commands(commands)
    from .app.serve import add_serve_arguments  # light: imports no gradio

    serve = commands.add_parser(
        "serve",
        help="start the web studio",
        description="Start the Pusa web studio at http://127.0.0.1:7860.",
    )
    add_serve_arguments(serve)
    return parser


def _add_train_commands(commands) -> None:
    """`pusa train demo|vta` and `pusa eval demo` (the recipe and evaluation import torch only when run)."""
    from .train import EVAL_TASKS, STAGES

    train = commands.add_parser(
        "train", help="train the pusa-tiny demo model, or a VTA LoRA on a real model",
        description="Pusa's recipe: VAE, then a text-to-video base with one timestep per clip, then the VTA "
        "LoRA with a timestep per frame. Every stage checkpoints and resumes; progress goes to a bar and to "
        "RUN/log.jsonl.",
    )  # fmt: skip
    kinds = train.add_subparsers(dest="train_kind", required=True, metavar="{demo,vta}")
    demo = kinds.add_parser(
        "demo", help="the whole pusa-tiny recipe on the procedural world (about 4 hours on 2 CPU cores)",
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
        description="The recipe's VTA stage on any model folder (a Wan2.1 folder on GPUs): a LoRA with a "
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
    vta.add_argument("--device", default="cpu", help="torch device (default: cpu)")
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


def run_train(args: argparse.Namespace) -> None:
    from .train import recipe

    if args.train_kind == "demo":
        stages = [s for s in args.stages.split(",") if s]
        recipe.run_recipe_cli(args.run_dir, stages, args.set, args.tiny, args.export_dir, args.device)
    else:
        path = recipe.train_vta_on_folder(
            args.model, args.latents, args.run_dir, args.set, device=args.device, dtype=args.dtype
        )
        print(f"LoRA written to {path}")


def run_eval(args: argparse.Namespace) -> None:
    from .train import EVAL_TASKS
    from .train.evaluate import EvalSettings, evaluate_demo, format_table

    tasks = tuple(t for t in args.tasks.split(",") if t)
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown:
        raise ValueError(
            f"--tasks={args.tasks!r}: {unknown} are not tasks; choose from {', '.join(EVAL_TASKS)}"
        )
    if args.num_clips < 1:
        raise ValueError(f"--num-clips={args.num_clips}: must be 1 or more")
    alphas = parse_float_list(args.alphas, "--alphas") if args.alphas is not None else None
    settings = EvalSettings(args.num_clips, args.eval_seed, args.steps, args.cfg, args.shift, tasks=tasks)
    results = evaluate_demo(args.model, settings, alphas, include_base=not args.no_base)
    print(format_table({name: r["metrics"] for name, r in results.items()}))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n")


def load_pipeline(args: argparse.Namespace):
    import torch

    from .pipeline import PusaPipeline
    from .presets import resolve_model

    dtype_name = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    dtype = getattr(torch, dtype_name)
    acceleration = dict(memory=args.memory, attention=args.attention, compile=args.compile, fp8=args.fp8)
    if args.no_lora and args.lora:
        raise ValueError(f"--no-lora and --lora={args.lora!r} contradict each other; give one")
    lora = None if args.no_lora else (args.lora or "auto")
    resolve_model(args.model, lora, prefix="--")  # the CLI's flag names in any error
    return PusaPipeline.from_model(args.model, lora=lora, device=args.device, dtype=dtype, **acceleration)


def run_generate(args: argparse.Namespace) -> list[Path]:
    from tqdm import tqdm

    from .pipeline import DEFAULT_NEGATIVE_PROMPT

    count = args.num_videos
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
        raise ValueError(f"--num-videos={count!r} is not allowed; make 1 to 100 videos per command")
    if args.output and Path(args.output).suffix.lower() != ".mp4":
        raise ValueError(
            f"--output={args.output!r}: the video is written as H.264 mp4; give a path ending in .mp4"
        )
    pipe = load_pipeline(args)
    common = dict(
        negative_prompt=args.negative_prompt if args.negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT,
        lora_alpha=args.lora_alpha,
        num_inference_steps=args.steps,
        cfg=args.cfg,
        shift=args.shift,
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        fps=args.fps,
    )
    positions = parse_int_list(args.positions, "--positions") if getattr(args, "positions", None) else None
    multipliers = (
        parse_float_list(args.noise_multipliers, "--noise-multipliers")
        if getattr(args, "noise_multipliers", None)
        else None
    )
    method, method_args, kwargs = _task_call(args, pipe, positions, multipliers)
    outputs = []
    for index in range(count):
        seed = None if args.seed is None else args.seed + index
        label = f"pusa {args.task}" + (f" {index + 1}/{count}" if count > 1 else "")
        bars = []

        def progress(info, bars=bars, label=label) -> None:  # starts once the inputs are checked
            if not bars:
                bars.append(tqdm(total=info.num_steps, desc=label, unit="step", disable=args.quiet))
            bars[0].update(1)

        out = method(*method_args, **kwargs, **common, seed=seed, callback=progress)
        for bar in bars:
            bar.close()
        settings = out.settings
        if args.output:
            output = Path(args.output)
            output = output if count == 1 else output.with_name(f"{output.stem}-{settings['seed']}.mp4")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            output = Path("outputs") / f"{args.task}-{stamp}-{settings['seed']}.mp4"
        out.save(output)
        print(
            f"wrote {output} ({settings['num_frames']} frames, {settings['width']}x{settings['height']}, "
            f"seed {settings['seed']}, {settings['elapsed_s']:.1f} s) and {output.with_suffix('.json')}"
        )
        outputs.append(output)
    return outputs


def _task_call(args: argparse.Namespace, pipe, positions, multipliers) -> tuple:
    """(method, positional args, keyword args) of the pipeline call `args` ask for; inputs checked here."""
    if args.task == "t2v":
        return pipe.text_to_video, (args.prompt,), {}
    if args.task == "i2v":
        return pipe.image_to_video, (args.image, args.prompt), {"noise_multiplier": args.noise_multiplier}
    if args.task == "frames":
        kwargs = {"positions": positions, "noise_multipliers": multipliers}
        return pipe.frames_to_video, (args.images, args.prompt), kwargs
    if args.recipe is None:
        if positions is None:
            raise ValueError("--positions: required for v2v without --recipe, e.g. --positions 0,1,2,3")
        kwargs = {"positions": positions, "noise_multipliers": multipliers}
        return pipe.video_to_video, (args.video, args.prompt), kwargs
    if args.recipe != "transition" and args.end_video:
        raise ValueError(f"--end-video is only used by --recipe transition, not {args.recipe!r}")
    if positions is not None:
        raise ValueError(
            f"--positions={args.positions!r}: the {args.recipe} recipe sets the positions itself"
        )
    kwargs = {"noise_multipliers": multipliers} if multipliers is not None else {}
    if args.recipe == "extension":
        return pipe.extend_video, (args.video, args.prompt), kwargs
    if args.recipe == "completion":
        return pipe.complete_video, (args.video, args.prompt), kwargs
    if not args.end_video:
        raise ValueError("--end-video: required by --recipe transition (the clip to arrive at)")
    return pipe.transition, (args.video, args.end_video, args.prompt), kwargs


FLAGS = {
    "num_inference_steps": "--steps",
    "num_frames": "--frames",
    "lora_alpha": "--lora-alpha",
    "noise_multipliers": "--noise-multipliers",
    "positions": "--positions",
    "images": "--images",
    "image": "--image",
    "video": "--video",
    "end_video": "--end-video",
    "start_video": "--video",
    "negative_prompt": "--negative-prompt",
    "device": "--device",
}


def _with_flag(message: str) -> str:
    """Pipeline errors name the API parameter; say which command-line flag sets it."""
    name = message.split("=", 1)[0].split(":", 1)[0].split(" ", 1)[0]
    flag = FLAGS.get(name) or (
        f"--{name}" if name in ("width", "height", "cfg", "shift", "seed", "fps") else None
    )
    return f"{message} [{flag}]" if flag else message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from .app.serve import serve_main

            return serve_main(args)
        if args.command == "generate":
            run_generate(args)
        if args.command == "train":
            run_train(args)
        if args.command == "eval":
            run_eval(args)
    except ValueError as error:  # bad input: the message names the parameter, the value and what is allowed
        print(f"pusa: error: {_with_flag(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pusa: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
