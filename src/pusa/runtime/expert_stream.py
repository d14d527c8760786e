"""Two experts without either kept in host RAM while inactive (`--memory stream`): the active expert is
resident on the device; at the boundary the leaving expert is freed and the entering one is read from its
memory-mapped safetensors files (`weights.sources.FileWeights`, the loader's own renames and casts, so
it is bit for bit a fresh load), then its LoRA stack fused (`on_load`). Host RAM holds neither expert:
the price is a read from disk (or the page cache) at every boundary, timed in `seconds`, for the settings
record (the same fields as `runtime.expert_swap.ExpertSwap`).

The same with the active expert offloaded (`--memory balanced` / `low` on a host that cannot pin both
experts): `place` given, the entering expert is read into host memory instead, its LoRA stack fused, and
then `place(module)` applies the tier's group offloading to it (diffusers' hooks, taken off again when it
leaves). Host RAM then holds one expert's (pinned) copy, not two.

Only for experts loaded from files (`weights.checkpoints.load_transformer`); one built in memory is refused.
An expert's file changed on disk since the model was loaded (replaced, rewritten, deleted) is refused at
the boundary (`weights.sources.FileChangedError`, naming it) before the leaving expert is freed: the
job fails with that message, never runs on weights of two versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .expert_swap import point_tensor

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ExpertStream"]


class ExpertStream:
    """One of `experts` (name -> module loaded from files) on `device` at a time; `activate(name)` frees
    the active one and loads `name`. `active`: the expert already resident (the others are freed now)."""

    def __init__(
        self,
        experts: dict[str, nn.Module],
        device: str | torch.device,
        active: str,
        place: Callable[[nn.Module], None] | None = None,
    ) -> None:
        import torch

        from ..weights.sources import file_weights

        self.device = torch.device(device)
        self.experts = experts
        self._names: dict[str, list[tuple[Any, str, str]]] = {}
        for name, module in experts.items():
            weights = file_weights(module)
            if weights is None:
                raise ValueError(
                    f"memory tier 'stream' reads each expert from its safetensors files; the {name}-noise "
                    "expert was built in memory (a preset): load a model folder instead"
                )
            # (owner, key, name in the files); a Linear holding PEFT adapters (`weights.stack.AdapterStack`)
            # keeps its own weight as `base_layer.weight`; the adapters' weights stay where they are
            self._names[name] = [
                (module.get_submodule(owner), key, state.replace(".base_layer.", "."))
                for state, _ in module.named_parameters()
                for owner, _, key in [state.rpartition(".")]
                if state.replace(".base_layer.", ".") in weights.entries
            ]
        self.on_load: Callable[[str], None] | None = None  # e.g. fuse the expert's LoRA stack again
        self.place = place  # None: the active expert is resident on the device; else it offloads it
        self.active = active
        self.swaps = 0
        self.seconds = 0.0
        for name in experts:
            if name != active:
                self._release(name)

    def _release(self, name: str) -> None:
        from ..weights.sources import placeholder
        from .memory import remove_group_offloading

        if self.place is not None:  # its offloading hooks (and their pinned copies) go with it
            remove_group_offloading(self.experts[name])
        for owner, key, _ in self._names[name]:
            current = owner._parameters[key]
            point_tensor(owner, key, placeholder(current.shape, current.dtype))

    def _load(self, name: str) -> None:
        from ..weights.sources import file_weights

        module = self.experts[name]
        target = self.device if self.place is None else "cpu"  # offloaded: read to the host, placed after
        tensors = file_weights(module).read_many([state for _, _, state in self._names[name]], target)
        for owner, key, state in self._names[name]:
            point_tensor(owner, key, tensors.pop(state))
        module.to(target)  # its buffers (rope tables)

    def activate(self, name: str) -> float:
        """Free the active expert, load `name` from its files (then `on_load(name)`); the seconds it took."""
        import torch

        if name == self.active:
            return 0.0
        from ..weights.sources import check_files

        started = time.perf_counter()
        check_files(self.experts[name])  # refused while the leaving expert is still resident
        # Called from the sampler's inference mode: the weights must be normal tensors, or a LoRA re-fused
        # later (outside it) could not write into them.
        with torch.inference_mode(False), torch.no_grad():
            if self.active is not None:
                self._release(self.active)
                self.active = None
            self._load(name)
            self.active = name
            if self.on_load is not None:
                self.on_load(name)
            if self.place is not None:
                self.place(self.experts[name])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.swaps += 1
        self.seconds += elapsed
        return elapsed

    def report(self) -> dict[str, Any]:
        return {"swaps": self.swaps, "seconds": round(self.seconds, 4), "active": self.active}
