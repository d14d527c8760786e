"""Ray workers on this machine (pusa-tiny, CPU): jobs per minute with the embedded worker, 1 and 2 Ray workers;
dispatch overhead per job; time to recover a killed worker's job. Prints tables.

    PYTHONPATH=src python benchmarks/cluster.py --jobs 10 [--groups]

On a 2-core machine 2 workers cannot be twice as fast: each worker gets one core (--worker-cpus 1, one
torch thread) where the embedded worker uses both; the ratio says how well jobs overlap, not how a
cluster of GPUs scales.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from pusa.request import GenerationRequest
from pusa.serving.cluster import ClusterQueue, ClusterSpec
from pusa.serving.history import History, JobSpec
from pusa.serving.queue import DONE, READY, RUNNING, JobQueue


def spec(i: int, steps: int) -> JobSpec:
    return JobSpec(GenerationRequest(task="t2v", prompt=f"a red circle slides to the left {i}", seed=i,
                                     num_inference_steps=steps))  # fmt: skip


def finish(queue, job_id: str):
    view = queue.view(job_id)
    while not view.done:
        view = queue.wait(job_id, view.version, timeout=5)
    return view


def throughput(queue, jobs: int, steps: int) -> float:
    """Jobs per minute, first submit to last video saved."""
    started = time.perf_counter()
    ids = [queue.submit(spec(i, steps)).id for i in range(jobs)]
    views = [finish(queue, job_id) for job_id in ids]
    assert all(v.state == DONE for v in views), [v.error for v in views]
    return jobs / (time.perf_counter() - started) * 60


def dispatch_overhead_ms(queue: ClusterQueue, jobs: int, steps: int) -> float:
    """Median of (a remote generate's wall time) - (the worker's own generate time, settings' elapsed_s):
    shipping the request, streaming progress, bringing the frames back."""
    remote = queue.remotes[0]
    overheads = []
    for i in range(jobs):
        started = time.perf_counter()
        out = remote.generate(spec(i, steps).request, lambda info: True)
        overheads.append((time.perf_counter() - started - out.settings["elapsed_s"]) * 1000)
    return statistics.median(overheads)


def recovery(queue: ClusterQueue, steps: int, rank: int = 0) -> dict[str, float]:
    """Kill the worker of a running job (`rank` > 0: that rank of the worker's parallel group); seconds until
    the job runs again elsewhere and until it is done."""
    job = queue.submit(spec(999, steps))
    view = queue.view(job.id)
    while not (view.state == RUNNING and view.step >= 1):
        view = queue.wait(job.id, view.version, timeout=5)
    worker = queue.worker_of(job.id)
    killed = time.perf_counter()
    os.kill(worker.info["ranks"][rank], signal.SIGKILL)
    restarted = None
    while not view.done:
        view = queue.wait(job.id, view.version, timeout=5)
        if restarted is None and len(queue.ran_on.get(job.id, [])) == 2:
            restarted = time.perf_counter()
    done = time.perf_counter()
    assert view.state == DONE, view.error
    return {"rerun_s": (restarted or done) - killed, "done_s": done - killed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="steps per job (pusa-tiny's own: 10)")
    parser.add_argument(
        "--groups", action="store_true",
        help="also 1 and 2 workers that are each a 2-process context-parallel group (--parallel 2), and a "
        "group rank killed mid-job",
    )  # fmt: skip
    args = parser.parse_args()
    outputs = Path(tempfile.mkdtemp(prefix="pusa-cluster-bench-"))
    rows = []

    import torch

    from pusa.pipeline import PusaPipeline

    default_threads = torch.get_num_threads()
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        queue = JobQueue(
            lambda: PusaPipeline.from_model("pusa-tiny"), History(outputs / f"embedded{threads}")
        )
        queue.start()
        assert queue.wait_ready(300).state == READY
        rows.append(
            (f"embedded worker ({threads} torch thread(s))", throughput(queue, args.jobs, args.steps))
        )
        print(rows[-1], flush=True)
        queue.close(30)
    torch.set_num_threads(default_threads)

    overhead = recovered = None
    for workers in (1, 2):
        queue = ClusterQueue(ClusterSpec(workers=workers), History(outputs / f"ray{workers}")).start()
        started = time.perf_counter()
        assert queue.wait_ready(300).state == READY
        load = time.perf_counter() - started
        rows.append(
            (
                f"{workers} Ray worker(s), 1 core each (ready in {load:.0f} s)",
                throughput(queue, args.jobs, args.steps),
            )
        )
        print(rows[-1], flush=True)
        if workers == 1:
            overhead = dispatch_overhead_ms(queue, args.jobs, args.steps)
            print("overhead ms", overhead, flush=True)
        else:
            recovered = recovery(queue, 50)
            print("recovery", recovered, flush=True)
        queue.close(30)

    group_recovered = None
    for workers in (1, 2) if args.groups else ():
        queue = ClusterQueue(ClusterSpec(workers=workers, parallel=2), History(outputs / f"group{workers}"))
        started = time.perf_counter()
        assert queue.start().wait_ready(300).state == READY
        while len(queue.ready) < workers:
            time.sleep(0.2)
        load = time.perf_counter() - started
        name = f"{workers} Ray worker(s) of 2 processes (--parallel 2), 1 core each (ready in {load:.0f} s)"
        rows.append((name, throughput(queue, args.jobs, args.steps)))
        print(rows[-1], flush=True)
        if workers == 2:
            group_recovered = recovery(queue, 50, rank=1)
            print("group recovery", group_recovered, flush=True)
        queue.close(30)

    print(
        f"\npusa-tiny t2v, 17 frames 64x64, {args.steps} steps, {args.jobs} jobs, {os.cpu_count()} CPU cores\n"
    )
    print("| worker set-up | jobs/min |\n|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")
    print(f"\n2 Ray workers / 1 Ray worker: {rows[3][1] / rows[2][1]:.2f}x")
    print(f"dispatch overhead per job (median, remote generate wall - worker's generate): {overhead:.0f} ms")
    print(
        f"killed worker (50-step job killed after its first step): run again on the other worker after "
        f"{recovered['rerun_s']:.2f} s, done {recovered['done_s']:.2f} s after the kill"
    )
    if group_recovered is not None:
        print(
            f"killed rank 1 of a 2-process worker (50-step job, after its first step): the worker ends, the "
            f"job runs again on the other worker after {group_recovered['rerun_s']:.2f} s, done "
            f"{group_recovered['done_s']:.2f} s after the kill"
        )


if __name__ == "__main__":
    main()
