"""`pusa serve`: command-line options and start-up of the studio.

The page answers within seconds: the model loads in the job queue's worker thread while the server
is already up (the page says "loading model..." and the Generate buttons wait for it). Importing this
module is cheap; gradio is imported only when the studio starts.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..params import InputError, add_load_options, cli_message

AUTH_ENV = "PUSA_AUTH"


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    add_load_options(parser, "model")
    parser.add_argument(
        "--lora", metavar="FILE",
        help="Pusa LoRA file (pusa_v1.pt or .safetensors) (default: the one the model folder ships with)",
    )  # fmt: skip
    parser.add_argument(
        "--lora-dir", default=None, metavar="DIR",
        help="LoRA files the studio's LoRA panel offers (*.safetensors, *.pt, *.pth in DIR and its "
        "subfolders), besides the model folder's own; any path on the server may be typed (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--outputs", default="outputs", metavar="DIR",
        help="videos, their inputs and history.sqlite go here (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--auth", default=None, metavar="USER:PASSWORD",
        help=f"require this login (default: the {AUTH_ENV} environment variable, else none)",
    )  # fmt: skip
    # the model load: the same flags, defaults and help as `pusa generate` (declared in `pusa.params`)
    add_load_options(parser, "device", "text_vae_device", "dtype", "parallel", "cfg_parallel")
    cluster = parser.add_argument_group('workers (Ray; pip install -e ".[cluster]")')
    cluster.add_argument(
        "--workers", default="0", metavar="N|auto",
        help="run jobs on N Ray workers, each loading the model once: one process (one GPU with --device "
        "cuda), or with --parallel M / --cfg-parallel a group of M processes on one machine that splits "
        "each of its jobs; a local Ray cluster on 127.0.0.1 unless --ray-address (default: 0, the embedded "
        "worker; auto: as many as the machines hold, by their GPUs with --device cuda, else their cores)",
    )  # fmt: skip
    cluster.add_argument(
        "--ray-address", default=None, metavar="HOST:PORT",
        help="join a running Ray cluster (`ray start --head` on one machine, `ray start --address` on the "
        "others); its workers may be on any machine of it (with this flag alone: --workers auto)",
    )  # fmt: skip
    cluster.add_argument(
        "--worker-cpus", type=float, default=1.0, metavar="N",
        help="CPU cores Ray reserves per worker process (and its torch threads); a worker of --parallel M "
        "reserves M times this (default: %(default)s)",
    )  # fmt: skip
    return parser


def cluster_spec(args: argparse.Namespace):
    """The Ray workers `--workers` / `--ray-address` ask for, or None for the embedded worker."""
    workers = getattr(args, "workers", 0)
    address = getattr(args, "ray_address", None)
    if isinstance(workers, str) and workers != "auto":
        with contextlib.suppress(ValueError):
            workers = int(workers)
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 256
    ):
        raise ValueError(f"--workers={workers!r} is not allowed; must be a whole number in 0..256, or auto")
    if not workers and not address:
        return None
    if getattr(args, "text_vae_device", None) is not None:
        from ..runtime.device import check_text_vae_device

        check_text_vae_device(args.text_vae_device, workers=1)
    if not 0 < args.worker_cpus <= 256:
        raise ValueError(f"--worker-cpus={args.worker_cpus!r} is not allowed; must be in (0, 256]")
    from ..parallel.flags import check_parallel_flags
    from ..serving.cluster import ClusterSpec, resolve_local_workers
    from ..weights.registry import resolve_model

    parallel, cfg_parallel = getattr(args, "parallel", 1), getattr(args, "cfg_parallel", False)
    spec = ClusterSpec(
        workers=workers or "auto", address=address, model=args.model, lora=args.lora, device=args.device,
        dtype=args.dtype, cpus_per_worker=args.worker_cpus, parallel=parallel, cfg_parallel=cfg_parallel,
    )  # fmt: skip
    resolve_model(args.model, args.lora, prefix="--")
    if spec.cuda and args.device != "cuda":
        raise ValueError(
            f"--device={args.device!r} with --workers: give plain cuda (Ray gives each worker its own GPUs)"
        )
    # A local cluster's GPUs are this machine's: all of them are checked here (with auto: enough for one
    # worker). Those of a cluster joined with --ray-address may be on other machines: `check_cluster` looks
    # at Ray's machines once it is up.
    gpus_here = 0
    if address is None:
        spec = resolve_local_workers(spec)  # auto: as many as this machine holds (at least one)
        gpus_here = spec.workers * spec.ranks
    check_parallel_flags(parallel, cfg_parallel, args.device, gpus_here=gpus_here)
    return spec


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """ "user:password" -> ("user", "password"); None or "" -> None."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"--auth / {AUTH_ENV}: expected USER:PASSWORD with both parts non-empty")
    return user, password


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, auth: tuple[str, str] | None) -> str | None:
    """What to say when the studio listens beyond this machine without a password (None: nothing)."""
    if is_loopback(host) or auth is not None:
        return None
    return (
        f"listening on {host} without --auth; anyone who can reach this machine can use the studio. "
        f"Set --auth USER:PASSWORD or {AUTH_ENV}."
    )


