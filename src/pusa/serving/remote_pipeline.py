"""`RemotePipeline`: what the queue's worker loop needs of a `PusaPipeline`, with `generate` run on one Ray
actor (`serving.cluster_worker.PusaWorker`): the job's files shipped by content, its steps streamed back
(so progress, ETA and Cancel work), a dead actor raised as `WorkerLost`. `serving.cluster.ClusterQueue`
runs one dispatcher per `RemotePipeline`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .queue import WorkerLost
from .shipped_files import media_files, restore_paths, worker_paths


class RemotePipeline:
    """Runs `generate` on one Ray actor; what the queue's worker loop needs of a `PusaPipeline`."""

    def __init__(self, actor: Any, index: int) -> None:
        self.actor = actor
        self.index = index
        self.info: dict[str, Any] = {}
        self.lost = False
        self.job_id: str | None = None  # the queue job it runs now (for tests and the benchmarks)

    def wait_ready(self, timeout: float = 600.0) -> dict[str, Any]:
        """The worker's facts once its model is loaded; after a crash, once Ray has restarted it (a
        restarting actor answers ActorUnavailableError until then). RayActorError once it is gone for good."""
        import ray

        deadline = time.monotonic() + timeout
        while True:
            try:
                self.info = ray.get(self.actor.info.remote())
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.lost = False
        return self.info

    @property
    def identity(self) -> str:
        return self.info.get("identity", "remote worker")

    @property
    def limits(self) -> Any:
        return self.info["limits"]

    def generate(self, request: Any, callback: Any = None) -> Any:
        import ray

        from ..pipeline import PusaOutput
        from ..sampling import Cancelled, StepInfo

        files, originals = media_files(request)
        token = uuid.uuid4().hex[:12]
        cancel_sent = False
        outcome = None
        try:
            for ref in self.actor.run.remote(token, request, files):
                item = ray.get(ref)
                if item[0] == "step":
                    _, step, num_steps = item
                    keep_going = callback is None or callback(StepInfo(step - 1, num_steps, 0.0, None))
                    if keep_going is False and not cancel_sent:
                        self.actor.cancel.remote(token)
                        cancel_sent = True
                else:
                    outcome = item
        except ray.exceptions.RayActorError as error:
            self.lost = True
            raise WorkerLost(
                f"worker {self.index} ({self.info.get('host')}, pid {self.info.get('pid')}) died"
            ) from error
        if outcome is None:
            raise RuntimeError("the worker ended the job without a result")
        if outcome[0] == "cancelled":
            raise Cancelled(outcome[1])
        if outcome[0] == "failed":
            _, message, bad_input = outcome
            raise ValueError(message) if bad_input else RuntimeError(message)
        _, frames, settings = outcome
        if originals:
            settings = restore_paths(settings, worker_paths(settings, originals, token))
        # which worker made it, on which machine (the history's record of a cluster's job)
        worker = {key: self.info.get(key) for key in ("host", "node", "pid")}
        return PusaOutput(frames=frames, settings={**settings, "worker": {"index": self.index, **worker}})
