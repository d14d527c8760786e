"""Many videos on many workers: the studio's one queue and history, N Ray actor workers (`pusa serve
--workers N`, or `--ray-address ADDR` to use a running Ray cluster).

The queue (`serving.queue.JobQueue`) and `history.sqlite` stay the single source of truth: jobs are
submitted, listed, cancelled, restored after a restart and recorded exactly as with the embedded worker.
What changes is who runs them: one dispatcher thread per Ray actor takes the next waiting job and runs
it on its actor through `RemotePipeline`, a stand-in for `PusaPipeline` whose `generate`

- ships the job's input files by content (the worker may be on another machine),
- streams the step progress back from the actor (a Ray streaming generator), so the page's progress,
  ETA and Cancel work as before; a cancel reaches the worker between two steps,
- gets the frames and settings back and lets the queue save the video into the studio's outputs folder,
- raises `WorkerLost` when the actor's process dies: the queue puts the job first in line again, so the
  next free worker runs it (nothing is lost), while Ray restarts the dead actor (it loads the model
  again and rejoins).

Each actor loads its model once, in its own process, and keeps it. With `parallel` > 1 or `cfg_parallel`
(`pusa serve --workers N --parallel M`) each actor is rank 0 of its own parallel group
(`pusa.parallel.launch`): it spawns the other ranks on its machine (M GPUs of Ray's, one per rank, or M CPU
shares) and every job it runs is split over them. A rank of a group that dies takes its worker down
with it: the actor's process exits, the job goes back to the queue and Ray restarts the worker with a
new group. Imports no torch (nor ray) at module level: the studio page answers before anything loads.

Here: `ClusterQueue`. The spec and fitting workers on machines are `serving.cluster_spec`, the actor
`serving.cluster_worker`, its stand-in `serving.remote_pipeline`, the shipped files `serving.shipped_files`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import replace
from typing import Any

from .cluster_spec import (
    ClusterSpec,
    check_cluster,
    fit_workers,
    ray_machines,
    resolve_local_workers,
    start_ray,
)
from .cluster_worker import PusaWorker
from .history import History
from .queue import FAILED, LOADING, READY, JobQueue, ModelStatus
from .remote_pipeline import RemotePipeline

log = logging.getLogger(__name__)


class _WorkerGone(Exception):
    """A dispatcher's actor did not come back after Ray's restarts (or the queue closed meanwhile)."""


class ClusterQueue(JobQueue):
    """`JobQueue` whose jobs run on Ray actors: one dispatcher thread per actor, one shared FIFO."""

    def __init__(
        self, spec: ClusterSpec, history: History, keep_finished: int = 200, owns_ray: bool = False
    ) -> None:
        super().__init__(self._no_local_pipeline, history, keep_finished)
        self.spec = spec
        self.remotes: list[RemotePipeline] = []
        self._started_ray = owns_ray  # close() shuts Ray down if this queue (or its caller for it) started it
        self._load_failures = 0
        self.ran_on: dict[str, list[int]] = {}  # job id -> the workers that started it, in order
        self.rejoined: list[int] = []  # workers that came back after their process died
        self.gone: list[int] = []  # workers that did not come back (Ray's restarts used up)
        self.ready: list[int] = []  # workers whose model is loaded, in the order they became ready
        self._load_s: float | None = None

    def start(self) -> ClusterQueue:
        """Connects to (or starts) Ray here, in the calling thread: Ray's set-up and shutdown belong to the
        main thread (started from another, a local cluster leaves agent processes behind); then loads the
        workers in the background."""
        import ray

        if not ray.is_initialized():
            self.spec = resolve_local_workers(self.spec) if self.spec.address is None else self.spec
            start_ray(self.spec)
            self._started_ray = True
        try:
            check_cluster(self.spec)
        except ValueError:
            if self._started_ray:
                ray.shutdown()
            raise
        if self.spec.workers == "auto":  # as many as the cluster's machines hold now
            self.spec = replace(self.spec, workers=fit_workers(self.spec, ray_machines()))
            log.info("--workers auto: %d worker(s) on %d machine(s)", self.spec.workers, len(ray_machines()))
        return super().start()

    @staticmethod
    def _no_local_pipeline() -> Any:
        raise RuntimeError("a cluster queue has no local pipeline")

    # ------------------------------------------------------------------ Ray
    def _start_workers(self) -> None:
        import ray

        spec = self.spec
        actor_class = ray.remote(PusaWorker).options(
            num_cpus=spec.cpus_per_worker * spec.ranks,  # the group's ranks are this actor's children
            num_gpus=spec.ranks if spec.cuda else 0,
            max_restarts=spec.max_restarts,
            max_task_retries=0,  # a lost job is run again by the queue, on whichever worker is free
            max_concurrency=2,  # a cancel arrives while a job runs
        )
        threads = max(1, int(spec.cpus_per_worker))
        for index in range(spec.workers):
            actor = actor_class.remote(
                spec.model, spec.lora, spec.device, spec.dtype, threads, spec.parallel, spec.cfg_parallel
            )  # fmt: skip
            self.remotes.append(RemotePipeline(actor, index))

    # ------------------------------------------------------------------ the worker threads
    def _work(self) -> None:
        started = time.perf_counter()
        try:
            self._start_workers()
        except Exception as error:
            log.exception("starting the Ray workers failed")
            with self._changed:
                self._status = ModelStatus(FAILED, f"{type(error).__name__}: {error}")
                self._changed.notify_all()
            return
        threads = [
            threading.Thread(
                target=self._dispatch,
                args=(remote, started),
                name=f"pusa-dispatch-{remote.index}",
                daemon=True,
            )
            for remote in self.remotes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _dispatch(self, remote: RemotePipeline, started: float) -> None:
        try:
            remote.wait_ready()
        except Exception as error:
            log.exception("worker %d failed to load", remote.index)
            with self._changed:
                self._load_failures += 1
                if self._status.state == LOADING and self._load_failures == len(self.remotes):
                    self._status = ModelStatus(FAILED, f"{type(error).__name__}: {error}")
                    self._changed.notify_all()
            return
        with self._changed:
            self.ready.append(remote.index)
            if self._status.state != READY:
                self._pipeline = remote
                self._load_s = round(time.perf_counter() - started, 3)
            self._status = ModelStatus(READY, self._label(remote), self._load_s)
            self._changed.notify_all()
        try:
            self._serve(remote)
        except _WorkerGone as gone:
            self._worker_gone(remote, gone.__cause__)

    def _worker_gone(self, remote: RemotePipeline, error: BaseException | None) -> None:
        """A worker that Ray could not bring back: the status says how many are left; with none left the
        studio says so (its waiting jobs stay stored: the next start runs them)."""
        with self._changed:
            if self._closing:
                return
            self.gone.append(remote.index)
            left = len(self.remotes) - len(self.gone) - self._load_failures
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if error else "gone"
            if left <= 0:
                message = (
                    f"all {len(self.remotes)} Ray workers are gone (worker {remote.index}: {reason}); the "
                    "waiting jobs are kept and run when the studio starts again"
                )
                self._status = ModelStatus(FAILED, message)
            else:
                self._status = ModelStatus(READY, self._label(remote), self._status.load_s)
            self._changed.notify_all()

    def _label(self, remote: RemotePipeline) -> str:
        """ "pusa-tiny on 2 worker(s)", or "on 1 of 2 worker(s)" while the others load, wait for a machine
        that can hold them (one that joins the cluster later) or are gone."""
        up = len([i for i in self.ready if i not in self.gone])
        count = f"{up} of {len(self.remotes)}" if up < len(self.remotes) else f"{up}"
        label = f"{remote.identity} on {count} worker(s)"
        return label + (f" of {self.spec.ranks} processes each" if self.spec.ranks > 1 else "")

    def _run(self, pipeline: Any, job: Any) -> None:
        pipeline.job_id = job.id
        with self._changed:
            self.ran_on.setdefault(job.id, []).append(pipeline.index)
        try:
            super()._run(pipeline, job)
        finally:
            pipeline.job_id = None
        if pipeline.lost and not self._closing:  # the job went back to the queue; wait for Ray's restart
            try:
                pipeline.wait_ready()
                log.info("worker %d is back (pid %s)", pipeline.index, pipeline.info.get("pid"))
                with self._changed:
                    self.rejoined.append(pipeline.index)
            except Exception as error:
                if not self._closing:
                    log.exception("worker %d did not come back", pipeline.index)
                raise _WorkerGone from error  # this dispatcher ends; the others keep serving

    def worker_of(self, job_id: str) -> RemotePipeline | None:
        """The worker running `job_id` now (None if none)."""
        return next((r for r in self.remotes if r.job_id == job_id), None)

    def close(self, timeout: float | None = None) -> None:
        super().close(timeout)
        import ray

        if ray.is_initialized():
            if self.spec.ranks > 1:  # each worker stops its group's ranks (killed, they would follow it)
                with contextlib.suppress(Exception):
                    ray.get([remote.actor.close.remote() for remote in self.remotes], timeout=30)
            for remote in self.remotes:
                ray.kill(remote.actor, no_restart=True)
            if self._started_ray:
                ray.shutdown()


# The pieces live in their own modules (`cluster_spec`, `cluster_worker`, `remote_pipeline`); `pusa serve`,
# the tests and the benchmarks import them from here.
__all__ = [
    "ClusterQueue",
    "ClusterSpec",
    "PusaWorker",
    "RemotePipeline",
    "check_cluster",
    "fit_workers",
    "resolve_local_workers",
    "start_ray",
]
