"""Server-side generation jobs: a queue with one worker, progress, cancel, and a history on disk.

One worker thread owns the pipeline. It loads the model in the background (so a web page can answer
before the weights are in memory), then runs jobs one at a time in the order they were submitted.
Every job reports its place in the queue and its step, can be cancelled between two steps, and on
success is saved into the outputs folder (mp4 + JSON sidecar, `PusaOutput.save`) and recorded in
`history.sqlite` there (`serving.history`), so finished videos and their settings survive a restart.
Jobs belong to the server, not to a browser tab: closing the page neither stops nor loses them. Jobs
that have not finished are written to the same database when they are submitted, so a restart (or a
crash) runs them again: the one that was running starts over, the waiting ones keep their order.

Nothing here knows about the web page (a job's form blob is stored, never read); the studio
(`pusa.app`) and tests drive it directly.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .history import History, HistoryEntry, JobSpec

if TYPE_CHECKING:  # the engine is imported by the worker, behind the page: `pusa serve` answers first
    from ..pipeline import PusaOutput, PusaPipeline
    from ..sampling import StepInfo

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
LOADING, READY = "loading", "ready"  # model states; a model that failed to load is FAILED
LOADING_MESSAGE = "loading model..."
# A job that was running when the server stopped this many times is not started again: it may be
# what stopped it (out of memory, a crash in a kernel).
MAX_STARTS = 2


class WorkerLost(Exception):
    """Raised out of a pipeline's `generate` when the process that ran the job went away (a remote worker,
    `serving.cluster`): the job is queued again, first, for any worker to run (at most MAX_STARTS times)."""


def run_spec(
    pipe: PusaPipeline, spec: JobSpec, callback: Callable[[StepInfo], bool | None] | None = None
) -> PusaOutput:
    """Run one job spec on a pipeline (in the calling thread)."""
    return pipe.generate(spec.request, callback)


# ---------------------------------------------------------------------------------------------- queue
@dataclass(frozen=True)
class ModelStatus:
    state: str  # loading | ready | failed
    message: str  # "loading model...", the model's identity, or why it failed
    load_s: float | None = None


@dataclass(frozen=True)
class JobView:
    """A consistent snapshot of one job, for display."""

    id: str
    task: str
    recipe: str | None
    prompt: str
    seed: int | None
    state: str  # queued | running | done | failed | cancelled
    phase: str  # what a running job is doing, in words
    position: int  # 1-based place among the waiting jobs; 0 once it runs
    step: int  # steps finished
    num_steps: int  # 0 until the first step
    created: float
    started: float | None
    finished: float | None
    eta_s: float | None
    error: str | None
    entry: HistoryEntry | None
    version: int  # grows on every change
    restored: bool  # submitted before the server restarted
    cancelling: bool = False  # Cancel was pressed; a running job stops after its current step

    @property
    def done(self) -> bool:
        return self.state in FINISHED


@dataclass
class _Job:
    id: str
    spec: JobSpec
    created: float
    state: str = QUEUED
    phase: str = "waiting"
    step: int = 0
    num_steps: int = 0
    started: float | None = None
    last_step_at: float | None = None
    finished: float | None = None
    error: str | None = None
    entry: HistoryEntry | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    restored: bool = False
    lost: int = 0  # times the worker running it went away

    def eta_s(self, now: float) -> float | None:
        if self.state != RUNNING or not self.step or self.started is None or self.last_step_at is None:
            return None
        per_step = (self.last_step_at - self.started) / self.step
        return max(0.0, per_step * (self.num_steps - self.step) - (now - self.last_step_at))


class JobQueue:
    """One worker thread, a FIFO of jobs, and the model it loads first.

    `load_pipeline` is called once, in the worker thread. Keep at most `keep_finished` finished jobs
    in memory (their videos are in the history anyway). Jobs the history holds as pending (submitted
    before a restart and not finished) are queued again, in their order, before any new one.
    """

    def __init__(
        self,
        load_pipeline: Callable[[], PusaPipeline],
        history: History,
        keep_finished: int = 200,
    ) -> None:
        self.history = history
        self._load_pipeline = load_pipeline
        self._keep_finished = keep_finished
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._waiting: deque[_Job] = deque()
        self._changed = threading.Condition()
        self._pipeline: PusaPipeline | None = None
        self._status = ModelStatus(LOADING, LOADING_MESSAGE)
        self._closing = False
        self.videos_made = 0  # jobs that ended with a saved video since the start
        self._thread = threading.Thread(target=self._work, name="pusa-worker", daemon=True)
        self._restore()

    def start(self) -> JobQueue:
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker after its current step. Unfinished jobs stay stored: the next start runs them."""
        with self._changed:
            self._closing = True
            for job in self._jobs.values():
                job.cancel.set()
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ model
    @property
    def status(self) -> ModelStatus:
        return self._status

    @property
    def pipeline(self) -> PusaPipeline | None:
        """The loaded pipeline, or None while it loads (or after it failed to)."""
        return self._pipeline

    def wait_ready(self, timeout: float | None = None) -> ModelStatus:
        """Block until the model is loaded or failed to load (or `timeout` passes)."""
        with self._changed:
            self._changed.wait_for(lambda: self._status.state != LOADING, timeout)
            return self._status

    # ------------------------------------------------------------------ jobs
    def submit(self, spec: JobSpec) -> JobView:
        with self._changed:
            if self._status.state == FAILED:
                raise RuntimeError(f"the model failed to load: {self._status.message}")
            if self._closing:
                raise RuntimeError("the studio is shutting down")
            job = _Job(uuid.uuid4().hex[:12], spec, time.time())
            self.history.remember(job.id, job.created, spec)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._touch(job)
            return self._view(job)

    def cancel(self, job_id: str) -> bool:
        """Cancel a waiting job now, or a running one after its current step. False if it already ended."""
        with self._changed:
            job = self._jobs.get(job_id)
            if job is None or job.state in FINISHED:
                return False
            job.cancel.set()
            if job.state == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, "cancelled before it started")
            else:
                job.phase = "cancelling after this step"
                self._touch(job)
            return True

    def view(self, job_id: str) -> JobView | None:
        with self._changed:
            job = self._jobs.get(job_id)
            return self._view(job) if job else None

    def wait(self, job_id: str, after_version: int = -1, timeout: float | None = None) -> JobView:
        """The job's view once it changed past `after_version` (or `timeout` passed, or it finished)."""
        with self._changed:
            job = self._jobs[job_id]
            self._changed.wait_for(lambda: job.version > after_version or job.state in FINISHED, timeout)
            return self._view(job)

    def active(self) -> list[JobView]:
        """The running job (if any), then the waiting ones in order."""
        with self._changed:
            running = [job for job in self._jobs.values() if job.state == RUNNING]
            return [self._view(job) for job in running + list(self._waiting)]

    def _restore(self) -> None:
        for job_id, created, spec, starts in self.history.pending():
            if starts >= MAX_STARTS:
                reason = (
                    f"the server stopped {starts} times while this job ran (out of memory, or a crash in a "
                    "kernel?); it was not started again"
                )
                log.warning("job %s: %s", job_id, reason)
                self.history.record_failure(job_id, created, spec, reason)
                self.history.forget(job_id)
                job = _Job(job_id, spec, created, phase="failed", restored=True)
                job.state, job.error, job.finished = FAILED, reason, time.time()
                self._jobs[job.id] = job  # its id still answers (a client that lost its stream asks)
                continue
            phase = "waiting (submitted before a restart)"
            job = _Job(job_id, spec, created, phase=phase, restored=True)
            self._jobs[job.id] = job
            self._waiting.append(job)
        if self._waiting:
            log.info("%d job(s) from before the restart are queued again", len(self._waiting))

    # ------------------------------------------------------------------ internals (hold the lock)
    def _view(self, job: _Job) -> JobView:
        position = self._waiting.index(job) + 1 if job.state == QUEUED else 0
        request = job.spec.request
        return JobView(
            id=job.id,
            task=request.task,
            recipe=job.spec.request.recipe,
            prompt=request.prompt,
            seed=request.seed,
            state=job.state,
            phase=job.phase,
            position=position,
            step=job.step,
            num_steps=job.num_steps,
            created=job.created,
            started=job.started,
            finished=job.finished,
            eta_s=job.eta_s(time.time()),
            error=job.error,
            entry=job.entry,
            version=job.version,
            restored=job.restored,
            cancelling=job.cancel.is_set(),
        )

    def _touch(self, job: _Job) -> None:
        job.version += 1
        self._changed.notify_all()

    def _finish(
        self, job: _Job, state: str, phase: str, error: str | None = None, keep: bool = False
    ) -> None:
        """End a job. `keep`, or a shutdown that cancelled it, leaves it stored, so the next start runs it
        again (a shutdown's cancel does not count as a start that stopped the server). A job that ended
        by itself while the server stopped (done, failed) is not run again."""
        job.state, job.phase, job.error, job.finished = state, phase, error, time.time()
        if self._closing and state == CANCELLED:
            self.history.unstarted(job.id)
        elif not keep:
            self.history.forget(job.id)
        # Every waiting job moved up one place.
        for other in self._waiting:
            other.version += 1
        self._touch(job)

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state in FINISHED]
        for job_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job_id]

    # ------------------------------------------------------------------ the worker thread
    def _work(self) -> None:
        started = time.perf_counter()
        try:
            pipeline = self._load_pipeline()
        except Exception as error:  # any failure must reach the page, not only the log
            log.exception("loading the model failed")
            with self._changed:
                self._status = ModelStatus(FAILED, f"{type(error).__name__}: {error}")
                while self._waiting:
                    # Kept stored: they run once the studio starts with a model that loads.
                    self._finish(self._waiting.popleft(), FAILED, "failed", self._status.message, keep=True)
                self._changed.notify_all()
            return
        with self._changed:
            self._pipeline = pipeline
            self._status = ModelStatus(READY, pipeline.identity, round(time.perf_counter() - started, 3))
            self._changed.notify_all()
        self._serve(pipeline)

    def _serve(self, pipeline: PusaPipeline) -> None:
        """Run waiting jobs on `pipeline` until the queue closes (one thread per worker; the lock orders them)."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._closing)
                if self._closing:
                    return
                job = self._waiting.popleft()
                job.state, job.phase, job.started = RUNNING, "preparing inputs", time.time()
                self.history.started(job.id)
                for other in self._waiting:
                    other.version += 1
                self._touch(job)
            self._run(pipeline, job)

    def _run(self, pipeline: PusaPipeline, job: _Job) -> None:
        from ..sampling import Cancelled

        def on_step(info: StepInfo) -> bool:
            with self._changed:
                job.step, job.num_steps, job.last_step_at = info.step + 1, info.num_steps, time.time()
                if job.step == job.num_steps:
                    job.phase = "decoding and saving"
                elif not job.cancel.is_set():
                    # A long video's step says its chunk too ("chunk 2/4, step 3/10").
                    job.phase = info.text() if hasattr(info, "text") else "sampling"
                self._touch(job)
            return not job.cancel.is_set()

        output = None
        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started")
            output = run_spec(pipeline, job.spec, on_step)
            assert job.started is not None  # `_serve` set it before this run
            entry = self.history.add(job.id, job.spec, output, time.time() - job.started)
            with self._changed:
                job.entry = entry
                self.videos_made += 1
                self._finish(job, DONE, "done")
        except Cancelled:
            with self._changed:
                self._finish(job, CANCELLED, f"cancelled after step {job.step} of {job.num_steps}")
        except WorkerLost as error:
            with self._changed:
                job.lost += 1
                if job.cancel.is_set() and not self._closing:
                    self._finish(job, CANCELLED, "cancelled (its worker went away)")
                elif job.lost >= MAX_STARTS or self._closing:
                    message = f"its worker went away {job.lost} time(s): {error}"
                    self.history.record_failure(job.id, job.created, job.spec, message)
                    self._finish(job, FAILED, "failed", message)
                else:  # first in line again, for whichever worker is free
                    log.warning("job %s: its worker went away (%s); queued again", job.id, error)
                    self.history.unstarted(job.id)
                    job.state, job.phase, job.step, job.started = (
                        QUEUED,
                        "waiting (its worker stopped)",
                        0,
                        None,
                    )
                    self._waiting.appendleft(job)
                    for other in self._waiting:
                        other.version += 1
                    self._touch(job)
        except Exception as error:  # a failing job is reported on its page; the worker keeps serving
            if not isinstance(error, ValueError):
                log.exception("job %s failed", job.id)
            message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            self.history.record_failure(job.id, job.created, job.spec, message)
            with self._changed:
                self._finish(job, FAILED, "failed", message)
        finally:
            del output
            gc.collect()
            torch = sys.modules.get("torch")  # loaded by the pipeline, if it ever ran
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
