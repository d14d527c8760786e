"""What a job is (`JobSpec`) and where jobs are kept: finished videos and their settings in the outputs
folder and `history.sqlite` there (`History`), and the jobs not finished yet in the same database, so a
restart runs them again (`spec_to_json` / `spec_from_json`).

Nothing here knows about the web page (a job's form blob is stored, never read) or about the queue
(`serving.queue`), which records its jobs here.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..request import GenerationRequest

if TYPE_CHECKING:
    from ..pipeline import PusaOutput

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """What to run: a `GenerationRequest` (complete but for the model's own values; its inputs are file
    paths), and an opaque blob the studio stores beside it to refill its form ("Use these settings").
    Nothing here reads the blob."""

    request: GenerationRequest
    form: dict[str, Any] = field(default_factory=dict)


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
CREATE TABLE IF NOT EXISTS failed (
    id       TEXT PRIMARY KEY,
    created  REAL NOT NULL,          -- unix time the job was submitted
    failed   REAL NOT NULL,          -- unix time it failed
    spec     TEXT NOT NULL,          -- JSON: the job spec (`spec_to_json`), its inputs kept while listed
    reason   TEXT NOT NULL           -- why, in words
);
CREATE TABLE IF NOT EXISTS pending (
    id       TEXT PRIMARY KEY,
    created  REAL NOT NULL,          -- unix time the job was submitted
    spec     TEXT NOT NULL,          -- JSON: the job spec (`spec_to_json`); its inputs are file paths
    starts   INTEGER NOT NULL DEFAULT 0  -- how many times a worker started it
)
"""


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
    record["chunk_multipliers"] = list(request.chunk_multipliers)
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
    if "chunk_multipliers" in record:  # a long video's (stored since pusa has one)
        record["chunk_multipliers"] = tuple(record["chunk_multipliers"])
    for name in ("recipe", "end_video"):  # kept beside the request by pusa 0.1.0's first releases
        if data.get(name) is not None:
            record[name] = data[name]
    return JobSpec(GenerationRequest(**record), data["form"])


@dataclass(frozen=True)
class FailedJob:
    """A job that ended without a video: when, what it was, and why."""

    id: str
    created: float
    failed: float
    spec: JobSpec
    reason: str


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
        if not target.exists():  # written whole, then renamed: a job reading the same file never sees half
            handle, partial = tempfile.mkstemp(dir=self.inputs_dir, suffix=".partial")
            os.close(handle)
            shutil.copyfile(source, partial)
            os.replace(partial, target)
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
        still_used |= {path for failure in self.failures() for path in _spec_paths(failure.spec)}
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

    def unstarted(self, job_id: str) -> None:
        """Take back a start that a clean shutdown interrupted (only a crash counts against `MAX_STARTS`)."""
        self._write("UPDATE pending SET starts = MAX(starts - 1, 0) WHERE id = ?", (job_id,))

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

    def record_failure(self, job_id: str, created: float, spec: JobSpec, reason: str) -> bool:
        """Keep a failed job (and, while it is listed, its inputs) so it can be seen after a restart."""
        text = spec_to_json(spec)
        if text is None:
            return False
        row = (job_id, created, time.time(), text, reason)
        return self._write("INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?, ?)", row)

    # `builtins.list`: inside the class, after `def list`, the bare name is that method
    def failures(self, limit: int = 50) -> builtins.list[FailedJob]:
        """The failed jobs, newest first; rows this version cannot read are skipped."""
        try:
            with self._connect() as db:
                query = "SELECT id, created, failed, spec, reason FROM failed ORDER BY failed DESC LIMIT ?"
                rows = db.execute(query, (limit,)).fetchall()
        except sqlite3.Error as error:
            log.warning("could not read the failed jobs in %s: %s", self.database, error)
            return []
        failures = []
        for job_id, created, failed, text, reason in rows:
            try:
                failures.append(FailedJob(job_id, created, failed, spec_from_json(text), reason))
            except (KeyError, TypeError, ValueError):
                continue
        return failures

    def failure(self, job_id: str) -> FailedJob | None:
        """One failed job by id (any age), or None."""
        try:
            with self._connect() as db:
                query = "SELECT id, created, failed, spec, reason FROM failed WHERE id = ?"
                row = db.execute(query, (job_id,)).fetchone()
            return None if row is None else FailedJob(row[0], row[1], row[2], spec_from_json(row[3]), row[4])
        except (sqlite3.Error, KeyError, TypeError, ValueError):
            return None

    def pending(self) -> builtins.list[tuple[str, float, JobSpec, int]]:
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
