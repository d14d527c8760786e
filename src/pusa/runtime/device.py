"""The device check every command and the pipeline share: `check_device` turns a user's `--device` into a
`torch.device` this machine has, or an `InputError` that says what is allowed.

Importing this module is cheap: torch is imported inside `check_device`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEVICE_TYPES", "check_device", "check_text_vae_device"]

DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device: Any, types: tuple[str, ...] = DEVICE_TYPES, what: str = "pusa") -> Any:
    """`device` as a `torch.device` this machine has, or a ValueError naming it and what is allowed.

    `types` are the device types the caller runs on; `what` says who (in the message).
    """
    import torch

    from ..params import InputError

    names = [t if t != "cuda" else "cuda (cuda:N)" for t in types]
    allowed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError("device", device, f"use {allowed}", "is not a torch device") from None
    if parsed.type not in types:
        raise InputError("device", device, f"{what} runs on {allowed}", "cannot be used")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = " (this torch is a CPU build)" if torch.version.cuda is None else ""
            raise InputError("device", device, "use cpu", f"is not available: no CUDA device here{build}")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InputError(
                "device",
                device,
                f"this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}",
                "is not here",
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device", device, "use cpu", "is not available: MPS (Apple GPU) is not here")
    return parsed


def check_text_vae_device(value: Any, ranks: int = 1, workers: int = 0) -> Any:
    """`text_vae_device` (`--text-vae-device`: where the text encoder and the VAE run, apart from the
    DiT) as a `torch.device` this machine has, or an error naming it: also when the set-up has no room for
    it (several processes: rank 0 keeps them on its GPU; Ray workers: each holds the whole model)."""
    from ..params import InputError

    if ranks > 1:
        raise InputError(
            "text_vae_device", value, "give one of the two (rank 0 keeps the text encoder and VAE on its GPU)",
            "cannot be used with --parallel / --cfg-parallel",
        )  # fmt: skip
    if workers:
        raise InputError(
            "text_vae_device", value, "give one of the two (each worker runs the whole model on its own GPU)",
            "cannot be used with --workers / --ray-address",
        )  # fmt: skip
    try:
        return check_device(value, what="the text encoder and VAE")
    except InputError as error:
        raise InputError("text_vae_device", value, error.allowed, error.problem) from None
