"""`--parallel N` / `--cfg-parallel` checked before anything loads (imports no torch).

`--parallel N` is the number of processes (GPUs with --device cuda). `--cfg-parallel` alone is 2 of them,
the positive and the negative guidance pass side by side; with `--parallel N` (N even) the two passes run
on two groups of N/2 processes, each group splitting its pass by tokens (context parallel)."""

from __future__ import annotations

MAX_RANKS = 64


def check_parallel_flags(
    parallel: int, cfg_parallel: bool, device: str, gpus_here: int | None = None
) -> None:
    """A ValueError naming the flag for a rank count the machine or the modes cannot take. `gpus_here`:
    the GPUs this machine must have with --device cuda (default: one per rank; `pusa serve --workers`
    asks for every worker's; 0 when they may be on other machines)."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= MAX_RANKS:
        raise ValueError(f"--parallel={parallel!r} is not allowed; must be a whole number in 1..{MAX_RANKS}")
    if cfg_parallel and parallel > 1 and parallel % 2:
        raise ValueError(
            f"--parallel={parallel} with --cfg-parallel is not allowed; give an even number of processes "
            "(two CFG groups of N/2 context-parallel processes each), or --cfg-parallel alone (2 processes)"
        )
    ranks, _ = rank_layout(parallel, cfg_parallel)
    if device.startswith("cuda"):
        if ranks > 1 and ":" in device:
            raise ValueError(
                f"--device={device!r} with several processes: give plain cuda (rank r uses cuda:r)"
            )
        gpus = ranks if gpus_here is None else gpus_here
        if gpus > 1 or gpus_here:  # a single process's one GPU is checked with --device itself
            from ..runtime.device import check_device

            try:
                check_device(f"cuda:{gpus - 1}")  # every process needs its own GPU
            except ValueError as error:
                reason = error.problem if hasattr(error, "problem") else str(error)
                raise ValueError(
                    f"--device={device!r}: {gpus} processes need {gpus} GPUs here, one each "
                    f"(cuda:0..cuda:{gpus - 1}); cuda:{gpus - 1} {reason}"
                ) from None
    elif ranks > 1 and device != "cpu":
        raise ValueError(f"--device={device!r}: several processes run on cpu or cuda")


def rank_layout(parallel: int, cfg_parallel: bool) -> tuple[int, str]:
    """The processes and the mode (`pusa.parallel.launch.MODES`) that checked flags start."""
    if cfg_parallel:
        return max(parallel, 2), "cfg"
    return parallel, "context"
