"""Where a studio's Ray workers run and what each loads (`ClusterSpec`), and fitting them on the Ray
cluster's machines: starting or joining Ray (`start_ray`), how many workers the machines hold
(`fit_workers`, `--workers auto`) and refusing a worker no machine can hold (`check_cluster`).
`serving.cluster.ClusterQueue` and `pusa serve` use them. Imports no torch (nor ray) at module level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ..params import plural


@dataclass(frozen=True)
class ClusterSpec:
    """Where the workers run and what each loads."""

    workers: int | str = 2  # or "auto": as many as the machines hold (`fit_workers`)
    address: str | None = None  # None: start a local Ray cluster on 127.0.0.1
    model: str = "pusa-tiny"
    lora: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    cpus_per_worker: float = 1.0  # per process: a worker of a parallel group reserves this per rank
    parallel: int = 1  # `--parallel`: each worker is a group of this many processes (context parallel)
    cfg_parallel: bool = False  # `--cfg-parallel`: each worker's guidance passes side by side
    object_store_mb: int = 128  # a local cluster's object store (videos pass through it)
    max_restarts: int = 3  # Ray restarts a worker whose process died this many times

    @property
    def ranks(self) -> int:
        """Processes (GPUs with cuda) per worker: 1, or its parallel group's ranks."""
        from ..parallel.flags import rank_layout

        return rank_layout(self.parallel, self.cfg_parallel)[0]

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def ray_machines() -> list[dict[str, float]]:
    """The resources of each live machine (node) of the Ray cluster this process is connected to."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def start_ray(spec: ClusterSpec) -> None:
    """Connect to `spec.address`, or start a small local Ray cluster on 127.0.0.1 (no dashboard).
    `ClusterQueue.start` calls it in the calling thread (the studio's main thread); `ClusterQueue.close`
    shuts down what was started."""
    import ray

    if spec.address is None:
        processes = spec.workers * spec.ranks
        ray.init(
            num_cpus=max(1, round(processes * spec.cpus_per_worker)),
            num_gpus=processes if spec.cuda else 0,
            object_store_memory=spec.object_store_mb * 2**20,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            namespace="pusa",
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=spec.address, namespace="pusa", log_to_driver=False, configure_logging=False)
    # Build Ray's serialization context now: it imports pydantic.v1, and that import racing gradio's own
    # pydantic imports in another thread fails (KeyError 'pydantic.v1').
    ray.put(None)


def worker_needs(spec: ClusterSpec) -> dict[str, float]:
    """What one worker reserves on its machine: its processes' cores, and GPUs with cuda."""
    return {"CPU": spec.ranks * spec.cpus_per_worker, "GPU": spec.ranks if spec.cuda else 0}


def fit_workers(spec: ClusterSpec, machines: list[dict[str, float]]) -> int:
    """How many workers `machines` (each a Ray node's resources: {"CPU": 8, "GPU": 2, ...}) hold, every
    worker on one machine: what `--workers auto` starts. Pure."""
    needs = {k: v for k, v in worker_needs(spec).items() if v > 0}
    return sum(int(min(machine.get(k, 0) // v for k, v in needs.items())) for machine in machines)


def local_machine(spec: ClusterSpec) -> dict[str, float]:
    """This machine's resources, as a local Ray cluster would count them."""
    machine = {"CPU": float(os.cpu_count() or 1)}
    if spec.cuda:
        import torch

        machine["GPU"] = float(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return machine


def resolve_local_workers(spec: ClusterSpec) -> ClusterSpec:
    """`--workers auto` without --ray-address: as many workers as this machine holds (at least one)."""
    if spec.workers != "auto":
        return spec
    return replace(spec, workers=max(1, fit_workers(spec, [local_machine(spec)])))


def check_cluster(spec: ClusterSpec) -> None:
    """A ValueError naming the flags when no machine of the Ray cluster can hold one worker (its processes
    all run on one machine: a parallel group's ranks talk over 127.0.0.1): Ray would wait for it forever."""

    needs = worker_needs(spec)
    nodes = ray_machines()
    if any(all(node.get(k, 0) >= v for k, v in needs.items()) for node in nodes):
        return
    largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in needs}
    per = f" ({spec.ranks} processes: --parallel / --cfg-parallel)" if spec.ranks > 1 else ""
    wanted = f"{plural(needs['CPU'], 'CPU core')} (--worker-cpus {spec.cpus_per_worker:g} each)" + (
        f" and {needs['GPU']} GPU(s) (--device {spec.device})" if spec.cuda else ""
    )
    raise ValueError(
        f"a worker{per} needs {wanted} on one machine; the Ray cluster's largest machine has "
        f"{plural(largest['CPU'], 'CPU core')} and {largest['GPU']:g} GPU(s)"
    )
