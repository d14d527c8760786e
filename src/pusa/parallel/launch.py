"""The ranks of one parallel pipeline, started for the user (`pusa generate ... --parallel N`).

The calling process is rank 0: it owns the command line (or the studio), the text encoder, the VAE and
all I/O, and runs `PusaPipeline.generate` as usual. Ranks 1..N-1 are child processes
(torch.multiprocessing, spawn) that load the DiT (and LoRA) once and then follow rank 0: for each job
rank 0 broadcasts the mode, the LoRA strength and the text embeddings; for each DiT call the latents and
the per-frame timestep. Every rank joins a TCP rendezvous on 127.0.0.1 at a free port (gloo on CPUs,
nccl on GPUs: rank r uses cuda:r).

Modes:
- "context" (N >= 2): every DiT call is split over the ranks by tokens (`pusa.parallel.context`).
- "cfg" (N = 2): rank 0 runs the positive pass while rank 1 runs the negative one on the same latents;
  rank 1 sends its velocity back. Each rank runs the whole model, so the result is the 1-rank one.

The pipeline's seam is `PusaPipeline.velocity_wrapper`: `wrapper(velocity, text, negative_text, cfg)`
returns the velocity function `sample` calls.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..lora_specs import LoraSpec

MODES = ("context", "cfg")
# A follower waits for the next job for as long as rank 0 lives (a studio may sit idle for days).
IDLE_TIMEOUT = timedelta(days=30)


class RanksLost(RuntimeError):
    """A follower rank went away (killed, out of memory, crashed): the group cannot run another job."""


@dataclass(frozen=True)
class LoadSpec:
    """What every rank loads (the CLI's model flags)."""

    model: str = "pusa-tiny"
    lora: Any = "auto"
    device: str = "cpu"
    dtype: str = "float32"
    acceleration: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # torch threads of each follower rank (None: torch's default)

    def rank_device(self, rank: int) -> str:
        if self.device.startswith("cuda"):
            return f"cuda:{rank}"
        return self.device

    @property
    def backend(self) -> str:
        return "nccl" if self.device.startswith("cuda") else "gloo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load(spec: LoadSpec, rank: int, keep_io: bool):
    from ..pipeline import PusaPipeline

    if spec.threads and not keep_io:
        torch.set_num_threads(spec.threads)
    device = spec.rank_device(rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    pipe = PusaPipeline.from_model(
        spec.model, lora=spec.lora, device=device, dtype=getattr(torch, spec.dtype), **spec.acceleration
    )
    if not keep_io:  # followers run the DiT only
        pipe.text_encoder = None
        pipe.vae = None
    return pipe


def _init_group(spec: LoadSpec, rank: int, world_size: int, port: int) -> None:
    dist.init_process_group(
        spec.backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=IDLE_TIMEOUT,
    )


def _broadcast_header(header: dict | None = None) -> dict:
    box = [header]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_tensor(tensor: torch.Tensor | None, shape: Any, dtype: str, device: Any, src: int = 0):
    if tensor is None:
        tensor = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=device)
    tensor = tensor.contiguous()
    dist.broadcast(tensor, src=src)
    return tensor


def _describe(tensor: torch.Tensor) -> tuple[list[int], str]:
    return list(tensor.shape), str(tensor.dtype).removeprefix("torch.")


class _Modes:
    """The context-parallel hooks a rank has on its DiT, changed when a job asks for another mode."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.current: tuple[str, str] | None = None
        self.handle = None

    def apply(self, mode: str, strategy: str) -> None:
        if self.current == (mode, strategy):
            return
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if mode == "context":
            from .context import enable_context_parallel

            self.handle = enable_context_parallel(self.transformer, strategy=strategy)
        self.current = (mode, strategy)


def _gloo_peer_error(error: BaseException) -> bool:
    """A collective that failed because the other end closed (the peer process is gone)."""
    text = str(error)
    return "Connection reset by peer" in text or "Connection closed by peer" in text


def _exit_with_parent(parent: int) -> None:
    """A follower blocked in a collective would wait for rank 0 forever (IDLE_TIMEOUT): it leaves as soon
    as rank 0's process is gone (killed, or stopped by a signal that skipped `close`)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _follower_main(rank: int, world_size: int, port: int, spec: LoadSpec, parent: int | None = None) -> None:
    """Ranks 1..N-1: load the DiT once, then follow rank 0's jobs until it says stop (or goes away)."""
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _init_group(spec, rank, world_size, port)
    import diffusers
    import transformers

    # rank 0 shows its own loading bars (or none, with -q); the followers' would only repeat them
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    pipe = _load(spec, rank, keep_io=False)
    device = pipe.device
    modes = _Modes(pipe.transformer)
    dist.barrier()  # loaded: rank 0 may start
    contexts: list[torch.Tensor] = []
    mode = "context"
    try:
        while True:
            header = _broadcast_header()
            if header["op"] == "stop":
                break
            if header["op"] == "job":
                mode = header["mode"]
                modes.apply(mode, header["strategy"])
                # rank 0's fused LoRA stack (path, strength, expert), re-fused here from pristine weights
                pipe.apply_loras([LoraSpec(*entry) for entry in header["loras"]], 1.0)
                contexts = [_broadcast_tensor(None, s, d, device) for s, d in header["contexts"]]
                continue
            # "forward": one DiT call
            x = _broadcast_tensor(None, *header["x"], device)
            timestep = _broadcast_tensor(None, *header["timestep"], device)
            if header["context"] < 0:
                context = _broadcast_tensor(None, *header["context_tensor"], device)
            else:
                context = contexts[header["context"]]
            with torch.inference_mode():
                out = pipe.transformer(x.to(pipe.dtype), timestep, context, return_dict=False)[0]
            if mode == "cfg":
                _broadcast_tensor(out, None, None, device, src=rank)
    finally:
        dist.destroy_process_group()


class ParallelRunner:
    """Rank 0 of an N-rank pipeline: `runner.pipe.generate(...)` as usual; `close()` stops the ranks.

    `ParallelRunner(2, "context", LoadSpec("tiny-random"))`; as a context manager it closes itself."""

    def __init__(
        self, world_size: int, mode: str = "context", spec: LoadSpec | None = None, strategy: str = "auto"
    ) -> None:
        from .context import STRATEGIES

        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; choose from {', '.join(MODES)}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}; choose from {', '.join(STRATEGIES)}")
        if world_size < 2:
            raise ValueError(f"a parallel pipeline needs 2 or more ranks, not {world_size}")
        if mode == "cfg" and world_size != 2:
            raise ValueError("CFG-parallel runs on exactly 2 ranks (positive pass, negative pass)")
        self.world_size = world_size
        self.mode = mode
        self.strategy = strategy
        self.spec = spec or LoadSpec()
        self._processes: list[Any] = []
        self._closed = False
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._broken: str | None = None  # why the group cannot run jobs any more
        self._start()

    def _start(self) -> None:
        import torch.multiprocessing as mp

        from ..weights.registry import folder_experts, resolve_model

        model = resolve_model(self.spec.model)
        if model == "tiny-random-a14b" or (not isinstance(model, str) and folder_experts(model)):
            # the followers run `pipe.transformer` only, for now
            raise ValueError("parallel runs one-expert models for now; this model has two experts (Wan2.2)")

        port = free_port()
        context = mp.get_context("spawn")
        for rank in range(1, self.world_size):
            process = context.Process(
                target=_follower_main, args=(rank, self.world_size, port, self.spec, os.getpid()), daemon=True
            )
            process.start()
            self._processes.append(process)
        _init_group(self.spec, 0, self.world_size, port)
        self.pipe = _load(self.spec, 0, keep_io=True)
        self._modes = _Modes(self.pipe.transformer)
        dist.barrier()
        self.pipe.velocity_wrapper = self._wrap
        atexit.register(self.close)

    # ---------------------------------------------------------------- rank 0's side of a job
    def _record(self) -> None:
        self.pipe.acceleration["parallel"] = {
            "mode": self.mode,
            "world_size": self.world_size,
            "strategy": self.strategy if self.mode == "context" else None,
        }

    def _lost(self, error: BaseException) -> RanksLost:
        """The error for a collective that failed because a follower went away (gloo: "Connection reset by
        peer"), naming the rank and its exit code; every later job gets it at once."""
        for process in self._processes:
            process.join(timeout=2)  # a killed process is reaped within moments
        gone = [(rank, p.exitcode) for rank, p in enumerate(self._processes, start=1) if not p.is_alive()]
        which = ", ".join(f"rank {rank} (exit code {code})" for rank, code in gone) or "a rank"
        self._broken = (
            f"the {self.world_size}-rank parallel pipeline lost {which}; start it again "
            f"(the collective said: {str(error).splitlines()[0][:200]})"
        )
        return RanksLost(self._broken)

    def _wrap(self, inner, text, negative_text, cfg):
        """Called by `generate` once per job, before sampling: sends the job, returns the velocity (any
        collective that fails because a rank went away raises `RanksLost`)."""
        if self._broken is not None:
            raise RanksLost(self._broken)
        try:
            velocity = self._start_job(inner, text, negative_text, cfg)
        except RuntimeError as error:
            raise self._lost(error) from error

        def guarded(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            try:
                return velocity(x, timestep, context)
            except RuntimeError as error:
                if all(process.is_alive() for process in self._processes) and not _gloo_peer_error(error):
                    raise  # not a lost rank: the model's own error
                raise self._lost(error) from error

        return guarded

    def _start_job(self, inner, text, negative_text, cfg):
        self._record()
        contexts = [text] + ([negative_text] if negative_text is not None else [])
        loras = [[spec.path, spec.strength, spec.expert] for spec in self.pipe.fused_loras]
        _broadcast_header(
            {
                "op": "job",
                "mode": self.mode,
                "strategy": self.strategy,
                "loras": loras,
                "contexts": [_describe(c) for c in contexts],
            }
        )
        for c in contexts:
            _broadcast_tensor(c, None, None, None)
        self._modes.apply(self.mode, self.strategy)
        self._pending = None

        def send(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> None:
            index = next((i for i, c in enumerate(contexts) if c is context), -1)
            header = {"op": "forward", "x": _describe(x), "timestep": _describe(timestep), "context": index}
            if index < 0:
                header["context_tensor"] = _describe(context)
            _broadcast_header(header)
            _broadcast_tensor(x, None, None, None)
            _broadcast_tensor(timestep, None, None, None)
            if index < 0:
                _broadcast_tensor(context, None, None, None)

        def context_parallel(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            send(x, timestep, context)
            return inner(x, timestep, context)  # rank 0's share; the hooks make it a collective call

        def cfg_parallel(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            pending = self._pending
            if (
                pending is not None
                and context is negative_text
                and pending[0] is x
                and pending[1] is timestep
            ):
                self._pending = None
                return pending[2]  # rank 1 computed it alongside the positive pass
            if context is not text or negative_text is None or cfg == 1.0:
                return inner(x, timestep, context)  # no partner pass to run alongside: rank 0 alone
            send(x, timestep, negative_text)
            v_pos = inner(x, timestep, context)
            v_neg = _broadcast_tensor(
                None, v_pos.shape, str(v_pos.dtype).removeprefix("torch."), v_pos.device, 1
            )
            self._pending = (x, timestep, v_neg)
            return v_pos

        return context_parallel if self.mode == "context" else cfg_parallel

    # ---------------------------------------------------------------- life cycle
    def set_mode(self, mode: str, strategy: str = "auto") -> None:
        """The mode of the next jobs (the followers switch with the next job's header)."""
        if mode == "cfg" and self.world_size != 2:
            raise ValueError("CFG-parallel runs on exactly 2 ranks")
        self.mode, self.strategy = mode, strategy

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._broken is None:  # a broken group cannot carry the message; its ranks are gone anyway
                _broadcast_header({"op": "stop"})
        finally:
            for process in self._processes:
                process.join(timeout=60)
                if process.is_alive():
                    process.kill()
            self._modes.apply("none", "auto")
            self.pipe.velocity_wrapper = None
            dist.destroy_process_group()
            atexit.unregister(self.close)

    def __enter__(self) -> ParallelRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_ranks(
    parallel: int,
    cfg_parallel: bool,
    model: str,
    lora: Any,
    device: str,
    dtype: torch.dtype,
    acceleration: dict[str, Any],
) -> ParallelRunner:
    """What `--parallel N` / `--cfg-parallel` start: this process as rank 0, the others spawned; they stop
    when this process exits."""
    spec = LoadSpec(model, lora, device, str(dtype).removeprefix("torch."), dict(acceleration))
    if cfg_parallel:
        return ParallelRunner(2, "cfg", spec)
    return ParallelRunner(parallel, "context", spec)


__all__ = ["MODES", "LoadSpec", "ParallelRunner", "RanksLost", "free_port", "start_ranks"]
