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
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .history import History
from .queue import FAILED, LOADING, READY, JobQueue, ModelStatus, WorkerLost

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------- worker
class PusaWorker:
    """A Ray actor (`ray.remote(PusaWorker)`): one pipeline, loaded once, running one job at a time."""

    def __init__(
        self,
        model: str,
        lora: str | None,
        device: str,
        dtype: str | None,
        threads: int,
        parallel: int = 1,
        cfg_parallel: bool = False,
    ) -> None:
        import torch

        from ..pipeline import PusaPipeline

        torch.set_num_threads(max(1, threads))
        torch_dtype = getattr(torch, dtype or ("float32" if device == "cpu" else "bfloat16"))
        self.runner = None  # this worker's parallel group (`ParallelRunner`), if it has one
        if parallel > 1 or cfg_parallel:
            from ..parallel.launch import start_ranks

            # Ray made this worker's GPUs cuda:0..M-1 here (CUDA_VISIBLE_DEVICES); the ranks inherit it
            self.runner = start_ranks(
                parallel, cfg_parallel, model, lora or "auto", device, torch_dtype, {}, threads=max(1, threads)
            )  # fmt: skip
            self.pipe = self.runner.pipe
        else:
            self.pipe = PusaPipeline.from_model(model, lora=lora or "auto", device=device, dtype=torch_dtype)
        self._cancel: dict[str, threading.Event] = {}
        self._busy = threading.Lock()  # held while a job runs (`close` waits for it)
        self._inputs = Path(tempfile.mkdtemp(prefix="pusa-worker-inputs-"))

    def info(self) -> dict[str, Any]:
        import socket

        import ray

        runner = self.runner
        return {
            "identity": self.pipe.identity,
            "limits": self.pipe.limits,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": ray.get_runtime_context().get_node_id(),  # the Ray machine (node) it runs on
            # the processes of this worker: its own, then its parallel group's other ranks
            "ranks": [os.getpid()] + ([p.pid for p in runner._processes] if runner is not None else []),
            "parallel": None if runner is None else {"mode": runner.mode, "world_size": runner.world_size},
        }

    def cancel(self, token: str) -> bool:
        event = self._cancel.get(token)
        if event is not None:
            event.set()
        return event is not None

    def close(self, timeout: float = 20.0) -> bool:
        """Stop this worker's parallel group's other ranks (after a running job's next step). False if a
        job still held the group after `timeout` (killing the worker then ends its ranks: they follow
        their parent)."""
        for event in list(self._cancel.values()):
            event.set()
        if not self._busy.acquire(timeout=timeout):
            return False
        try:
            if self.runner is not None:
                self.runner.close()
                self.runner = None
            return True
        finally:
            self._busy.release()

    def run(self, token: str, request: Any, files: dict[str, bytes]):
        """Yields ("step", step, num_steps) after each step, then ("done", frames, settings),
        ("cancelled", message) or ("failed", message, is_bad_input)."""
        import queue as queue_module

        from ..sampling import Cancelled

        event = self._cancel.setdefault(token, threading.Event())
        folder = self._inputs / token
        folder.mkdir(parents=True, exist_ok=True)
        local = {}
        for key, data in files.items():
            path = folder / key
            path.write_bytes(data)
            local[key] = str(path)
        request = _with_local_files(request, local)
        steps: queue_module.Queue = queue_module.Queue()
        outcome: list[tuple] = []

        def on_step(info: Any) -> bool:
            steps.put(("step", info.step + 1, info.num_steps))
            return not event.is_set()

        def work() -> None:
            try:
                with self._busy:
                    out = self.pipe.generate(request, on_step)
                outcome.append(("done", out.frames, out.settings))
            except Cancelled as error:
                outcome.append(("cancelled", str(error)))
            except Exception as error:
                if self.runner is not None and _ranks_lost(error):
                    # a rank of this worker's group died: the group cannot run another job. End this
                    # process: the job goes back to the queue and Ray starts this worker (and a group) again
                    log.error("worker pid %d: %s; exiting so that Ray restarts it", os.getpid(), error)
                    logging.shutdown()
                    os._exit(75)
                # reported on the job's page, as with the embedded worker
                bad_input = isinstance(error, ValueError)
                outcome.append(
                    ("failed", str(error) if bad_input else f"{type(error).__name__}: {error}", bad_input)
                )
            finally:
                steps.put(None)

        thread = threading.Thread(target=work, name=f"pusa-job-{token}", daemon=True)
        thread.start()
        try:
            while (item := steps.get()) is not None:
                yield item
            thread.join()
            yield outcome[0]
        finally:
            self._cancel.pop(token, None)
            for path in folder.glob("*"):
                path.unlink(missing_ok=True)
            folder.rmdir()


