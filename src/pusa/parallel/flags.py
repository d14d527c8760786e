"""`--parallel N` / `--cfg-parallel` checked before anything loads (imports no torch)."""

from __future__ import annotations

MAX_RANKS = 64


def check_parallel_flags(parallel: int, cfg_parallel: bool, device: str) -> None:
    """A ValueError naming the flag for a rank count the machine or the modes cannot take."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= MAX_RANKS:
        raise ValueError(f"--parallel={parallel!r} is not allowed; must be a whole number in 1..{MAX_RANKS}")
    if cfg_parallel and parallel > 1:
        raise ValueError(
            f"--parallel={parallel} with --cfg-parallel: give one (CFG-parallel runs on exactly 2 processes; "
            "context parallel and CFG-parallel do not combine yet)"
        )
    ranks = 2 if cfg_parallel else parallel
    if ranks > 1 and device.startswith("cuda"):
        if ":" in device:
            raise ValueError(
                f"--device={device!r} with several processes: give plain cuda (rank r uses cuda:r)"
            )
        from ..runtime.device import check_device

        check_device(f"cuda:{ranks - 1}")  # every rank needs its own GPU
    elif ranks > 1 and device != "cpu":
        raise ValueError(f"--device={device!r}: several processes run on cpu or cuda")
