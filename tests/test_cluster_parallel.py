"""`pusa serve --workers 2 --parallel 2`: a local Ray cluster whose 2 workers are each a 2-process
context-parallel group (gloo, pusa-tiny, CPU) behind the studio's one queue and history.

Jobs from 2 clients all make their videos, the same as the 1-process pipeline's; a group rank killed
mid-job takes its worker down and the job completes on the other worker while Ray restarts the first (a
new group); cancel reaches a group; closing the queue stops every process it started."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("ray")

from helpers import random_pixels
from pusa.request import GenerationRequest
from pusa.serving.cluster import ClusterQueue, ClusterSpec, check_cluster
from pusa.serving.history import History, JobSpec
from pusa.serving.queue import CANCELLED, DONE, READY, RUNNING

pytestmark = pytest.mark.slow  # a Ray cluster of 2 workers of 2 processes each, each loading the model

SPEC = ClusterSpec(workers=2, model="pusa-tiny", parallel=2)
# 17 frames at 64x64 on pusa-tiny: 5 latent frames of 16 tokens; rank 1's half starts at token 40, inside
# latent frame 2.
T2V = GenerationRequest(task="t2v", prompt="a red circle slides to the left", seed=3, num_inference_steps=3)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def cluster(local_ray, tmp_path_factory):
    queue = ClusterQueue(SPEC, History(tmp_path_factory.mktemp("outputs")))
    queue.start()
    try:
        assert queue.wait_ready(400).state == READY  # the first worker is up
        deadline = time.monotonic() + 400
        while len(queue.ready) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)  # ...and the second
        yield queue
    finally:
        queue.close(timeout=30)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("inputs") / "first.png"
    Image.fromarray(random_pixels((64, 64, 3), seed=1)).save(path)
    return str(path)


def finish(queue, job_id: str, timeout: float = 400):
    view = queue.view(job_id)
    deadline = time.monotonic() + timeout
    while not view.done and time.monotonic() < deadline:
        view = queue.wait(job_id, view.version, timeout=5)
    return view


def wait_running(queue, job_id: str, timeout: float = 200):
    view = queue.view(job_id)
    deadline = time.monotonic() + timeout
    while not (view.state == RUNNING and view.step >= 1) and not view.done and time.monotonic() < deadline:
        view = queue.wait(job_id, view.version, timeout=5)
    return view


def test_every_worker_is_a_two_process_group(cluster):
    assert "on 2 worker(s) of 2 processes each" in cluster.status.message
    for remote in cluster.remotes:
        assert remote.info["parallel"] == {"mode": "context", "world_size": 2}
        ranks = remote.info["ranks"]
        assert len(ranks) == 2 and ranks[0] == remote.info["pid"] and all(alive(pid) for pid in ranks)


def test_jobs_from_two_clients_make_the_one_process_videos(cluster, image):
    from pusa.pipeline import PusaPipeline

    i2v = GenerationRequest(
        task="i2v", prompt="it moves", images=[image], positions=[0], noise_multipliers=[0.2], seed=5,
        num_inference_steps=3,
    )  # fmt: skip
    requests = {
        0: [replace(T2V, seed=s) for s in (1, 2, 3)],
        1: [i2v, replace(i2v, seed=6), replace(T2V, seed=4)],
    }
    results, errors = {}, []

    def client(number: int) -> None:
        try:
            ids = [cluster.submit(JobSpec(r, form={"tab": r.task})).id for r in requests[number]]
            for job_id, request in zip(ids, requests[number], strict=True):
                results[job_id] = (request, finish(cluster, job_id))
        except Exception as error:
            errors.append(error)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert not errors
    assert len(results) == 6
    assert all(view.state == DONE for _, view in results.values()), [v.error for _, v in results.values()]
    rows = {entry.id: entry for entry in cluster.history.list()}
    for job_id, (request, _) in results.items():
        entry = rows[job_id]
        assert entry.video.is_file() and cluster.history.inside(entry.video)
        assert entry.settings["seed"] == request.seed
        parallel = entry.settings["acceleration"]["parallel"]
        assert (parallel["mode"], parallel["world_size"], parallel["attention"]) == ("context", 2, "ulysses")
    assert {index for job_id in results for index in cluster.ran_on[job_id]} == {0, 1}

    # the groups' frames against one process's (the queue is idle: nothing else runs on the workers)
    single = PusaPipeline.from_model("pusa-tiny")
    for remote in cluster.remotes:
        for request in (T2V, i2v):
            got = remote.generate(request).frames.astype(int)
            want = single.generate(request).frames.astype(int)
            assert got.shape == want.shape == (17, 64, 64, 3)
            assert np.abs(got - want).max() <= 1  # float32 rounding of the split matrix products
            assert (got == want).mean() > 0.99


def test_cancel_of_a_waiting_and_a_running_job_on_a_group(cluster):
    first, second, waiting = (
        cluster.submit(JobSpec(replace(T2V, seed=i, num_inference_steps=50))) for i in range(3)
    )
    assert cluster.cancel(waiting.id) and cluster.view(waiting.id).state == CANCELLED
    assert wait_running(cluster, first.id).state == RUNNING
    worker = cluster.worker_of(first.id)
    assert cluster.cancel(first.id)
    view = finish(cluster, first.id)
    assert view.state == CANCELLED and "cancelled after step" in view.phase
    cluster.cancel(second.id)
    assert finish(cluster, second.id).state in (CANCELLED, DONE)
    assert waiting.id not in cluster.ran_on
    # the cancelled group runs the next job (its ranks are back in step with each other)
    out = worker.generate(T2V)
    assert out.frames.shape == (17, 64, 64, 3)


def test_a_group_rank_killed_mid_job_hands_the_job_to_the_other_worker(cluster):
    job = cluster.submit(JobSpec(replace(T2V, seed=11, num_inference_steps=50)))
    assert wait_running(cluster, job.id).state == RUNNING
    worker = cluster.worker_of(job.id)
    actor_pid, follower = worker.info["ranks"]
    os.kill(follower, signal.SIGKILL)  # as an out-of-memory kill of one rank would
    view = finish(cluster, job.id)
    assert view.state == DONE, view.error
    assert view.entry.video.is_file()
    assert cluster.ran_on[job.id] == [worker.index, 1 - worker.index]
    deadline = time.monotonic() + 300  # Ray restarts the worker: a new process and a new group
    while worker.index not in cluster.rejoined and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.index in cluster.rejoined and not worker.lost
    assert not alive(actor_pid)  # the group's rank 0 ended itself with its group
    new_ranks = worker.info["ranks"]
    assert len(new_ranks) == 2 and actor_pid not in new_ranks and all(alive(pid) for pid in new_ranks)
    again = finish(cluster, cluster.submit(JobSpec(replace(T2V, seed=12))).id)
    assert again.state == DONE, again.error


def test_a_worker_no_machine_can_hold_is_refused_by_name(cluster):
    with pytest.raises(
        ValueError, match=r"needs 2 CPU cores .* and 2 GPU\(s\) \(--device cuda\) on one machine"
    ):
        check_cluster(replace(SPEC, device="cuda"))
    with pytest.raises(
        ValueError, match=r"--parallel / --cfg-parallel\) needs 800 CPU cores \(--worker-cpus 100 each\)"
    ):
        check_cluster(replace(SPEC, parallel=8, cpus_per_worker=100.0))
    check_cluster(SPEC)  # this cluster holds a worker of its own spec


def test_closing_stops_every_process_of_every_group(cluster):
    pids = [pid for remote in cluster.remotes for pid in remote.info["ranks"]]
    assert len(pids) == 4
    cluster.close(timeout=30)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not any(alive(pid) for pid in pids)
