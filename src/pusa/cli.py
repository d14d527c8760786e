"""`pusa` command line: `pusa generate t2v|i2v|frames|v2v ...`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .params import cli_message

TASK_HELP = {
    "t2v": "text-to-video",
    "i2v": "image-to-video: the image becomes the first frame",
    "frames": "multi-frames-to-video: start/end frames or keyframes at chosen latent positions",
    "v2v": "video-to-video: keep chosen latent frames of a source video (recipes: extension, completion, transition)",
    "long": "long video: one video of --frames frames, chained from clips of the model's own length, "
    "from the prompt, an --image or the end of a --video",
}
_TYPES = {
    "int": int,
    "float": float,
    "text": str,
    "choice": str,
    "ints": str,
    "floats": str,
    "media": str,
    "medias": str,
}


def parse_int_list(text: str, param: str) -> list[int]:
    """ "0,4" -> [0, 4]; an `InputError` naming `param` (the CLI shows its flag) otherwise."""
    from .params import InputError

    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise InputError(
            param, text, "expected comma-separated whole numbers, e.g. 0,4", "is not a list"
        ) from None


def parse_float_list(text: str, param: str) -> list[float]:
    """ "0.2,0.5" -> [0.2, 0.5]; an `InputError` naming `param` otherwise."""
    from .params import InputError

    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise InputError(
            param, text, "expected comma-separated numbers, e.g. 0.2,0.5", "is not a list"
        ) from None


def add_param(group: argparse._ActionsContainer, name: str, *aliases: str, **overrides) -> None:
    """A flag made from the parameter's declaration (`pusa.params`): its type, range and default in the help.
    A default of "the model's own" is None here, filled from the model folder."""
    from .params import MODEL_OWN, PARAMS

    param = PARAMS[name]
    help_text = param.help
    if param.kind in ("int", "float") and param.low is not None and param.high is not None:
        help_text += f"; {param.low:g}-{param.high:g}"
    default = None if param.default is MODEL_OWN else param.default
    if param.default is not MODEL_OWN and param.default not in (None, "") and name != "negative_prompt":
        help_text += " (default: %(default)s)"
    options = dict(dest=name, type=_TYPES[param.kind], default=default, help=help_text)
    if param.kind == "choice":
        options["choices"] = param.choices
    if param.kind == "medias":
        options.update(nargs="+", type=str, metavar=name.upper().rstrip("S"))
    group.add_argument(param.flag, *aliases, **{**options, **overrides})


def _attention_backend(value: str) -> str:
    """`--attention` values, checked against diffusers' backends only when one is named (keeps --help fast)."""
    if value == "auto":
        return value
    from .runtime.kernels import validate_attention_backend

    try:
        return validate_attention_backend(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    # Only import-light modules here: `pusa --help` must not pay for torch and diffusers.
    from .params import COMMON
    from .runtime.memory import MEMORY_TIER_CHOICES
    from .weights.registry import BUILTIN_MODELS, DEFAULT_MODEL

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="DIR|NAME",
        help="a local model folder (diffusers layout or Wan's original layout) or a built-in model: "
        f"{', '.join(BUILTIN_MODELS)} (default: {DEFAULT_MODEL}, the shipped demo model; its frame count, size "
        "and steps are the defaults below)",
    )  # fmt: skip
    model.add_argument(
        "--no-lora",
        action="store_true",
        help="run without any LoRA (pusa-tiny: its base text-to-video model)",
    )
    model.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    model.add_argument(
        "--text-vae-device", default=None, metavar="DEVICE",
        help="run the text encoder and the VAE on this device, resident, and the transformer on --device: "
        "e.g. --device cuda:0 --text-vae-device cuda:1 (two GPUs, no --parallel: the set-up of Pusa's "
        "original demo), or cpu to keep them off the GPU (default: with the transformer)",
    )  # fmt: skip
    model.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"),
        help="weights precision (default: float32 on CPU, bfloat16 on GPU)",
    )  # fmt: skip
    model.add_argument(
        "--memory", default="auto", choices=MEMORY_TIER_CHOICES,
        help="GPU memory tier: full (all on the GPU), balanced (fits 24 GB), low (fits 12 GB), swap (two-expert "
        "models: one expert on the GPU, the other in pinned CPU memory, swapped at the boundary), stream (two-expert "
        "model folders: the other expert in no memory at all, read from its safetensors files at the boundary; for "
        "32-64 GB hosts); auto picks from free VRAM, counting both experts, then host RAM: where both experts "
        "cannot be pinned, stream instead of swap, and balanced/low read the inactive expert from its files "
        "(default: auto)",
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
    model.add_argument(
        "--lora-mode", default="fuse", choices=("fuse", "adapter"),
        help="fuse: the LoRA stack fused into the weights (fastest steps); adapter: unfused PEFT adapters, the "
        "weights never written (an expert read from its files at the boundary needs no re-fuse; no .diff "
        "LoRAs) (default: fuse)",
    )  # fmt: skip
    model.add_argument(
        "--cfg-batch", default="auto", choices=("auto", "on", "off"),
        help="run CFG's positive and negative passes as one batch of 2: auto = on CUDA except --memory low "
        "(default: auto)",
    )  # fmt: skip
    model.add_argument(
        "--fp8-compute", default="off", choices=("off", "rowwise", "tensor"),
        help="run the transformer blocks' matrix products in float8 with per-row (token x channel) or "
        "per-tensor scales (torch._scaled_mm; a GPU of compute capability 8.9+, or the CPU) (default: off)",
    )  # fmt: skip
    model.add_argument(
        "--parallel", type=int, default=1, metavar="N",
        help="split each video's transformer over N processes (context parallel): cuda:0..N-1 with --device "
        "cuda, else N CPU processes; this process keeps the text encoder, VAE and files (default: 1)",
    )  # fmt: skip
    model.add_argument(
        "--cfg-parallel", action="store_true",
        help="the positive and the negative guidance pass of each step at the same time: on 2 processes "
        "(cuda:0 and cuda:1 with --device cuda), or with --parallel N (even) on two groups of N/2 processes "
        "that each split their pass by tokens",
    )  # fmt: skip

    gen = parser.add_argument_group("generation")
    for name in COMMON:
        if name == "loras":  # repeatable: one flag per LoRA of the stack
            add_param(gen, name, action="append", default=None, metavar="FILE[:STRENGTH][@EXPERT]")
        else:
            add_param(gen, name, *(["-p"] if name == "prompt" else []))
    gen.add_argument(
        "--num-videos",
        "-n",
        type=int,
        default=1,
        help="videos to make with one model load, 1-100: seeds --seed, --seed+1, ... (random ones without "
        "--seed); with several, --output FILE.mp4 becomes FILE-<seed>.mp4 (default: 1)",
    )
    gen.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="FILE.mp4",
        help="where to write the video; a .json sidecar goes beside it (default: outputs/<task>-<time>-<seed>.mp4)",
    )
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


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
    descriptions = {
        "frames": ". Positions are latent frame indices: latent 0 is pixel frame 0, latent k covers pixel "
        "frames 4k-3..4k (for 81 frames, 0,20 = first and last; for pusa-tiny's 17, 0,4).",
        "v2v": ". Positions are latent frame indices of the source video; it needs at least 4*max(position)+1 "
        "frames. Recipes set the positions themselves (--noise-multipliers overrides their strengths).",
        "long": ". Each chunk after the first opens on the last --overlap latent frames of the one before "
        "(e.g. pusa-tiny: --frames 65 is 4 chunks of 17); one progress bar, one mp4, every chunk's seed "
        "and settings in its sidecar.",
    }
    required = {"image", "images", "video"}
    defaults_help = {
        "positions": {
            "frames": " (default: spread from first to last)",
            "v2v": " (required without --recipe)",
        },
        "image": {"long": " (optional: the first chunk is image-to-video)"},
        "video": {"long": " (optional: the first chunk extends its end)"},
        "noise_multiplier": {"long": " (with --image)"},
        "noise_multipliers": {
            "frames": " (default: 0.2 then 0.5)",
            "v2v": " (default: the recipe's, else 0.2 each)",
        },
    }
    from .params import PARAMS, TASK_INPUTS

    for task, inputs in (("t2v", ()), *((t, TASK_INPUTS[t]) for t in ("i2v", "frames", "v2v", "long"))):
        sub = tasks.add_parser(
            task, help=TASK_HELP[task], description=TASK_HELP[task] + descriptions.get(task, "")
        )
        for name in inputs:
            extra = defaults_help.get(name, {}).get(task, "")
            add_param(sub, name, required=name in required and task != "long", help=PARAMS[name].help + extra)
        _add_common(sub)
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
    edemo.add_argument(
        "--frames", default=None, metavar="N[,N...]",
        help="clip lengths to score every task at, one column each (default: the model's own)",
    )  # fmt: skip


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