def defaults_for(model: str):
    """The model's native clip settings (`ModelDefaults`), known before its weights load: the page needs
    them at once."""
    from ..weights.registry import model_defaults

    return model_defaults(model, prefix="--")


def limits_for(model: str):
    """The model's limits and defaults (`ModelLimits`), from its config files: they bound the page's fields."""
    from ..weights.registry import model_limits

    return model_limits(model, prefix="--")


LORA_SUFFIXES = (".safetensors", ".pt", ".pth")
LORA_DIR_MAX = 500  # files listed from --lora-dir (the panel's fields take any typed path beyond these)


def own_loras(model: str) -> tuple[str, ...]:
    """The LoRA files of a model's own stack (its folder's manifest; none for the tiny-random models)."""
    from ..weights.registry import TINY_RANDOM_MODELS, folder_loras, resolve_model

    resolved = resolve_model(model, prefix="--")
    return () if resolved in TINY_RANDOM_MODELS else tuple(spec.path for spec in folder_loras(resolved))


def lora_files(model: str, lora_dir: str | None = None) -> tuple[str, ...]:
    """What the studio's LoRA panel offers: the model folder's own LoRAs, its presets' (the 4-step speed
    LoRA), then the LoRA files under `lora_dir` (sorted, at most `LORA_DIR_MAX`); absolute paths, each once.
    A `lora_dir` that is not a folder is a ValueError naming --lora-dir."""
    from ..lora_specs import parse_loras
    from ..weights.registry import model_defaults

    files = list(own_loras(model))
    for preset in model_defaults(model, prefix="--").presets:
        files += [spec.path for spec in parse_loras(preset.loras)]
    if lora_dir is not None:
        folder = Path(lora_dir).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--lora-dir={lora_dir!r} is not a folder; give the folder of your LoRA files")
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in LORA_SUFFIXES and p.is_file())
        files += [str(p.resolve()) for p in found[:LORA_DIR_MAX]]
    return tuple(dict.fromkeys(files))


