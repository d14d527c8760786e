"""The Ray actor behind each of the studio's cluster workers (`ray.remote(PusaWorker)`, started by
`serving.cluster.ClusterQueue`): one pipeline, or one parallel group, loaded once in its own process,
running one job at a time and streaming its steps back. Imports no torch (nor ray) at module level.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .shipped_files import with_local_files

log = logging.getLogger(__name__)


class PusaWorker:
    """A Ray actor (`ray.remote(PusaWorker)`): one pipeline, loaded once, running one job at a time."""

    def __init__(
        self,
        model: str,
        lora: str | None,
        device: str,
        dtype: str | None,
        threads: int,
        parallel: int = 1,
        cfg_parallel: bool = False,
    ) -> None:
        import torch

        from ..pipeline import PusaPipeline

        torch.set_num_threads(max(1, threads))
        torch_dtype = getattr(torch, dtype or ("float32" if device == "cpu" else "bfloat16"))
        self.runner = None  # this worker's parallel group (`ParallelRunner`), if it has one
        if parallel > 1 or cfg_parallel:
            from ..parallel.launch import start_ranks

            # Ray made this worker's GPUs cuda:0..M-1 here (CUDA_VISIBLE_DEVICES); the ranks inherit it
            self.runner = start_ranks(
                parallel, cfg_parallel, model, lora or "auto", device, torch_dtype, {}, threads=max(1, threads)
            )  # fmt: skip
            self.pipe = self.runner.pipe
        else:
            self.pipe = PusaPipeline.from_model(model, lora=lora or "auto", device=device, dtype=torch_dtype)
        self._cancel: dict[str, threading.Event] = {}
        self._busy = threading.Lock()  # held while a job runs (`close` waits for it)
        self._inputs = Path(tempfile.mkdtemp(prefix="pusa-worker-inputs-"))

    def info(self) -> dict[str, Any]:
        import socket

        import ray

        runner = self.runner
        return {
            "identity": self.pipe.identity,
            "limits": self.pipe.limits,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": ray.get_runtime_context().get_node_id(),  # the Ray machine (node) it runs on
            # the processes of this worker: its own, then its parallel group's other ranks
            "ranks": [os.getpid()] + (runner.follower_pids if runner is not None else []),
            "parallel": None if runner is None else {"mode": runner.mode, "world_size": runner.world_size},
        }

    def cancel(self, token: str) -> bool:
        event = self._cancel.get(token)
        if event is not None:
            event.set()
        return event is not None

    def close(self, timeout: float = 20.0) -> bool:
        """Stop this worker's parallel group's other ranks (after a running job's next step). False if a
        job still held the group after `timeout` (killing the worker then ends its ranks: they follow
        their parent)."""
        for event in list(self._cancel.values()):
            event.set()
        if not self._busy.acquire(timeout=timeout):
            return False
        try:
            if self.runner is not None:
                self.runner.close()
                self.runner = None
            return True
        finally:
            self._busy.release()

    def run(self, token: str, request: Any, files: dict[str, bytes]):
        """Yields ("step", step, num_steps) after each step, then ("done", frames, settings),
        ("cancelled", message) or ("failed", message, is_bad_input)."""
        import queue as queue_module

        from ..sampling import Cancelled

        event = self._cancel.setdefault(token, threading.Event())
        folder = self._inputs / token
        folder.mkdir(parents=True, exist_ok=True)
        local = {}
        for key, data in files.items():
            path = folder / key
            path.write_bytes(data)
            local[key] = str(path)
        request = with_local_files(request, local)
        steps: queue_module.Queue = queue_module.Queue()
        outcome: list[tuple] = []

        def on_step(info: Any) -> bool:
            steps.put(("step", info.step + 1, info.num_steps))
            return not event.is_set()

        def work() -> None:
            try:
                with self._busy:
                    out = self.pipe.generate(request, on_step)
                outcome.append(("done", out.frames, out.settings))
            except Cancelled as error:
                outcome.append(("cancelled", str(error)))
            except Exception as error:
                if self.runner is not None and _ranks_lost(error):
                    # a rank of this worker's group died: the group cannot run another job. End this
                    # process: the job goes back to the queue and Ray starts this worker (and a group) again
                    log.error("worker pid %d: %s; exiting so that Ray restarts it", os.getpid(), error)
                    logging.shutdown()
                    os._exit(75)
                # reported on the job's page, as with the embedded worker
                bad_input = isinstance(error, ValueError)
                outcome.append(
                    ("failed", str(error) if bad_input else f"{type(error).__name__}: {error}", bad_input)
                )
            finally:
                steps.put(None)

        thread = threading.Thread(target=work, name=f"pusa-job-{token}", daemon=True)
        thread.start()
        try:
            while (item := steps.get()) is not None:
                yield item
            thread.join()
            yield outcome[0]
        finally:
            self._cancel.pop(token, None)
            for path in folder.glob("*"):
                path.unlink(missing_ok=True)
            folder.rmdir()


def _ranks_lost(error: BaseException) -> bool:
    from ..parallel.launch import RanksLost

    return isinstance(error, RanksLost)