def load_pipeline(args: argparse.Namespace):
    import torch

    from .pipeline import PusaPipeline

    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    acceleration = dict(
        memory=args.memory,
        attention=args.attention,
        compile=args.compile,
        fp8=args.fp8,
        cfg_batch=args.cfg_batch,
        fp8_compute=args.fp8_compute,
    )
    if getattr(args, "lora_mode", "fuse") != "fuse":  # the default is left out: every face's own default
        acceleration["lora_mode"] = args.lora_mode
    if getattr(args, "text_vae_device", None) is not None:
        acceleration["text_vae_device"] = args.text_vae_device
    if getattr(args, "parallel", 1) > 1 or getattr(args, "cfg_parallel", False):
        from .parallel.launch import start_ranks  # rank 0 is this process; the others follow its jobs

        return start_ranks(args.parallel, args.cfg_parallel, args.model, _lora(args), args.device, dtype,
                           acceleration).pipe  # fmt: skip
    return PusaPipeline.from_model(
        args.model, lora=_lora(args), device=args.device, dtype=dtype, **acceleration
    )


def _lora(args: argparse.Namespace):
    """What the model loads with: its own LoRAs ("auto"), or none (--no-lora, or --lora flags, which are
    the request's stack and replace the model's own)."""
    if args.no_lora and args.loras:
        raise ValueError(f"--no-lora and --lora={args.loras[0]!r} contradict each other; give one")
    return None if args.no_lora or args.loras else "auto"