def pipeline_loader(
    model: str,
    lora: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    parallel: int = 1,
    cfg_parallel: bool = False,
    text_vae_device: str | None = None,
) -> Callable:
    """Check the model arguments now; return a function that loads the pipeline (run in the worker).
    With `parallel` > 1 or `cfg_parallel` it starts the other ranks too (`pusa.parallel.launch`)."""
    from ..parallel.flags import check_parallel_flags
    from ..runtime.device import check_device
    from ..weights.registry import resolve_model

    resolve_model(model, lora, prefix="--")
    check_parallel_flags(parallel, cfg_parallel, device)
    if device != "cpu":  # "cpu" is always there: importing torch to say so would delay the page
        check_device(device)
    acceleration = {}
    if text_vae_device is not None:
        from ..parallel.flags import rank_layout
        from ..runtime.device import check_text_vae_device

        check_text_vae_device(text_vae_device, rank_layout(parallel, cfg_parallel)[0])
        acceleration["text_vae_device"] = text_vae_device

    def load():
        import torch

        from ..pipeline import PusaPipeline

        torch_dtype = getattr(torch, dtype or ("float32" if device == "cpu" else "bfloat16"))
        if parallel > 1 or cfg_parallel:
            from ..parallel.launch import start_ranks

            return start_ranks(parallel, cfg_parallel, model, lora or "auto", device, torch_dtype, {}).pipe
        return PusaPipeline.from_model(
            model, lora=lora or "auto", device=device, dtype=torch_dtype, **acceleration
        )

    return load


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_main(args: argparse.Namespace) -> int:
    """Start the studio with parsed `add_serve_arguments` options; returns when the server stops."""
    from .startup_checks import OUTPUTS_ALLOWED, check_listen, check_outputs, check_port

    try:
        check_port(args.port)
        auth = parse_auth(args.auth if args.auth is not None else os.environ.get(AUTH_ENV))
        cluster = cluster_spec(args)
        if cluster is None:
            load = pipeline_loader(
                args.model, args.lora, args.device, args.dtype, args.parallel, args.cfg_parallel,
                getattr(args, "text_vae_device", None),
            )  # fmt: skip
        own = (str(Path(args.lora).resolve()),) if args.lora else own_loras(args.model)
        offered = tuple(dict.fromkeys((*own, *lora_files(args.model, getattr(args, "lora_dir", None)))))
        # Then the outputs folder and the address, once the flags are known good (the folder is created
        # here): a busy port, a --host or --outputs that cannot be used is said in one line naming its
        # flag, before Ray or the model start, not as the web server's traceback once the model loaded.
        check_outputs(args.outputs)
        check_listen(args.host, args.port)
    except ValueError as error:
        print(f"pusa serve: error: {cli_message(error)}", file=sys.stderr)
        return 2
    warning = exposure_warning(args.host, auth)
    if warning:
        print(f"pusa serve: warning: {warning}", file=sys.stderr)
    from ..serving.history import History
    from ..serving.queue import JobQueue
    from .page import build_app, launch_app

    try:
        history = History(args.outputs)
    except (OSError, sqlite3.Error) as error:  # e.g. its videos/ is a file, or history.sqlite is no database
        refused = InputError("outputs", args.outputs, OUTPUTS_ALLOWED, f"cannot hold the history ({error})")
        print(f"pusa serve: error: {cli_message(refused)}", file=sys.stderr)
        return 2
    if cluster is not None:  # Ray workers: the same queue and history, jobs run on the actors
        from ..serving.cluster import ClusterQueue

        try:
            queue = ClusterQueue(cluster, history).start()  # starts Ray here, in the main thread
        except ValueError as error:  # no machine of the Ray cluster can hold a worker
            print(f"pusa serve: error: {cli_message(error)}", file=sys.stderr)
            return 2
    else:
        queue = JobQueue(load, history).start()
    # SIGTERM (docker stop, systemd, kill) stops the studio as Ctrl-C does: the running job is cancelled
    # at its next step and stays stored with its start taken back, the Ray workers and Ray stop. The
    # default SIGTERM would end the process at once, and a job it cut counts as one that crashed it.
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, _interrupt)
    exposed_host = args.host if warning else None
    try:
        demo = build_app(
            queue, limits_for(args.model), model_label=args.model, exposed_host=exposed_host,
            lora_files=offered, own_loras=own,
        )  # fmt: skip
        launch_app(demo, history, host=args.host, port=args.port, auth=auth)
    except KeyboardInterrupt:
        pass
    finally:
        queue.close(timeout=5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pusa serve", description="Start the Pusa web studio.")
    return serve_main(add_serve_arguments(parser).parse_args(argv))