def _ranks_lost(error: BaseException) -> bool:
    from ..parallel.launch import RanksLost

    return isinstance(error, RanksLost)


def _media_files(request: Any) -> tuple[dict[str, bytes], dict[str, str]]:
    """The request's input files by content, keyed `images-0.png`, `video.mp4`...; and key -> original path."""
    files, originals = {}, {}

    def take(key: str, value: Any) -> None:
        if isinstance(value, (str, Path)) and Path(value).is_file():
            name = f"{key}{Path(value).suffix}"
            files[name] = Path(value).read_bytes()
            originals[name] = str(Path(value).resolve())

    for index, image in enumerate(request.images or ()):
        take(f"images-{index}", image)
    take("video", request.video)
    take("end_video", request.end_video)
    return files, originals


def _with_local_files(request: Any, local: dict[str, str]) -> Any:
    """The request with each shipped file replaced by the worker's copy."""

    def swap(key: str, value: Any) -> Any:
        for name, path in local.items():
            if Path(name).stem == key:
                return path
        return value

    images = [swap(f"images-{i}", image) for i, image in enumerate(request.images or ())]
    return replace(
        request,
        images=images,
        video=swap("video", request.video),
        end_video=swap("end_video", request.end_video),
    )


def _restore_paths(record: Any, worker_paths: dict[str, str]) -> Any:
    """Settings as the studio's machine sees them: the worker's copies' paths back to the originals
    (their content hashes are the same)."""
    if isinstance(record, dict):
        return {k: _restore_paths(v, worker_paths) for k, v in record.items()}
    if isinstance(record, list):
        return [_restore_paths(v, worker_paths) for v in record]
    if isinstance(record, str):
        for worker_path, original in worker_paths.items():
            if record == worker_path:
                return original
    return record


# ---------------------------------------------------------------------------------------------- proxy
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

        files, originals = _media_files(request)
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
            settings = _restore_paths(settings, _worker_paths(settings, originals, token))
        # which worker made it, on which machine (the history's record of a cluster's job)
        worker = {key: self.info.get(key) for key in ("host", "node", "pid")}
        return PusaOutput(frames=frames, settings={**settings, "worker": {"index": self.index, **worker}})


def _worker_paths(settings: dict, originals: dict[str, str], token: str) -> dict[str, str]:
    """worker path -> original path, for every shipped file, found by the token folder and file name."""
    mapping = {}

    def visit(record: Any) -> None:
        if isinstance(record, dict):
            for value in record.values():
                visit(value)
        elif isinstance(record, list):
            for value in record:
                visit(value)
        elif isinstance(record, str):
            path = Path(record)
            if path.parent.name == token and path.name in originals:
                mapping[record] = originals[path.name]

    visit(settings)
    return mapping


def _machines() -> list[dict[str, float]]:
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
    nodes = _machines()
    if any(all(node.get(k, 0) >= v for k, v in needs.items()) for node in nodes):
        return
    largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in needs}
    per = f" ({spec.ranks} processes: --parallel / --cfg-parallel)" if spec.ranks > 1 else ""
    wanted = f"{needs['CPU']:g} CPU cores (--worker-cpus {spec.cpus_per_worker:g} each)" + (
        f" and {needs['GPU']} GPU(s) (--device {spec.device})" if spec.cuda else ""
    )
    raise ValueError(
        f"a worker{per} needs {wanted} on one machine; the Ray cluster's largest machine has "
        f"{largest['CPU']:g} CPU cores and {largest['GPU']:g} GPU(s)"
    )


# ---------------------------------------------------------------------------------------------- queue
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
            self.spec = replace(self.spec, workers=fit_workers(self.spec, _machines()))
            log.info("--workers auto: %d worker(s) on %d machine(s)", self.spec.workers, len(_machines()))
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


__all__ = [
    "ClusterQueue",
    "ClusterSpec",
    "PusaWorker",
    "RemotePipeline",
    "check_cluster",
    "fit_workers",
    "start_ray",
]
