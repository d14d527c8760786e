"""50 short jobs from 3 concurrent clients on the built-in model, with a server restart in the middle:
every job the server acknowledged either produced its video or is recorded as failed with a reason;
none vanishes. (`benchmarks/soak.py` runs the same with RSS per round: memory is measured there, not here.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from helpers import Studio, free_port
from pusa.serving.history import History

gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow  # 50 jobs through a studio subprocess, restarted midway

JOBS, CLIENTS, RESTART_AFTER = 50, 3, 20
FAST = dict(steps=2, width=64, height=64)


def submit_all(studio: Studio, jobs: int, clients: int, restart_after: int) -> tuple[set, list[str]]:
    """Run `jobs` text-to-video jobs from `clients` threads; restart the server once `restart_after` have
    ended. Returns (acknowledged job ids, the clients' errors)."""
    from gradio_client import Client

    lock, acknowledged, errors, ended = threading.Lock(), set(), [], [0]
    numbers = iter(range(jobs))
    restarted = threading.Event()
    pause = threading.Event()
    pause.set()

    def client_loop() -> None:
        client = None
        while True:
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            pause.wait()
            try:
                client = client or Client(studio.url, verbose=False, download_files=False)
                job = client.submit(f"a red circle {number}", seed=number, **FAST, api_name="/text_to_video")
                deadline = time.monotonic() + 60  # a stream the restart cut may never end on its own
                while not job.done() and time.monotonic() < deadline:
                    time.sleep(0.05)
                for output in job.outputs():  # each status carries "... · job <id>"
                    status = output[2] if isinstance(output, (list, tuple)) and len(output) == 3 else ""
                    if isinstance(status, str) and "· job " in status:
                        with lock:
                            acknowledged.add(status.rsplit("job ", 1)[1])
                job.result(timeout=1)
            except Exception as error:  # the restart cuts streams: the job itself must survive
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                client = None
            with lock:
                ended[0] += 1
                restart = ended[0] >= restart_after and not restarted.is_set()
                if restart:
                    restarted.set()
                    pause.clear()
            if restart:
                studio.stop()
                studio.start()
                pause.set()

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return acknowledged, errors


def test_fifty_jobs_from_three_clients_and_a_restart_lose_nothing(tmp_path):
    studio = Studio(tmp_path / "outputs", free_port(), tmp_path / "studio.log")
    try:
        studio.start()
        acknowledged, errors = submit_all(studio, JOBS, CLIENTS, RESTART_AFTER)
        # The jobs the restart interrupted run again after it: wait until none is left pending.
        history = History(tmp_path / "outputs")
        from gradio_client import Client

        client = Client(studio.url, verbose=False)
        deadline = time.monotonic() + 120
        while client.predict(api_name="/jobs") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.predict(api_name="/jobs") == []
    finally:
        studio.stop()
    done = {entry.id for entry in history.list()}
    failed = {failure.id: failure.reason for failure in history.failures()}
    assert len(acknowledged) >= JOBS - CLIENTS  # at most one per client was cut before the server named it
    missing = acknowledged - done - set(failed)
    assert not missing, f"jobs that vanished: {sorted(missing)}; client errors: {errors[:5]}"
    assert all(reason for reason in failed.values())
    assert all(Path(entry.video).is_file() for entry in history.list())
    assert history.pending() == []
