"""HTML and table rows for the studio: job progress, the status line, history. Pure: values in, text out."""

from __future__ import annotations

import time
from html import escape

from ..serving.history import FailedJob, HistoryEntry
from ..serving.queue import CANCELLED, DONE, FAILED, LOADING, QUEUED, RUNNING, JobView, ModelStatus
from .form_fields import TABS
from .timeline import error_html

_BOX = "font-size: 13px; line-height: 1.45; padding: 8px 10px; border-radius: 6px;"
TASK_NAMES = {**TABS, "extension": "Extension", "completion": "Completion", "transition": "Transition"}


def task_name(item: JobView | HistoryEntry) -> str:
    """The words for what a job or a finished video is: its recipe if it has one, else its task."""
    return TASK_NAMES.get(item.recipe or item.task, item.task)


def _short(prompt: str, length: int = 40) -> str:
    return prompt if len(prompt) <= length else prompt[: length - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{int(value // 60)} min {int(value % 60)} s"


def _bar(fraction: float | None) -> str:
    inner = (
        f'<div style="height: 100%; width: {100 * fraction:.1f}%; background: rgb(37, 99, 235); '
        'transition: width 0.3s;"></div>'
        if fraction is not None
        else '<div style="height: 100%; width: 100%; background: rgba(37, 99, 235, 0.35);"></div>'
    )
    return (
        '<div style="height: 6px; border-radius: 3px; background: rgba(127, 127, 127, 0.2); overflow: hidden; '
        f'margin-top: 6px;">{inner}</div>'
    )


def _progress(
    state: str, text: str, detail: str = "", fraction: float | None = None, bar: bool = True
) -> str:
    return (
        f'<div class="pusa-progress" data-state="{state}" style="{_BOX} border: 1px solid rgba(127, 127, 127, 0.3);">'
        f"<b>{text}</b>" + (f" · {detail}" if detail else "") + (_bar(fraction) if bar else "") + "</div>"
    )


def idle_html() -> str:
    return _progress("idle", "Ready", "press Generate; the video appears here", bar=False)


def uploaded_html(text: str) -> str:
    return _progress("idle", "Uploaded", escape(text), bar=False)


def waiting_for_model_html() -> str:
    return _progress("loading", "Waiting for the model", "loading model... the job starts once it is ready")


def made_on(settings: dict) -> str:
    """Where a video was made, when not by the embedded worker: "worker 1 on gpu-b" (a Ray worker), and
    ", 2 processes" for a parallel group ("" for this process alone)."""
    worker = settings.get("worker") or {}
    parallel = (settings.get("acceleration") or {}).get("parallel") or {}
    parts = []
    if worker:
        parts.append(f"worker {worker.get('index')} on {worker.get('host') or 'a Ray machine'}")
    if parallel.get("world_size", 1) > 1:
        how = "CFG-parallel" if parallel.get("mode") == "cfg" else "context parallel"
        parts.append(f"{parallel['world_size']} processes ({how})")
    return ", ".join(parts)


def _progress_parts(view: JobView) -> tuple[str, str, str, float | None, bool]:
    """(state, title, detail, fraction done, show a bar) of a job, in plain words."""
    seed = f"seed {view.seed}" if view.seed is not None else ""
    if view.state == QUEUED:
        ahead = view.position - 1
        return (
            "queued",
            f"Queued: position {view.position}",
            f"{ahead} job{'s' if ahead != 1 else ''} ahead · {seed}",
            None,
            False,
        )
    if view.state == DONE and view.entry is not None:
        entry = view.entry
        warnings = "".join(f" · warning: {note}" for note in entry.settings.get("warnings") or ())
        where = made_on(entry.settings)
        return (
            "done",
            f"Done in {_seconds(entry.elapsed_s)}",
            f"{seed} · {entry.video.name}{' · ' + where if where else ''}{warnings}",
            1.0,
            False,
        )
    if view.state == FAILED:
        return "failed", "The job failed", str(view.error), None, False
    if view.state == CANCELLED:
        return "cancelled", "Cancelled", view.phase, None, False
    if not view.num_steps:
        return "running", "Starting", f"{view.phase} · {seed}", None, True
    eta = f"ETA {_seconds(view.eta_s)}" if view.eta_s is not None else ""
    detail = " · ".join(part for part in (view.phase, eta, seed) if part)
    return "running", f"Step {view.step}/{view.num_steps}", detail, view.step / view.num_steps, True


def progress_html(view: JobView) -> str:
    """Where a job is: its place in the queue, its step with an ETA, or how it ended (for the page)."""
    state, title, detail, fraction, bar = _progress_parts(view)
    if state == "failed":
        return error_html(f"{title}: {detail}").replace(
            'class="pusa-error"', 'class="pusa-error pusa-progress"'
        )
    return _progress(state, title, escape(detail), fraction, bar)


def progress_text(view: JobView) -> str:
    """The same in plain text, with the job's id (for API clients: a job can be looked up by its id)."""
    state, title, detail, _, _ = _progress_parts(view)
    return (
        f"{title}: {detail} (job {view.id})" if state == "failed" else f"{title} · {detail} · job {view.id}"
    )


def cancelled_html(phase: str) -> str:
    return _progress("cancelled", "Cancelled", escape(phase), bar=False)


def status_html(status: ModelStatus, active: list[JobView], model: str) -> str:
    """The line at the top of the page: is the model ready, and what is the worker doing."""
    if status.state == LOADING:
        dot, text = "#d97706", f"{status.message} ({escape(model)}) · the page works; Generate waits for it"
    elif status.state == FAILED:
        dot, text = "#dc2626", f"the model failed to load: {escape(status.message)}"
    else:
        loaded = f" (loaded in {_seconds(status.load_s)})" if status.load_s is not None else ""
        running = [view for view in active if view.state != QUEUED]
        waiting = len(active) - len(running)
        if running:
            view = running[0]
            step = f"step {view.step}/{view.num_steps}" if view.num_steps else view.phase
            work = f"running {task_name(view)} ({escape(step)})"
        else:
            work = "idle"
        if waiting:
            work += f" · {waiting} waiting"
        dot, text = "#16a34a", f"model {escape(status.message)} ready{loaded} · {work}"
    return (
        f'<div class="pusa-status" data-state="{status.state}" style="font-size: 13px;">'
        f'<span style="color: {dot};">●</span> {text}</div>'
    )


# ---------------------------------------------------------------------------------------------- queue
QUEUE_HEADERS = ["id", "state", "task", "prompt", "seed", "submitted"]


def job_state_text(view: JobView) -> str:
    """A job's state in a few words: "running, step 3/10", "waiting, 2nd in line"..."""
    if view.state == QUEUED:
        text = f"waiting, #{view.position} in line"
        return text + " (submitted before a restart)" if view.restored else text
    if view.state == RUNNING:
        if view.cancelling:
            return "cancelling after this step"
        return f"running, step {view.step}/{view.num_steps}" if view.num_steps else f"running, {view.phase}"
    return view.phase if view.state == CANCELLED else view.state


def queue_rows(active: list[JobView]) -> list[list]:
    return [
        [
            view.id,
            job_state_text(view),
            task_name(view),
            view.prompt,
            view.seed if view.seed is not None else "random",
            _when(view.created),
        ]
        for view in active
    ]


def queue_choice(view: JobView) -> tuple[str, str]:
    """(label, value) of an unfinished job in the queue's picker."""
    return f"{view.id} · {task_name(view)} · “{_short(view.prompt)}” · {job_state_text(view)}", view.id


def queue_label(active: list[JobView]) -> str:
    if not active:
        return "Queue: empty"
    waiting = sum(view.state == QUEUED for view in active)
    running = len(active) - waiting
    return f"Queue: {running} running, {waiting} waiting"


def job_record(view: JobView) -> dict:
    """What `/jobs` returns for one job (JSON)."""
    return {
        "id": view.id,
        "task": view.task,
        "recipe": view.recipe,
        "prompt": view.prompt,
        "seed": view.seed,
        "state": view.state,
        "phase": view.phase,
        "position": view.position,
        "step": view.step,
        "num_steps": view.num_steps,
        "eta_s": None if view.eta_s is None else round(view.eta_s, 1),
        "submitted": view.created,
        "restored": view.restored,
    }


def exposure_warning_html(host: str) -> str:
    return (
        f'<div class="pusa-warning" role="alert" style="{_BOX} border: 1px solid #d97706; '
        'background: rgba(217, 119, 6, 0.08);">'
        f"<b>Warning:</b> this studio listens on {escape(host)} without a password, so anyone who can reach "
        "this machine can use it. Restart with <code>--auth user:password</code> (or set PUSA_AUTH).</div>"
    )


# ---------------------------------------------------------------------------------------------- history
HISTORY_HEADERS = ["id", "created", "task", "prompt", "seed", "steps", "size", "frames", "time"]


def _when(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))


def history_rows(entries: list[HistoryEntry]) -> list[list]:
    rows = []
    for entry in entries:
        s = entry.settings
        rows.append(
            [
                entry.id,
                _when(entry.created),
                task_name(entry),
                entry.prompt,
                entry.seed,
                s.get("num_inference_steps"),
                f"{s.get('width')}x{s.get('height')}",
                s.get("num_frames"),
                _seconds(entry.elapsed_s),
            ]
        )
    return rows


def history_choice(entry: HistoryEntry) -> tuple[str, str]:
    """(label, value) of an entry in the picker."""
    prompt, task = _short(entry.prompt), task_name(entry)
    return f"{_when(entry.created)} · {task} · “{prompt}” · seed {entry.seed}", entry.id


def history_summary_html(entry: HistoryEntry) -> str:
    missing = "" if entry.video.is_file() else " · <b>the mp4 is missing</b>"
    where = made_on(entry.settings)
    where = f" · {escape(where)}" if where else ""
    return (
        f'<div style="font-size: 13px;">{escape(history_choice(entry)[0])} · made in '
        f"{_seconds(entry.elapsed_s)}{where} · <code>{escape(entry.video.name)}</code>{missing}</div>"
    )


def failures_html(failures: list[FailedJob]) -> str:
    """The jobs that ended without a video, newest first: when, what, why (their inputs are kept)."""
    if not failures:
        return '<div class="pusa-failures" style="font-size: 13px;">No failed jobs.</div>'
    items = []
    for failure in failures:
        r = failure.spec.request
        name = TASK_NAMES.get(r.recipe or r.task, r.task)
        items.append(
            f"<li><code>{escape(failure.id)}</code> · {_when(failure.failed)} · {escape(name)} · "
            f"“{escape(_short(r.prompt))}” · seed {r.seed}: <b>{escape(failure.reason)}</b></li>"
        )
    return f'<div class="pusa-failures" style="font-size: 13px;"><ul>{"".join(items)}</ul></div>'
