"""`pusa` command line: `pusa generate t2v|i2v|frames|v2v|long ...` and `pusa serve`.

The training commands (`pusa train`, `pusa eval`) are `pusa.train.cli`, a layer above this one: `pusa.main`
(the console script) adds them to this parser, so nothing here imports `pusa.train`.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import __version__
from .params import InputError, add_load_options, cli_message

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
    except InputError as error:  # argparse names the flag itself
        raise argparse.ArgumentTypeError(f"{error.value!r} {error.problem}; {error.allowed}") from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    # Only import-light modules here: `pusa --help` must not pay for torch and diffusers.
    from .params import COMMON
    from .runtime.memory import MEMORY_TIER_CHOICES

    model = parser.add_argument_group("model")
    add_load_options(model, "model")
    model.add_argument(
        "--no-lora",
        action="store_true",
        help="run without any LoRA (pusa-tiny: its base text-to-video model)",
    )
    add_load_options(model, "device", "text_vae_device", "dtype")
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
    add_load_options(model, "parallel", "cfg_parallel")

    gen = parser.add_argument_group("generation")
    for name in COMMON:
        if name == "loras":  # repeatable: one flag per LoRA of the stack
            add_param(gen, name, action="append", default=None, metavar="FILE[:STRENGTH][@EXPERT]")
        else:
            add_param(gen, name, *(["-p"] if name == "prompt" else []))
    gen.add_argument(
        "--num-videos", "-n", type=int, default=1,
        help="videos to make with one model load, 1-100: seeds --seed, --seed+1, ... (random ones without "
        "--seed); with several, --output FILE.mp4 becomes FILE-<seed>.mp4 (default: 1)",
    )  # fmt: skip
    gen.add_argument(
        "--output", "-o", default=None, metavar="FILE.mp4",
        help="where to write the video; a .json sidecar goes beside it (default: "
        "outputs/<task>-<time>-<seed>.mp4, with -1, -2, ... added when that name is taken)",
    )  # fmt: skip
    gen.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --output video and its sidecar (without it, an existing one is refused "
        "before the model loads)",
    )  # fmt: skip
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def build_parser(*more_commands: Callable[[argparse._SubParsersAction], None]) -> argparse.ArgumentParser:
    """The parser of `pusa generate` and `pusa serve`; each of `more_commands` adds its own subcommands
    (listed between those two), e.g. `pusa.train.cli.add_commands`."""
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
    for add_commands in more_commands:
        add_commands(commands)
    from .app.serve import add_serve_arguments  # light: imports no gradio

    serve = commands.add_parser(
        "serve",
        help="start the web studio",
        description="Start the Pusa web studio at http://127.0.0.1:7860.",
    )
    add_serve_arguments(serve)
    return parser


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


def run_generate(args: argparse.Namespace, whole_process: bool = False) -> list[Path]:
    """Check everything the flags ask for (with the model's limits, read from its config files), then load
    the model once and make the videos. `whole_process`: the command is the process's whole life (the
    console script), so the cyclic GC may be tuned for it (`_short_lived_gc`)."""
    if not whole_process:
        return _generate(args, whole_process)
    # No cyclic GC while torch, diffusers and transformers import and the model loads: it would walk the
    # millions of objects of their ~3,000 modules hundreds of times (0.7 s of a 5 s run on pusa-tiny).
    # They live as long as the process, so they are frozen out of every later collection, also the ones
    # of the interpreter's exit (another second). benchmarks/cli_phases.py measures it.
    gc.disable()
    try:
        return _generate(args, whole_process)
    finally:
        gc.freeze()
        gc.enable()


def _generate(args: argparse.Namespace, whole_process: bool) -> list[Path]:
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
    # the seeds are drawn here, so that -o's per-seed names are known (and checked) before the load; after
    # the request's own checks, so that a bad parameter is named first
    seeds = [secrets.randbelow(2**31) if args.seed is None else args.seed + k for k in range(count)]
    for path in (
        [] if args.overwrite or not args.output else [_named_output(args.output, count, s) for s in seeds]
    ):
        if taken := _taken(path):
            problem = "exists" if taken == path else f"has a sidecar {taken.name} already"
            raise InputError("output", str(path), "give another path or --overwrite", problem)
    for note in advisories(resolved, limits.defaults):
        print(f"pusa: warning: {cli_message(note)}", file=sys.stderr)
    if args.quiet:
        _quiet_libraries()
    from tqdm import tqdm

    pipe = load_pipeline(args)
    if whole_process:  # what the imports and the load made lives as long as the process
        gc.freeze()
        gc.enable()
    outputs = []
    for index in range(count):
        seed = seeds[index]
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
            output = _named_output(args.output, count, settings["seed"])
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            output = _unused(Path("outputs") / f"{args.task}-{stamp}-{settings['seed']}.mp4")
        out.save(output)
        print(
            f"wrote {output} ({settings['num_frames']} frames, {settings['width']}x{settings['height']}, "
            f"seed {settings['seed']}, {settings['elapsed_s']:.1f} s) and {output.with_suffix('.json')}"
        )
        outputs.append(output)
    return outputs


def _named_output(output: str, count: int, seed: int) -> Path:
    """-o's path for `seed`'s video: as given for one video, `FILE-<seed>.mp4` for several."""
    path = Path(output)
    return path if count == 1 else path.with_name(f"{path.stem}-{seed}.mp4")


def _taken(path: Path) -> Path | None:
    """What saving a video at `path` would replace: the video, else its sidecar; None: nothing."""
    return next((p for p in (path, path.with_suffix(".json")) if p.exists()), None)


def _unused(path: Path) -> Path:
    """`path`, else with -1, -2, ... added: the default name never replaces an earlier video."""
    candidate, k = path, 0
    while _taken(candidate):
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


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


def main(
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    runners: Mapping[str, Callable[[argparse.Namespace], object]] | None = None,
    whole_process: bool = False,
) -> int:
    """Run one `pusa` command; the exit status. `parser` and `runners` (command -> its function) add
    commands of the layers above (`pusa.main`); without them, `generate` and `serve`. `whole_process`:
    this process runs the one command and exits (the console script), not a caller that goes on."""
    args = (parser or build_parser()).parse_args(argv)
    try:
        if args.command == "serve":
            from .app.serve import serve_main

            return serve_main(args)
        if args.command == "generate":
            run_generate(args, whole_process)
        elif runners and args.command in runners:
            runners[args.command](args)
    except ValueError as error:  # bad input: the message names the parameter, the value and what is allowed
        print(f"pusa: error: {cli_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pusa: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(whole_process=True))
