"""Server-side generation jobs: a queue with one worker, progress, cancel, and a history on disk.

One worker thread owns the pipeline. It loads the model in the background (so a web page can answer
before the weights are in memory), then runs jobs one at a time in the order they were submitted.
Every job reports its place in the queue and its step, can be cancelled between two steps, and on
success is saved into the outputs folder (mp4 + JSON sidecar, `PusaOutput.save`) and recorded in
`history.sqlite` there, so finished videos and their settings survive a restart. Jobs belong to the
server, not to a browser tab: closing the page neither stops nor loses them. Jobs that have not
finished are written to the same database when they are submitted, so a restart (or a crash) runs
them again: the one that was running starts over, the waiting ones keep their order.

Nothing here knows about the web page (a job's form blob is stored, never read); the studio
(`pusa.app`) and tests drive it directly.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .pipeline import GenerationRequest, PusaOutput, PusaPipeline
from .sampling import Cancelled, StepInfo

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
LOADING, READY = "loading", "ready"  # model states; a model that failed to load is FAILED
LOADING_MESSAGE = "loading model..."


@dataclass
class JobSpec:
    """What to run: a `GenerationRequest` (complete but for the model's own values; its inputs are file
    paths), and an opaque blob the studio stores beside it to refill its form ("Use these settings").
    Nothing here reads the blob."""

    request: GenerationRequest
    form: dict[str, Any] = field(default_factory=dict)


def run_spec(
    pipe: PusaPipeline, spec: JobSpec, callback: Callable[[StepInfo], bool | None] | None = None
) -> PusaOutput:
    """Run one job spec on a pipeline (in the calling thread)."""
    return pipe.generate(spec.request, callback)


# ---------------------------------------------------------------------------------------------- history
@dataclass(frozen=True)
class HistoryEntry:
    """One finished video. `settings` is the pipeline's record (as in the sidecar); `form` the studio's."""

    id: str
    created: float
    task: str
    recipe: str | None
    prompt: str
    seed: int
    settings: dict[str, Any]
    form: dict[str, Any]
    video: Path  # absolute path of the mp4, inside the outputs folder
    elapsed_s: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id        TEXT PRIMARY KEY,
    created   REAL NOT NULL,     -- unix time the video was saved
    task      TEXT NOT NULL,     -- t2v | i2v | frames | v2v
    recipe    TEXT,              -- extension | completion | transition | NULL
    prompt    TEXT NOT NULL,
    seed      INTEGER NOT NULL,
    settings  TEXT NOT NULL,     -- JSON: the pipeline's settings record, as in the sidecar
    form      TEXT NOT NULL,     -- JSON: the studio form values, to refill the form
    video     TEXT NOT NULL,     -- the mp4, relative to the outputs folder
    elapsed_s REAL NOT NULL      -- time from the job's start to its saved mp4
);
CREATE TABLE IF NOT EXISTS pending (
    id       TEXT PRIMARY KEY,
    created  REAL NOT NULL,          -- unix time the job was submitted
    spec     TEXT NOT NULL,          -- JSON: the job spec (`spec_to_json`); its inputs are file paths
    starts   INTEGER NOT NULL DEFAULT 0  -- how many times a worker started it
)
"""
# A job that was running when the server stopped this many times is not started again: it may be
# what stopped it (out of memory, a crash in a kernel).
MAX_STARTS = 2


def spec_to_json(spec: JobSpec) -> str | None:
    """The spec as JSON, or None when it cannot be stored (an input is an in-memory image or array)."""
    request = spec.request
    if any(item is not None and not isinstance(item, (str, Path)) for item in _spec_media(spec)):
        return None
    record = {f.name: getattr(request, f.name) for f in fields(request)}
    record["images"] = [str(item) for item in request.images]
    for name in ("video", "end_video"):
        record[name] = None if record[name] is None else str(record[name])
    record["positions"] = list(request.positions)
    record["noise_multipliers"] = list(request.noise_multipliers)
    try:
        return json.dumps({"request": record, "form": spec.form}, sort_keys=True)
    except (TypeError, ValueError):  # a form or a record that is not JSON-able stays in memory only
        return None


