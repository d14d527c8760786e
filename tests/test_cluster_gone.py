"""A Ray worker that Ray cannot bring back. Its own module (test_cluster.py's workers hold the CPU slots of
the shared local Ray runtime until that module ends); `max_restarts=0` is the worker's own option, so it
runs on that shared runtime (conftest.py's `local_ray`)."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("ray")

from pusa.serving.cluster import ClusterQueue, ClusterSpec
from pusa.serving.history import History
from pusa.serving.queue import READY, RUNNING
from test_cluster import spec, wait_running

pytestmark = pytest.mark.slow  # a Ray worker that loads the model, runs and is killed


def test_when_every_worker_is_gone_for_good_the_studio_says_so_and_keeps_the_jobs(local_ray, tmp_path):
    """A worker Ray cannot restart (its restarts used up; none allowed here): with no worker left the
    status names what happened, new jobs are refused with it, and the job it ran waits, stored, for the
    next start."""
    from pusa.serving.queue import FAILED, QUEUED

    history = History(tmp_path / "outputs")
    queue = ClusterQueue(ClusterSpec(workers=1, model="pusa-tiny", max_restarts=0), history).start()
    try:
        assert queue.wait_ready(300).state == READY
        job = queue.submit(spec("a red circle", 1, steps=50))
        assert wait_running(queue, job.id).state == RUNNING
        os.kill(queue.remotes[0].info["pid"], signal.SIGKILL)
        status = queue.wait_ready(0)
        deadline = time.monotonic() + 120
        while status.state != FAILED and time.monotonic() < deadline:
            time.sleep(0.25)
            status = queue.status
        assert status.state == FAILED
        assert status.message.startswith("all 1 Ray workers are gone (worker 0: ")
        assert "the waiting jobs are kept" in status.message
        assert queue.view(job.id).state == QUEUED  # back in line, not failed
        with pytest.raises(RuntimeError, match="all 1 Ray workers are gone"):
            queue.submit(spec("another", 2))
    finally:
        queue.close(timeout=30)
    assert [pending[0] for pending in History(tmp_path / "outputs").pending()] == [job.id]
