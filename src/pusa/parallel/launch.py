"""The ranks of one parallel pipeline, started for the user (`pusa generate ... --parallel N`).

The calling process is rank 0: it owns the command line (or the studio), the text encoder, the VAE and
all I/O, and runs `PusaPipeline.generate` as usual. Ranks 1..N-1 are child processes
(torch.multiprocessing, spawn) that load the DiT (both experts of a two-expert model, and the LoRA stack)
once and then follow rank 0: for each job rank 0 broadcasts the mode, the LoRA stack and the text
embeddings; for each DiT call the latents, the per-frame timestep, the DiT of the step ("all", or the
expert "high" / "low" that rank 0's step chose) and which text each group of ranks runs. Every rank joins
a TCP rendezvous on 127.0.0.1 at a free port (gloo on CPUs, nccl on GPUs: rank r uses cuda:r).

Modes, on N ranks:
- "context" (N >= 2): every DiT call is split over all N ranks by tokens (`pusa.parallel.context`); the
  two guidance passes of a step run one after the other.
- "cfg" (N even): two groups of N/2 ranks. Ranks 0..N/2-1 run the positive pass while ranks N/2..N-1 run
  the negative one on the same latents; rank N/2 sends its group's velocity to rank 0. With N = 2 each
  rank runs the whole model; with N = 4, 6, ... each group splits its pass by tokens over its N/2 ranks
  (context parallel inside each CFG group). Each pass is the 1-rank pass (or the N/2-rank one), so the
  guided velocity is the same by construction.

The pipeline's seam is `PusaPipeline.velocity_wrapper`: `wrapper(velocities, text, negative_text, cfg)`
takes and returns `{DiT name: velocity}`, the velocity functions `sample` calls.
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
from .context import attention_strategy

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
    # followers run the DiT only: rank 0 hands them the text embeddings (their umT5 is never read)
    acceleration = dict(spec.acceleration) if keep_io else {**spec.acceleration, "load_text_encoder": False}
    pipe = PusaPipeline.from_model(
        spec.model, lora=spec.lora, device=device, dtype=getattr(torch, spec.dtype), **acceleration
    )
    if not keep_io:
        pipe.vae = None  # (read for its configuration; small next to the text encoder)
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


def _broadcast_tensor(
    tensor: torch.Tensor | None, shape: Any, dtype: str | None, device: Any, src: int = 0
) -> torch.Tensor:
    """Rank `src` sends `tensor`; the others pass None and the shape, dtype name and device to receive."""
    if tensor is None:
        assert dtype is not None  # a receiving rank always knows what arrives
        tensor = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=device)
    tensor = tensor.contiguous()
    dist.broadcast(tensor, src=src)
    return tensor


def _describe(tensor: torch.Tensor) -> tuple[list[int], str]:
    return list(tensor.shape), str(tensor.dtype).removeprefix("torch.")


def cfg_groups(mode: str) -> int:
    """How many groups of ranks run a step's passes side by side: 2 for "cfg" (positive, negative)."""
    return 2 if mode == "cfg" else 1


def _halves(world_size: int) -> list[Any]:
    """The two CFG groups' process groups (ranks 0..N/2-1 and N/2..N-1) when each holds several ranks;
    every rank creates both, in the same order (`dist.new_group` is collective)."""
    if world_size < 4 or world_size % 2:
        return []
    half = world_size // 2
    return [dist.new_group(list(range(half))), dist.new_group(list(range(half, world_size)))]