def build_request(args: argparse.Namespace, limits):
    """The `GenerationRequest` the flags ask for (seed: --seed; the model's own values left None)."""
    from . import recipes
    from .params import COMMON, LONG
    from .request import GenerationRequest

    fields = {name: getattr(args, name) for name in COMMON}
    fields["loras"] = "\n".join(args.loras or ())
    positions = parse_int_list(args.positions, "positions") if getattr(args, "positions", None) else []
    multipliers = (
        parse_float_list(args.noise_multipliers, "noise_multipliers")
        if getattr(args, "noise_multipliers", None)
        else []
    )
    if args.task == "i2v":
        return GenerationRequest(
            task="i2v",
            images=[args.image],
            positions=[0],
            noise_multipliers=[args.noise_multiplier],
            **fields,
        )
    if args.task == "frames":
        num_frames = args.num_frames or limits.defaults.num_frames
        positions = positions or recipes.spread_positions(len(args.images), num_frames)
        multipliers = multipliers or recipes.keyframe_multipliers(len(positions))
        return GenerationRequest(
            task="frames",
            images=list(args.images),
            positions=positions,
            noise_multipliers=multipliers,
            **fields,
        )
    if args.task == "long":
        chunk = {name: getattr(args, name) for name in LONG}
        chunk["chunk_multipliers"] = (
            parse_float_list(args.chunk_multipliers, "chunk_multipliers") if args.chunk_multipliers else []
        )
        image = dict(images=[args.image], positions=[0], noise_multipliers=[args.noise_multiplier])
        return GenerationRequest(
            task="long", video=args.video, **(image if args.image else {}), **chunk, **fields
        )
    if args.task == "v2v":
        return GenerationRequest(
            task="v2v", video=args.video, end_video=args.end_video, positions=positions,
            noise_multipliers=multipliers, recipe=args.recipe, **fields,
        )  # fmt: skip
    return GenerationRequest(task="t2v", **fields)