def spec_from_json(text: str) -> JobSpec:
    data = json.loads(text)
    record = dict(data["request"])
    record["images"] = tuple(record["images"])
    record["positions"] = tuple(record["positions"])
    record["noise_multipliers"] = tuple(record["noise_multipliers"])
    for name in ("recipe", "end_video"):  # kept beside the request by pusa 0.1.0's first releases
        if data.get(name) is not None:
            record[name] = data[name]
    return JobSpec(GenerationRequest(**record), data["form"])


class History:
    """Finished videos in `outputs/videos/`, their inputs in `outputs/inputs/`, rows in `outputs/history.sqlite`.

    Files are only ever written or deleted inside the outputs folder; names are made here, never taken
    from a request.
    """

    def __init__(self, outputs: str | Path) -> None:
        self.outputs = Path(outputs).resolve()
        self.videos_dir = self.outputs / "videos"
        self.inputs_dir = self.outputs / "inputs"
        self.database = self.outputs / "history.sqlite"
        for folder in (self.videos_dir, self.inputs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per call: the worker thread and the web threads all use it.
        with closing(sqlite3.connect(self.database, timeout=30)) as db, db:
            yield db

    def inside(self, path: str | Path) -> bool:
        """Whether `path` resolves to a place inside the outputs folder."""
        return Path(path).resolve().is_relative_to(self.outputs)

    def keep_input(self, source: str | Path) -> str:
        """Copy an uploaded file into `inputs/` (named by its content hash) and return the copy's path."""
        source = Path(source)
        if self.inside(source) and source.resolve().parent == self.inputs_dir:
            return str(source.resolve())
        digest = hashlib.sha256()
        with source.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        target = self.inputs_dir / f"{digest.hexdigest()[:20]}{source.suffix.lower()}"
        if not target.exists():
            shutil.copyfile(source, target)
        return str(target)

    def add(self, job_id: str, spec: JobSpec, output: PusaOutput, elapsed_s: float) -> HistoryEntry:
        """Save the video (mp4 + sidecar) and record it."""
        settings = output.settings
        created = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created))
        task = settings["task"] if spec.request.recipe is None else spec.request.recipe
        video = self.videos_dir / f"{stamp}-{task}-{settings['seed']}-{job_id}.mp4"
        assert self.inside(video)
        output.save(video)
        entry = HistoryEntry(
            id=job_id,
            created=created,
            task=settings["task"],
            recipe=spec.request.recipe,
            prompt=settings["prompt"],
            seed=int(settings["seed"]),
            settings=settings,
            form=spec.form,
            video=video,
            elapsed_s=round(elapsed_s, 3),
        )
        with self._connect() as db:
            db.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.id,
                    entry.created,
                    entry.task,
                    entry.recipe,
                    entry.prompt,
                    entry.seed,
                    json.dumps(settings, sort_keys=True),
                    json.dumps(spec.form, sort_keys=True),
                    str(video.relative_to(self.outputs)),
                    entry.elapsed_s,
                ),
            )
        return entry

    def _entry(self, row: tuple) -> HistoryEntry:
        id_, created, task, recipe, prompt, seed, settings, form, video, elapsed_s = row
        return HistoryEntry(
            id_, created, task, recipe, prompt, seed, json.loads(settings), json.loads(form),
            self.outputs / video, elapsed_s,
        )  # fmt: skip

    def list(self, limit: int | None = None) -> list[HistoryEntry]:
        """Newest first."""
        query = "SELECT * FROM history ORDER BY created DESC"
        with self._connect() as db:
            rows = db.execute(query + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        return [self._entry(row) for row in rows]

    def get(self, entry_id: str) -> HistoryEntry | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM history WHERE id = ?", (entry_id,)).fetchone()
        return self._entry(row) if row else None

    def delete(self, entry_id: str) -> bool:
        """Forget an entry and delete its mp4, its sidecar and the inputs no other entry or pending job uses."""
        entry = self.get(entry_id)
        if entry is None:
            return False
        with self._connect() as db:
            db.execute("DELETE FROM history WHERE id = ?", (entry_id,))
        still_used = {path for other in self.list() for path in _input_paths(other.settings)}
        still_used |= {path for _, _, spec, _ in self.pending() for path in _spec_paths(spec)}
        doomed = [entry.video, entry.video.with_suffix(".json")]
        doomed += [Path(path) for path in _input_paths(entry.settings) if path not in still_used]
        for path in doomed:
            if self.inside(path) and path.is_file():
                path.unlink()
        return True

    # ------------------------------------------------------------------ jobs not finished yet
    def remember(self, job_id: str, created: float, spec: JobSpec) -> bool:
        """Store a submitted job so a restart runs it. False if it cannot be stored (in-memory inputs)."""
        text = spec_to_json(spec)
        if text is None:
            return False
        return self._write("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, 0)", (job_id, created, text))

    def started(self, job_id: str) -> None:
        self._write("UPDATE pending SET starts = starts + 1 WHERE id = ?", (job_id,))

    def forget(self, job_id: str) -> None:
        self._write("DELETE FROM pending WHERE id = ?", (job_id,))

    def _write(self, query: str, values: tuple) -> bool:
        """Book-keeping of pending jobs: a failure (disk full, locked database) is logged, never raised,
        so it cannot stop the worker; the job then just would not survive a restart."""
        try:
            with self._connect() as db:
                db.execute(query, values)
            return True
        except sqlite3.Error as error:
            log.warning("could not record a pending job in %s: %s", self.database, error)
            return False

    def pending(self) -> list[tuple[str, float, JobSpec, int]]:
        """Stored jobs that have not finished, oldest first: (id, created, spec, starts).

        A row this version cannot read (written by another version of pusa) is logged and dropped.
        """
        try:
            with self._connect() as db:
                rows = db.execute("SELECT id, created, spec, starts FROM pending ORDER BY created").fetchall()
        except sqlite3.Error as error:
            log.warning("could not read the pending jobs in %s: %s", self.database, error)
            return []
        jobs = []
        for job_id, created, text, starts in rows:
            try:
                jobs.append((job_id, created, spec_from_json(text), starts))
            except (KeyError, TypeError, ValueError) as error:
                log.warning("dropping stored job %s that cannot be read: %s", job_id, error)
                self.forget(job_id)
        return jobs


def _spec_media(spec: JobSpec) -> list[Any]:
    """Every input of a spec (paths, images or arrays; None where a slot is empty)."""
    return [*spec.request.images, spec.request.video, spec.request.end_video]


def _spec_paths(spec: JobSpec) -> list[str]:
    return [str(item) for item in _spec_media(spec) if isinstance(item, (str, Path))]


def _input_paths(settings: dict[str, Any]) -> list[str]:
    """The input files a finished video was made from, as its settings record them."""
    records = list(settings.get("images") or []) + list((settings.get("sources") or {}).values())
    return [
        record["path"]
        for record in records
        if isinstance(record, dict) and isinstance(record.get("path"), str)
    ]


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

    def eta_s(self, now: float) -> float | None:
        if self.state != RUNNING or not self.step or self.started is None:
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
                log.warning(
                    "job %s was running when the server stopped %d times; it is not started again",
                    job_id,
                    starts,
                )
                self.history.forget(job_id)
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
        )

    def _touch(self, job: _Job) -> None:
        job.version += 1
        self._changed.notify_all()

    def _finish(
        self, job: _Job, state: str, phase: str, error: str | None = None, keep: bool = False
    ) -> None:
        """End a job. `keep` (or a shutdown) leaves it stored, so the next start runs it again."""
        job.state, job.phase, job.error, job.finished = state, phase, error, time.time()
        if not (keep or self._closing):
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
        def on_step(info: StepInfo) -> bool:
            with self._changed:
                job.step, job.num_steps, job.last_step_at = info.step + 1, info.num_steps, time.time()
                if job.step == job.num_steps:
                    job.phase = "decoding and saving"
                elif not job.cancel.is_set():
                    job.phase = "sampling"
                self._touch(job)
            return not job.cancel.is_set()

        output = None
        try:
            if job.cancel.is_set():
                raise Cancelled("cancelled before it started")
            output = run_spec(pipeline, job.spec, on_step)
            entry = self.history.add(job.id, job.spec, output, time.time() - job.started)
            with self._changed:
                job.entry = entry
                self.videos_made += 1
                self._finish(job, DONE, "done")
        except Cancelled:
            with self._changed:
                self._finish(job, CANCELLED, f"cancelled after step {job.step} of {job.num_steps}")
        except Exception as error:  # a failing job is reported on its page; the worker keeps serving
            if not isinstance(error, ValueError):
                log.exception("job %s failed", job.id)
            message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            with self._changed:
                self._finish(job, FAILED, "failed", message)
        finally:
            del output
            gc.collect()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