class _Modes:
    """The context-parallel hooks a rank has on its DiTs (both experts of a two-expert model), changed
    when a job asks for another mode."""

    def __init__(self, transformers: list[torch.nn.Module], rank: int, world_size: int, halves: list) -> None:
        self.transformers = transformers
        self.rank, self.world_size, self.halves = rank, world_size, halves
        self.current: tuple[str, str] | None = None
        self.handles: list[Any] = []

    def apply(self, mode: str, strategy: str) -> None:
        if self.current == (mode, strategy):
            return
        for handle in self.handles:
            handle.remove()
        self.handles = []
        group, split = None, mode == "context"
        if mode == "cfg" and self.halves:  # context parallel inside this rank's CFG group
            group, split = self.halves[self.rank // (self.world_size // 2)], True
        if split:
            from .context import enable_context_parallel

            self.handles = [enable_context_parallel(t, group, strategy) for t in self.transformers]
        self.current = (mode, strategy)


def _transformers(pipe: Any) -> list[torch.nn.Module]:
    return [pipe.transformer] + ([pipe.transformer_2] if pipe.transformer_2 is not None else [])


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
    halves = _halves(world_size)
    pipe = _load(spec, rank, keep_io=False)
    device = pipe.device
    modes = _Modes(_transformers(pipe), rank, world_size, halves)
    swap = pipe.expert_switch  # a two-expert model's swap / stream tier, or None
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
            # "forward": one step's DiT call(s), one pass per CFG group
            (x_shape, x_dtype), (t_shape, t_dtype) = header["x"], header["timestep"]
            x = _broadcast_tensor(None, x_shape, x_dtype, device)
            timestep = _broadcast_tensor(None, t_shape, t_dtype, device)
            extra = [_broadcast_tensor(None, s, d, device) for s, d in header["extra"]]
            group_size = world_size // cfg_groups(mode)
            group = rank // group_size
            if group >= len(header["passes"]):
                continue  # no pass for this group (cfg 1.0, or a call without a partner)
            context = (contexts + extra)[header["passes"][group]]
            if swap is not None:
                swap.activate(header["dit"])  # the step's expert, as on rank 0
            model = pipe.expert_model(header["dit"])
            with torch.inference_mode():
                out = model(x.to(pipe.dtype), timestep, context, return_dict=False)[0]
            if group > 0 and rank == group * group_size:  # the group's first rank: its pass to rank 0
                dist.send(out.contiguous(), dst=0)
    finally:
        dist.destroy_process_group()


class ParallelRunner:
    """Rank 0 of an N-rank pipeline: `runner.pipe.generate(...)` as usual; `close()` stops the ranks.

    `ParallelRunner(2, "context", LoadSpec("tiny-random"))`, or `ParallelRunner(4, "cfg", ...)` for two
    CFG groups of 2 context-parallel ranks; as a context manager it closes itself."""

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
        if mode == "cfg" and world_size % 2:
            raise ValueError(f"CFG-parallel runs on an even number of ranks (two groups), not {world_size}")
        self.world_size = world_size
        self.mode = mode
        self.strategy = strategy
        self.spec = spec or LoadSpec()
        self._processes: list[Any] = []
        self._closed = False
        self._pending: tuple[torch.Tensor, torch.Tensor, str, torch.Tensor] | None = None
        self._broken: str | None = None  # why the group cannot run jobs any more
        self._start()

    @property
    def follower_pids(self) -> list[int]:
        """The process ids of ranks 1..N-1 (this process is rank 0)."""
        return [process.pid for process in self._processes]

    def _start(self) -> None:
        import torch.multiprocessing as mp

        port = free_port()
        context = mp.get_context("spawn")
        for rank in range(1, self.world_size):
            process = context.Process(
                target=_follower_main, args=(rank, self.world_size, port, self.spec, os.getpid()), daemon=True
            )
            process.start()
            self._processes.append(process)
        _init_group(self.spec, 0, self.world_size, port)
        halves = _halves(self.world_size)
        self.pipe = _load(self.spec, 0, keep_io=True)
        self._modes = _Modes(_transformers(self.pipe), 0, self.world_size, halves)
        dist.barrier()
        self.pipe.velocity_wrapper = self._wrap
        atexit.register(self.close)

    @property
    def group_size(self) -> int:
        """Ranks per pass: N in "context" mode, N/2 in "cfg" mode (each CFG group's pass)."""
        return self.world_size // cfg_groups(self.mode)

    # ---------------------------------------------------------------- rank 0's side of a job
    def _record(self) -> None:
        self.pipe.acceleration["parallel"] = {
            "mode": self.mode,
            "world_size": self.world_size,
            "cfg_groups": cfg_groups(self.mode),
            "ranks_per_pass": self.group_size,  # context parallel over these (1: each rank the whole DiT)
            "strategy": self.strategy if self.group_size > 1 else None,
            # what the self-attentions run ("ulysses", "ring" or "allgather"; None: not split)
            "attention": attention_strategy(
                self.strategy, self.pipe.transformer.config.num_attention_heads, self.group_size
            )
            if self.group_size > 1
            else None,
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

    def _wrap(self, velocities, text, negative_text, cfg):
        """Called by `generate` once per job, before sampling: sends the job, returns the velocity of each
        DiT (any collective that fails because a rank went away raises `RanksLost`)."""
        if self._broken is not None:
            raise RanksLost(self._broken)
        try:
            routed = self._start_job(velocities, text, negative_text, cfg)
        except RuntimeError as error:
            raise self._lost(error) from error

        def guarded(velocity):
            def call(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                try:
                    return velocity(x, timestep, context)
                except RuntimeError as error:
                    if all(p.is_alive() for p in self._processes) and not _gloo_peer_error(error):
                        raise  # not a lost rank: the model's own error
                    raise self._lost(error) from error

            return call

        return {name: guarded(velocity) for name, velocity in routed.items()}

    def _start_job(self, velocities, text, negative_text, cfg):
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
        group_size = self.group_size

        def send(x: torch.Tensor, timestep: torch.Tensor, dit: str, passes: list[torch.Tensor]) -> None:
            """One step's call(s) to every rank: pass g (a text) runs on CFG group g."""
            extra = [c for c in passes if not any(c is known for known in contexts)]
            indices = [next((i for i, known in enumerate(contexts + extra) if known is c)) for c in passes]
            header = {
                "op": "forward",
                "x": _describe(x),
                "timestep": _describe(timestep),
                "extra": [_describe(c) for c in extra],
                "passes": indices,
                "dit": dit,
            }
            _broadcast_header(header)
            _broadcast_tensor(x, None, None, None)
            _broadcast_tensor(timestep, None, None, None)
            for c in extra:
                _broadcast_tensor(c, None, None, None)

        def context_parallel(dit: str):
            inner = velocities[dit]

            def velocity(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                send(x, timestep, dit, [context])
                return inner(x, timestep, context)  # rank 0's share; the hooks make it a collective call

            return velocity

        def cfg_parallel(dit: str):
            inner = velocities[dit]

            def velocity(x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                pending = self._pending
                if (
                    pending is not None
                    and context is negative_text
                    and pending[0] is x
                    and pending[1] is timestep
                    and pending[2] == dit
                ):
                    self._pending = None
                    return pending[3]  # the second group computed it alongside the positive pass
                if context is not text or negative_text is None or cfg == 1.0:
                    # no partner pass to run alongside: rank 0's group alone
                    if group_size > 1:
                        send(x, timestep, dit, [context])
                    return inner(x, timestep, context)
                send(x, timestep, dit, [text, negative_text])
                v_pos = inner(x, timestep, context)
                v_neg = torch.empty_like(v_pos)
                dist.recv(v_neg, src=group_size)  # the negative group's first rank
                self._pending = (x, timestep, dit, v_neg)
                return v_pos

            return velocity

        route = context_parallel if self.mode == "context" else cfg_parallel
        return {dit: route(dit) for dit in velocities}

    # ---------------------------------------------------------------- life cycle
    def set_mode(self, mode: str, strategy: str = "auto") -> None:
        """The mode of the next jobs (the followers switch with the next job's header)."""
        if mode == "cfg" and self.world_size % 2:
            raise ValueError(f"CFG-parallel runs on an even number of ranks, not {self.world_size}")
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
    threads: int | None = None,
) -> ParallelRunner:
    """What `--parallel N` / `--cfg-parallel` start: this process as rank 0, the others spawned; they stop
    when this process exits. `--cfg-parallel` alone is 2 ranks; with `--parallel N` (N even) it is two
    CFG groups of N/2 context-parallel ranks each. `threads`: torch threads of each follower rank (a Ray
    worker's share of the cores)."""
    spec = LoadSpec(model, lora, device, str(dtype).removeprefix("torch."), dict(acceleration), threads)
    from .flags import rank_layout

    return ParallelRunner(*rank_layout(parallel, cfg_parallel), spec)


__all__ = ["MODES", "LoadSpec", "ParallelRunner", "RanksLost", "cfg_groups", "free_port", "start_ranks"]
