"""A SIGTERM (docker stop, systemd) stops `pusa serve` as cleanly as Ctrl-C: the running job stays stored
with its start taken back, so it does not count as a job that crashed the server, and the next start runs
it to the end."""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers import Studio, free_port
from pusa.request import GenerationRequest
from pusa.serving.history import History, JobSpec

pytestmark = pytest.mark.slow  # two studio starts and a ~6 s job on the built-in model

JOB_ID = "sigterm-job"


def starts_of(history: History) -> dict[str, int]:
    """Stored jobs that have not finished -> how many times a worker started each (history.sqlite)."""
    return {job_id: starts for job_id, _, _, starts in history.pending()}


def wait_for(condition, timeout: float) -> bool:
    """Whether `condition()` came true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigterm_keeps_the_running_job_stored_unstarted_and_a_restart_finishes_it(tmp_path):
    outputs = tmp_path / "outputs"
    history = History(outputs)
    # A job stored as the studio stores a submitted one (the restart path runs it at once, and no client
    # stream is cut by the stop): a long video of 81 frames at 25 steps, ~6 s on the built-in model (more
    # on a busy machine), so it is still running when the signal comes.
    request = GenerationRequest(
        task="long", prompt="a red circle", seed=5, num_inference_steps=25, num_frames=81
    )
    assert history.remember(JOB_ID, time.time(), JobSpec(request, form={"tab": "t2v"}))
    studio = Studio(outputs, free_port(), tmp_path / "studio.log")
    try:
        studio.start(timeout=180)
        assert studio.process is not None
        assert wait_for(lambda: starts_of(history).get(JOB_ID) == 1, 120), "the stored job did not start"
        time.sleep(0.5)  # into its steps
        os.kill(studio.process.pid, signal.SIGTERM)
        returncode = studio.process.wait(60)
    finally:
        studio.stop()
    log = studio.log.read_text()
    assert returncode == 0, log[-3000:]  # stopped by the studio, not killed by the signal
    assert not history.list(), "the job finished before the signal: make it longer"
    # still stored, its start taken back (as Ctrl-C leaves it): a later crash is its first, not its second
    assert starts_of(history) == {JOB_ID: 0}, log[-3000:]
    assert not history.failures()

    restarted = Studio(outputs, free_port(), tmp_path / "studio.log")
    try:
        restarted.start(timeout=180)
        finished = wait_for(lambda: not history.pending(), 300)
        assert finished, (
            f"not finished after the restart: {starts_of(history)}\n{restarted.log.read_text()[-3000:]}"
        )
    finally:
        restarted.stop()
    entries = history.list()
    assert [entry.id for entry in entries] == [JOB_ID] and entries[0].video.is_file()
    assert entries[0].seed == 5 and not history.failures()