def run_generate(args: argparse.Namespace) -> list[Path]:
    """Check everything the flags ask for (with the model's limits, read from its config files), then load
    the model once and make the videos."""
    from dataclasses import replace

    from .request import advisories, validate
    from .runtime.device import check_device
    from .weights.registry import model_limits, resolve_model

    count = args.num_videos
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
        raise ValueError(f"--num-videos={count!r} is not allowed; make 1 to 100 videos per command")
    if args.output and Path(args.output).suffix.lower() != ".mp4":
        raise ValueError(
            f"--output={args.output!r}: the video is written as H.264 mp4; give a path ending in .mp4"
        )
    resolve_model(args.model, _lora(args), prefix="--")  # the CLI's flag names in any error
    from .parallel.flags import check_parallel_flags  # light: no torch

    check_parallel_flags(args.parallel, args.cfg_parallel, args.device)
    if args.device != "cpu":  # "cpu" is always there: no need to import torch to say so
        check_device(args.device)
    if args.text_vae_device is not None:
        from .parallel.flags import rank_layout
        from .runtime.device import check_text_vae_device

        check_text_vae_device(args.text_vae_device, rank_layout(args.parallel, args.cfg_parallel)[0])
    if args.attention != "auto":  # a kernel package that is not installed: said before any weights load
        from .runtime.kernels import check_attention_installed

        check_attention_installed(args.attention)
    limits = model_limits(args.model, prefix="--")
    request = build_request(args, limits)
    resolved = validate(request, limits)  # before any weights load; the pipeline checks again, cheaply
    _check_lora_files(resolved, resolve_model(args.model))
    for note in advisories(resolved, limits.defaults):
        print(f"pusa: warning: {cli_message(note)}", file=sys.stderr)
    if args.quiet:
        _quiet_libraries()
    from tqdm import tqdm

    pipe = load_pipeline(args)
    outputs = []
    for index in range(count):
        seed = None if args.seed is None else args.seed + index
        label = f"pusa {args.task}" + (f" {index + 1}/{count}" if count > 1 else "")
        bars = []

        def progress(info, bars=bars, label=label) -> None:  # starts once the inputs are checked
            if not bars:
                bars.append(tqdm(total=info.num_steps, desc=label, unit="step", disable=args.quiet))
            if hasattr(info, "chunk"):  # a long video: one bar over its chunks
                bars[0].set_postfix_str(info.text(), refresh=False)
            bars[0].update(1)

        out = pipe.generate(replace(request, seed=seed), progress)
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


def _check_lora_files(request, model) -> None:
    """Read every LoRA of the stack before the model loads (kept for the pipeline) and, for a model folder,
    check it against the DiT's safetensors headers, so that a file in no known format or one that matches
    nothing is named by its flag at once."""
    from .lora_specs import parse_loras
    from .params import InputError

    specs = parse_loras(request.loras)
    if not specs:
        return
    from .weights.checkpoints import CheckpointError
    from .weights.stack import load_lora_cached

    for spec in specs:
        try:
            load_lora_cached(spec.path)
        except CheckpointError as error:
            raise InputError("loras", spec.path, "give a LoRA file in a known format", str(error)) from None
    if not isinstance(model, str):  # a folder (tiny-random is built in memory: the pipeline checks it)
        from .weights.stack import check_stack_fits_folder

        check_stack_fits_folder(specs, model)


def _quiet_libraries() -> None:
    """-q: no weight-loading bars from diffusers / transformers either."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


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
        print(f"pusa: error: {cli_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pusa: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
