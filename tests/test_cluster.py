"""Many videos on many workers: a local Ray cluster with 2 CPU workers on pusa-tiny behind the studio's one
queue and history. 20 jobs from 2 clients, cancel of a waiting and a running job, and a worker killed
mid-job whose job completes on the other worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytest.importorskip("ray")

from pusa.request import GenerationRequest
from pusa.serving.cluster import ClusterQueue, ClusterSpec
from pusa.serving.history import History, JobSpec
from pusa.serving.queue import CANCELLED, DONE, READY, RUNNING

# a local Ray cluster of 2 workers and 20+ jobs, and 3 studio subprocesses each with its own Ray
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(local_ray, tmp_path_factory):
    queue = ClusterQueue(
        ClusterSpec(workers=2, model="pusa-tiny"), History(tmp_path_factory.mktemp("outputs"))
    )
    queue.start()
    try:
        assert queue.wait_ready(300).state == READY
        yield queue
    finally:
        queue.close(timeout=30)


def spec(prompt: str, seed: int, steps: int = 2) -> JobSpec:
    request = GenerationRequest(task="t2v", prompt=prompt, seed=seed, num_inference_steps=steps)
    return JobSpec(request, form={"tab": "t2v", "prompt": prompt})


def finish(queue, job_id: str, timeout: float = 300):
    view = queue.view(job_id)
    deadline = time.monotonic() + timeout
    while not view.done and time.monotonic() < deadline:
        view = queue.wait(job_id, view.version, timeout=5)
    return view


def wait_running(queue, job_id: str, timeout: float = 120):
    """The job's view once it has finished a step on a worker (progress streamed back)."""
    view = queue.view(job_id)
    deadline = time.monotonic() + timeout
    while not (view.state == RUNNING and view.step >= 1) and not view.done and time.monotonic() < deadline:
        view = queue.wait(job_id, view.version, timeout=5)
    return view


def test_twenty_jobs_from_two_clients_all_make_their_videos(cluster):
    results, errors = {}, []

    def client(number: int) -> None:
        try:
            ids = [cluster.submit(spec(f"a red circle {number}-{i}", 100 * number + i)).id for i in range(10)]
            for job_id in ids:
                results[job_id] = finish(cluster, job_id)
        except Exception as error:
            errors.append(error)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert not errors
    assert len(results) == 20
    assert all(view.state == DONE for view in results.values()), [v.error for v in results.values()]
    rows = {entry.id: entry for entry in cluster.history.list()}
    for job_id, view in results.items():
        assert job_id in rows
        video = rows[job_id].video
        assert video.is_file() and cluster.history.inside(video) and video.with_suffix(".json").is_file()
        assert rows[job_id].settings["seed"] == view.seed
    assert {index for job_id in results for index in cluster.ran_on[job_id]} == {
        0,
        1,
    }  # both workers ran jobs


def test_cancel_a_waiting_and_a_running_job(cluster):
    first, second, waiting = (cluster.submit(spec(f"slow {i}", i, steps=50)) for i in range(3))
    assert cluster.cancel(waiting.id)
    assert cluster.view(waiting.id).state == CANCELLED
    running = wait_running(cluster, first.id)
    assert running.state == RUNNING
    assert cluster.cancel(first.id)
    view = finish(cluster, first.id)
    assert view.state == CANCELLED and "cancelled after step" in view.phase
    cluster.cancel(second.id)
    assert finish(cluster, second.id).state in (CANCELLED, DONE)
    assert waiting.id not in cluster.ran_on  # it never reached a worker


def test_a_worker_killed_mid_job_has_its_job_completed_by_the_other(cluster):
    job = cluster.submit(spec("a blue square bounces", 7, steps=50))
    assert wait_running(cluster, job.id).state == RUNNING
    worker = cluster.worker_of(job.id)
    os.kill(worker.info["pid"], signal.SIGKILL)
    view = finish(cluster, job.id)
    assert view.state == DONE, view.error
    assert view.entry.video.is_file()
    assert cluster.ran_on[job.id] == [worker.index, 1 - worker.index]
    deadline = time.monotonic() + 180  # Ray restarts the killed worker; it loads the model and serves again
    while worker.index not in cluster.rejoined and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.index in cluster.rejoined and not worker.lost
    again = finish(cluster, cluster.submit(spec("after the restart", 8)).id)
    assert again.state == DONE


@pytest.mark.parametrize(
    "flags",
    [("--workers", "2"), ("--workers", "1", "--parallel", "2"), ("--workers", "1", "--cfg-parallel")],
    ids=["2-workers", "1-group-of-2", "1-cfg-group"],
)
def test_studio_with_ray_workers_streams_progress_and_stops_cleanly(tmp_path, flags):
    """`pusa serve --workers 2` (and one worker that is a 2-process context-parallel group): a client's
    job shows the remote worker's steps, its video lands in the studio's outputs, and a SIGTERM stops the
    studio, its workers (and their ranks) and Ray."""
    gradio_client = pytest.importorskip("gradio_client")
    from helpers import Studio, free_port

    studio = Studio(tmp_path / "outputs", free_port(), tmp_path / "studio.log", flags)
    studio.start(timeout=120)
    try:
        client = gradio_client.Client(studio.url, verbose=False, download_files=False)
        job = client.submit("a red circle slides to the left", seed=3, steps=10, api_name="/text_to_video")
        job.result(timeout=240)
        statuses = [o[2] for o in job.outputs() if isinstance(o, (list, tuple)) and len(o) == 3]
        steps_seen = [s for s in statuses if s.startswith("Step ") and not s.startswith("Step 10/10")]
        assert steps_seen, statuses  # the remote worker's progress reached the client before the end
        entries = History(tmp_path / "outputs").list()
        assert len(entries) == 1 and entries[0].video.is_file() and entries[0].seed == 3
        parallel = entries[0].settings["acceleration"].get("parallel") or {}
        grouped = "--parallel" in flags or "--cfg-parallel" in flags
        assert parallel.get("world_size", 1) == (2 if grouped else 1)
        assert parallel.get("mode") == (
            "cfg" if "--cfg-parallel" in flags else "context" if grouped else None
        )
        # the studio's history says which worker made it (and how, for a group)
        from pusa.app.views import history_summary_html, made_on

        summary = history_summary_html(entries[0])
        assert f"worker {entries[0].settings['worker']['index']} on " in summary
        assert ("2 processes (context parallel)" in summary) == ("--parallel" in flags)
        assert ("2 processes (CFG-parallel)" in summary) == ("--cfg-parallel" in flags)
        assert made_on({"seed": 3, "acceleration": {}}) == ""  # the embedded worker's videos: nothing
    finally:
        studio.stop()
    assert studio.process.returncode is not None
    assert "closing server" in studio.log.read_text()
