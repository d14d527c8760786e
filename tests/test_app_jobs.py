"""`pusa.serving` (queue and history): background model loading, the queue with one worker, progress, cancel, failures, and the
history on disk (SQLite + outputs folder) that survives a restart. Tiny-random model, 32x32."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import save_image
from pusa.app import views
from pusa.pipeline import GenerationRequest, PusaPipeline
from pusa.serving.history import History, JobSpec
from pusa.serving.queue import CANCELLED, DONE, FAILED, LOADING, QUEUED, READY, JobQueue
from pusa.video import read_video, read_video_metadata

FAST = dict(num_inference_steps=2, width=32, height=32, seed=3)


@pytest.fixture(scope="module")
def pipe(tiny_random) -> PusaPipeline:
    return tiny_random


@pytest.fixture
def image(tmp_path) -> Path:
    return save_image(tmp_path / "upload.png")


def t2v(prompt: str = "a red circle", **overrides) -> JobSpec:
    fields = {**FAST, **overrides}
    return JobSpec(
        GenerationRequest(task="t2v", prompt=prompt, **fields), form={"tab": "t2v", "prompt": prompt}
    )


def finish(queue: JobQueue, job_id: str, timeout: float = 60):
    view = queue.view(job_id)
    while not view.done:
        view = queue.wait(job_id, view.version, timeout=timeout)
    return view


def test_jobs_wait_for_the_model_then_run_in_order(pipe, tmp_path):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return pipe

    queue = JobQueue(slow_load, History(tmp_path / "out")).start()
    try:
        assert queue.status.state == LOADING and queue.status.message == "loading model..."
        assert queue.pipeline is None
        first, second = queue.submit(t2v("first", num_inference_steps=10)), queue.submit(t2v("second"))
        assert (first.state, first.position, second.position) == (QUEUED, 1, 2)
        assert [view.id for view in queue.active()] == [first.id, second.id]
        release.set()
        assert queue.wait_ready(30).state == READY and queue.pipeline is pipe

        view = queue.view(first.id)
        while view.step < 1:
            view = queue.wait(first.id, view.version, timeout=30)
        assert (view.state, view.position, view.num_steps) == ("running", 0, 10)
        assert (queue.view(second.id).state, queue.view(second.id).position) == (QUEUED, 1)  # moved up

        steps = []
        view = queue.view(second.id)
        while not view.done:
            view = queue.wait(second.id, view.version, timeout=30)
            steps.append((view.state, view.step, view.num_steps))
        assert steps[-1] == (DONE, 2, 2)
        assert view.entry is not None
        assert queue.view(first.id).state == DONE
        assert queue.view(first.id).finished <= view.finished
    finally:
        queue.close(10)


def test_done_job_is_saved_with_its_settings(pipe, tmp_path, image):
    history = History(tmp_path / "out")
    queue = JobQueue(lambda: pipe, history).start()
    try:
        kept = history.keep_input(image)
        assert Path(kept).parent == history.inputs_dir and history.keep_input(image) == kept
        request = GenerationRequest(
            task="i2v", prompt="x", images=[kept], positions=[0], noise_multipliers=[0.2], **FAST
        )
        view = finish(queue, queue.submit(JobSpec(request, form={"tab": "i2v", "image": kept})).id)
        assert view.state == DONE and view.eta_s is None
        entry = view.entry
        assert entry.video.parent == history.videos_dir and entry.video.suffix == ".mp4"
        settings = json.loads(entry.video.with_suffix(".json").read_text())
        assert settings == read_video_metadata(entry.video) == entry.settings
        assert settings["images"][0]["path"] == kept and settings["seed"] == 3
        frames, _ = read_video(entry.video)
        assert frames.shape == (17, 32, 32, 3)
        assert (entry.task, entry.seed, entry.prompt, entry.form["image"]) == ("i2v", 3, "x", kept)
    finally:
        queue.close(10)

    # A restart: a new History on the same folder lists the entry.
    reopened = History(tmp_path / "out")
    assert [e.id for e in reopened.list()] == [entry.id]
    again = reopened.get(entry.id)
    assert again.settings == entry.settings and again.video == entry.video and again.form == entry.form


def test_cancel_running_and_waiting_jobs(pipe, tmp_path):
    queue = JobQueue(lambda: pipe, History(tmp_path / "out")).start()
    try:
        queue.wait_ready(30)
        long = queue.submit(t2v(num_inference_steps=50))
        waiting = queue.submit(t2v())
        view = queue.view(long.id)
        while view.step < 1:
            view = queue.wait(long.id, view.version, timeout=30)
        assert view.state == "running" and view.num_steps == 50 and view.eta_s is not None
        assert queue.cancel(waiting.id) and queue.view(waiting.id).state == CANCELLED
        assert queue.cancel(long.id)
        pressed = queue.view(long.id)  # until its step ends, it says so (the page shows these words)
        assert pressed.cancelling
        if pressed.state == "running":  # (almost always: 49 steps to go)
            assert views.job_state_text(pressed) == "cancelling after this step"
        view = finish(queue, long.id)
        assert view.state == CANCELLED and view.step < 50 and view.entry is None
        assert not queue.cancel(long.id)  # already over
        assert queue.history.list() == []
        # The worker keeps serving.
        assert finish(queue, queue.submit(t2v()).id).state == DONE
    finally:
        queue.close(10)


def test_failing_job_reports_its_error_and_the_worker_goes_on(pipe, tmp_path):
    queue = JobQueue(lambda: pipe, History(tmp_path / "out")).start()
    try:
        request = GenerationRequest(task="v2v", prompt="x", video=str(tmp_path / "gone.mp4"), positions=[0],
                                    noise_multipliers=[0.0], **FAST)  # fmt: skip
        view = finish(queue, queue.submit(JobSpec(request)).id)
        assert view.state == FAILED and "gone.mp4" in view.error and "does not exist" in view.error
        assert finish(queue, queue.submit(t2v()).id).state == DONE
    finally:
        queue.close(10)


def test_a_model_that_fails_to_load_fails_its_jobs(tmp_path):
    def broken():
        raise OSError("weights not found in /models/x")

    queue = JobQueue(broken, History(tmp_path / "out"))
    waiting = queue.submit(t2v())
    queue.start()
    try:
        status = queue.wait_ready(30)
        assert status.state == FAILED and status.message == "OSError: weights not found in /models/x"
        view = queue.view(waiting.id)
        assert view.state == FAILED and "weights not found" in view.error
        with pytest.raises(RuntimeError, match="the model failed to load: OSError: weights not found"):
            queue.submit(t2v())
    finally:
        queue.close(10)


def test_recipes_run_through_the_queue(pipe, tmp_path):
    history = History(tmp_path / "out")
    queue = JobQueue(lambda: pipe, history).start()
    try:
        source = finish(queue, queue.submit(t2v(num_frames=25)).id).entry.video
        base = dict(task="v2v", prompt="x", video=str(source), **FAST)
        specs = [
            JobSpec(
                GenerationRequest(positions=[0, 1], noise_multipliers=[0.0, 0.3], recipe="extension", **base)
            ),
            JobSpec(GenerationRequest(recipe="completion", **base)),
            JobSpec(GenerationRequest(num_frames=25, recipe="transition", end_video=str(source), **base)),
        ]
        for spec in specs:
            view = finish(queue, queue.submit(spec).id)
            assert view.state == DONE, view.error
            assert view.entry.settings["recipe"] == spec.request.recipe == view.entry.recipe
            assert spec.request.recipe in view.entry.video.name
        assert view.entry.settings["positions"] == [0, 1, 5, 6]  # the transition's own, at 25 frames
    finally:
        queue.close(10)


def test_delete_removes_files_only_inside_the_outputs_folder(pipe, tmp_path, image):
    history = History(tmp_path / "out")
    queue = JobQueue(lambda: pipe, history).start()
    outside = tmp_path / "keep-me.png"
    outside.write_bytes(image.read_bytes())
    try:
        kept = history.keep_input(image)
        shared = [finish(queue, queue.submit(_with_form(kept)).id).entry for _ in range(2)]
        stray = finish(queue, queue.submit(_with_form(str(outside))).id).entry
    finally:
        queue.close(10)
    first, second = shared
    assert history.delete(first.id)
    assert not first.video.exists() and not first.video.with_suffix(".json").exists()
    assert Path(kept).exists()  # still used by the second entry
    assert history.delete(second.id) and not Path(kept).exists()
    assert history.delete(stray.id) and outside.exists()  # never touches files outside outputs/
    assert not history.delete("no-such-id")
    assert history.list() == []


def _with_form(image_path: str) -> JobSpec:
    request = GenerationRequest(
        task="i2v", prompt="x", images=[image_path], positions=[0], noise_multipliers=[0.2], **FAST
    )
    return JobSpec(request, form={"tab": "i2v", "image": image_path})


def test_unfinished_jobs_run_again_after_a_restart(pipe, tmp_path, image):
    """Jobs submitted before a shutdown (the running one and the waiting ones) run after the next start,
    in their order, under their ids; finished and cancelled jobs do not come back."""
    history = History(tmp_path / "out")
    kept = history.keep_input(image)
    i2v = JobSpec(
        GenerationRequest(task="i2v", prompt="kept", images=[kept], positions=[0], noise_multipliers=[0.2], **FAST),
        form={"tab": "i2v", "image": kept, "prompt": "kept"},
    )  # fmt: skip
    queue = JobQueue(lambda: pipe, history).start()
    try:
        done = finish(queue, queue.submit(t2v("done before")).id)
        running = queue.submit(t2v("running", num_inference_steps=50))
        waiting, dropped = queue.submit(i2v), queue.submit(t2v("cancelled"))
        assert queue.cancel(dropped.id)
        view = queue.view(running.id)
        while view.step < 1:
            view = queue.wait(running.id, view.version, timeout=30)
    finally:
        queue.close(10)
    assert queue.view(running.id).state == CANCELLED  # stopped by the shutdown...
    assert [job_id for job_id, *_ in history.pending()] == [running.id, waiting.id]  # ...but still stored

    release = threading.Event()
    restarted = JobQueue(lambda: release.wait(30) and pipe, History(tmp_path / "out")).start()
    try:
        active = restarted.active()
        assert [v.id for v in active] == [running.id, waiting.id]
        assert all(v.restored and v.state == QUEUED for v in active)
        assert [v.prompt for v in active] == ["running", "kept"]
        assert restarted.cancel(running.id)  # the user can still cancel a restored job
        release.set()
        view = finish(restarted, waiting.id)
        assert view.state == DONE and view.entry.form == i2v.form
        assert view.entry.settings["images"][0]["path"] == kept
        assert [e.id for e in restarted.history.list()] == [waiting.id, done.id]
    finally:
        restarted.close(10)
    assert History(tmp_path / "out").pending() == []


def test_a_job_that_keeps_stopping_the_server_is_not_started_again_and_is_recorded_as_failed(
    pipe, tmp_path, image
):
    """Not only a log line: after the restart its id answers "failed" with the reason, History lists it
    (across later restarts too), and its inputs are kept while it is listed."""
    history = History(tmp_path / "out")
    kept = history.keep_input(image)
    spec = JobSpec(
        GenerationRequest(task="i2v", prompt="crashes the server", images=[kept], positions=[0], noise_multipliers=[0.2], **FAST),
        form={"tab": "i2v"},
    )  # fmt: skip
    assert history.remember("crasher", 1.0, spec) and history.remember("fine", 2.0, t2v("fine"))
    for _ in range(2):  # it was running when the server stopped, twice
        history.started("crasher")
    assert [job_id for job_id, *_ in history.pending()] == ["crasher", "fine"]
    queue = JobQueue(lambda: None, history)
    assert [view.id for view in queue.active()] == ["fine"]
    assert [job_id for job_id, *_ in history.pending()] == ["fine"]
    view = queue.view("crasher")
    assert view.state == FAILED and "the server stopped 2 times while this job ran" in view.error
    for _ in range(2):  # the record outlives later restarts
        (failure,) = History(tmp_path / "out").failures()
    assert (failure.id, failure.spec.request.prompt) == ("crasher", "crashes the server")
    assert "not started again" in failure.reason and failure.spec.form == {"tab": "i2v"}
    # A later restart: only the record remains, not a live job. Deleting a finished video made from the
    # same upload keeps the upload: the failed job still names it.
    later = JobQueue(lambda: pipe, history).start()
    try:
        assert later.view("crasher") is None
        done = finish(later, later.submit(_with_form(kept)).id)
    finally:
        later.close(10)
    assert done.state == DONE and history.delete(done.id) and Path(kept).exists()


def test_a_failing_job_is_recorded_in_the_failed_list(pipe, tmp_path):
    history = History(tmp_path / "out")
    queue = JobQueue(lambda: pipe, history).start()
    try:
        gone = tmp_path / "gone.mp4"
        spec = JobSpec(GenerationRequest(task="v2v", prompt="x", video=str(gone), positions=[0], **FAST))
        view = finish(queue, queue.submit(spec).id)
    finally:
        queue.close(10)
    assert view.state == FAILED
    (failure,) = history.failures()
    assert failure.id == view.id and "gone.mp4" in failure.reason and "does not exist" in failure.reason


def test_jobs_with_in_memory_inputs_run_but_are_not_stored(pipe, tmp_path):
    history = History(tmp_path / "out")
    array = np.zeros((32, 32, 3), dtype=np.uint8)
    spec = JobSpec(
        GenerationRequest(
            task="i2v", prompt="x", images=[array], positions=[0], noise_multipliers=[0.2], **FAST
        )
    )
    assert not history.remember("memory", 1.0, spec)
    queue = JobQueue(lambda: pipe, history).start()
    try:
        view = queue.submit(spec)
        assert history.pending() == []
        assert finish(queue, view.id).state == DONE, queue.view(view.id).error
    finally:
        queue.close(10)


def test_stored_spec_round_trips_and_unreadable_rows_are_dropped(tmp_path):
    spec = JobSpec(
        GenerationRequest(task="v2v", prompt="p", video="/a/b.mp4", positions=[0, 1], noise_multipliers=[0.0, 0.3],
                          lora_alpha=1.2, cfg=4.0, seed=9, recipe="transition", end_video="/a/c.mp4"),
        form={"tab": "v2v", "recipe": "transition"},
    )  # fmt: skip
    history = History(tmp_path / "out")
    assert history.remember("j1", 1.0, spec)
    ((job_id, created, again, starts),) = history.pending()
    assert (job_id, created, starts) == ("j1", 1.0, 0)
    assert again.request == GenerationRequest(
        task="v2v", prompt="p", video="/a/b.mp4", positions=(0, 1), noise_multipliers=(0.0, 0.3),
        lora_alpha=1.2, cfg=4.0, seed=9, recipe="transition", end_video="/a/c.mp4",
    )  # fmt: skip
    assert again.form == spec.form
    # A row from another version of pusa (an unknown request field) is dropped, not fatal.
    with sqlite3.connect(history.database) as db:
        db.execute(
            "UPDATE pending SET spec = ? WHERE id = 'j1'", ('{"request": {"task": "t2v", "warp": 1}}',)
        )
    assert history.pending() == [] and History(tmp_path / "out").pending() == []


def test_deleting_an_entry_keeps_inputs_a_waiting_job_needs(pipe, tmp_path, image):
    history = History(tmp_path / "out")
    kept = history.keep_input(image)
    queue = JobQueue(lambda: pipe, history).start()
    try:
        entry = finish(queue, queue.submit(_with_form(kept)).id).entry
    finally:
        queue.close(10)
    assert history.remember("waiting", 5.0, _with_form(kept))  # e.g. queued again, not run yet
    assert history.delete(entry.id) and Path(kept).exists()


def test_a_database_that_cannot_record_pending_jobs_does_not_stop_the_worker(pipe, tmp_path, caplog):
    history = History(tmp_path / "out")
    with sqlite3.connect(history.database) as db:
        db.execute("DROP TABLE pending")  # e.g. a damaged or read-only database: every write fails
    queue = JobQueue(lambda: pipe, history).start()
    try:
        assert finish(queue, queue.submit(t2v()).id).state == DONE
        assert finish(queue, queue.submit(t2v("again")).id).state == DONE
    finally:
        queue.close(10)
    assert "could not record a pending job" in caplog.text
    assert len(history.list()) == 2
