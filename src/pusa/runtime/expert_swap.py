"""Two experts on a card that holds one: the active expert resident on the device, the other in (pinned)
CPU memory, swapped when the sampler crosses the boundary (`--memory swap`; `auto` picks it when both experts
do not fit beside the VAE and the working memory but one does).

Each parameter and buffer keeps one host copy (page-locked when the device is CUDA, so a swap runs at bus
speed); the device copy exists only while its expert is active. Deactivating copies the device values back
first, so weights changed on the device (a re-fused LoRA stack) are never lost, and a LoRA fused while an
expert is on the host writes into its host copy. Every swap is timed (`seconds`), for the settings record.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .memory import choose_expert_tier  # re-exported: its old home

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ExpertSwap", "choose_expert_tier", "point_tensor"]


class ExpertSwap:
    """Keeps one of `experts` (name -> module) on `device` at a time; `activate(name)` swaps."""

    def __init__(
        self, experts: dict[str, nn.Module], device: str | torch.device, active: str | None = None
    ) -> None:
        import torch

        self.device = torch.device(device)
        self.experts = experts
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._host: dict[str, list[tuple[Any, str, torch.Tensor]]] = {}
        for name, module in experts.items():
            entries = []
            for owner in module.modules():
                for tensors in (owner._parameters, owner._buffers):
                    for key, tensor in tensors.items():
                        if tensor is None:
                            continue
                        host = tensor.detach().to("cpu", copy=True)
                        host = host.pin_memory() if pin else host
                        point_tensor(owner, key, host)  # start on the host; the original is freed at once
                        entries.append((owner, key, host))
            self._host[name] = entries
        self.active: str | None = None
        self.swaps = 0
        self.seconds = 0.0
        if active is not None:
            self.activate(active)
            self.swaps, self.seconds = 0, 0.0  # placing the first expert is not a swap

    def adopt(self, name: str, module: nn.Module) -> None:
        """Add expert `name`, already placed on the device, as the active one (its host copies made now)."""
        import torch

        pin = self.device.type == "cuda" and torch.cuda.is_available()
        entries = []
        for owner in module.modules():
            for tensors in (owner._parameters, owner._buffers):
                for key, tensor in tensors.items():
                    if tensor is not None:
                        host = tensor.detach().to("cpu", copy=True)
                        entries.append((owner, key, host.pin_memory() if pin else host))
        self.experts[name] = module
        self._host[name] = entries
        if self.active is not None and self.active != name:
            raise ValueError(f"expert {self.active} is already on the device")
        self.active = name

    def activate(self, name: str) -> float:
        """Put expert `name` on the device (the active one back on the host first); the seconds it took."""
        import torch

        if name == self.active:
            return 0.0
        started = time.perf_counter()
        # Called from the sampler's inference mode: the device copies must be normal tensors, or a LoRA
        # re-fused later (outside it) could not write into them.
        with torch.inference_mode(False), torch.no_grad():
            if self.active is not None:
                for owner, key, host in self._host[self.active]:
                    current = _get(owner, key)
                    if current.device != host.device or current.data_ptr() != host.data_ptr():
                        host.copy_(current, non_blocking=True)  # what changed on the device comes back
                    point_tensor(owner, key, host)
            for owner, key, host in self._host[name]:
                point_tensor(owner, key, host.to(self.device, non_blocking=True))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.active = name
        self.swaps += 1
        self.seconds += elapsed
        return elapsed

    def report(self) -> dict[str, Any]:
        return {"swaps": self.swaps, "seconds": round(self.seconds, 4), "active": self.active}


def _get(owner: Any, key: str) -> Any:
    return owner._parameters[key] if key in owner._parameters else owner._buffers[key]


def point_tensor(owner: Any, key: str, tensor: Any) -> None:
    """Make `owner.key` hold `tensor`'s storage, keeping the same Parameter object (LoRA fusers and
    optimizers hold references to it)."""
    if key in owner._parameters:
        owner._parameters[key].data = tensor
    else:
        owner._buffers[key] = tensor
