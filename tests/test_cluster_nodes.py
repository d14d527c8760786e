"""`pusa serve --ray-address`: a studio joining a running Ray cluster of two machines, simulated by two Ray
nodes on this machine (`ray.cluster_utils.Cluster`, both on 127.0.0.1, one CPU each): the README's
two-machine set-up with the machines' addresses replaced by the loopback one.

Ray turns a loopback cluster address into the machine's network address unless told it is a one-machine
set-up (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`): the studio process gets that variable, and this process
the same setting, so that everything stays on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module", autouse=True)
def no_shared_ray():
    """This module cannot use conftest.py's shared local Ray runtime: it builds clusters of two nodes and
    joins them by address, and a process is connected to one Ray cluster at a time. So the shared runtime
    is stopped first (the next module that asks for `local_ray` starts it again)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # as LOOPBACK_ONLY does for the studio process
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        ray.init(address=cluster.address)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        ray.shutdown()
        assert len(nodes) == 2
        yield cluster.address, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved


@pytest.mark.slow  # a Ray cluster of 2 nodes and a studio subprocess with a worker on each
def test_a_studio_with_a_worker_on_each_machine(two_nodes, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from helpers import Studio, free_port
    from pusa.serving.history import History

    address, nodes = two_nodes
    flags = ("--ray-address", address)  # --workers auto: one per machine here (one CPU each)
    studio = Studio(tmp_path / "outputs", free_port(), tmp_path / "studio.log", flags, env=LOOPBACK_ONLY)
    studio.start(timeout=120)
    try:
        client = gradio_client.Client(studio.url, verbose=False, download_files=False)
        jobs = [
            client.submit(f"a red circle {i}", seed=i, steps=4, api_name="/text_to_video") for i in range(6)
        ]
        for job in jobs:
            job.result(timeout=300)
        entries = History(tmp_path / "outputs").list()
        assert sorted(e.seed for e in entries) == list(range(6))
        assert all(e.video.is_file() for e in entries)
        # each machine's worker made videos (one CPU each: one worker per machine)
        assert {e.settings["worker"]["node"] for e in entries} == set(nodes)
    finally:
        studio.stop()
    assert "closing server" in studio.log.read_text()


@pytest.mark.slow  # the 2-node Ray cluster and a studio subprocess joining it
def test_a_worker_no_machine_of_the_cluster_can_hold_is_refused_by_name(two_nodes):
    """A 2-process worker needs 2 CPU shares on one machine; each machine here has 1."""
    address, _ = two_nodes
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pusa.app", "--port", "1", "--ray-address", address, "--workers", "1",
         "--parallel", "2"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **LOOPBACK_ONLY},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert (
        "pusa serve: error: a worker (2 processes: --parallel / --cfg-parallel) needs 2 CPU cores "
        "(--worker-cpus 1 each) on one machine; the Ray cluster's largest machine has 1 CPU core"
    ) in run.stderr
    assert time.monotonic() - started < 120


@pytest.mark.slow  # a Ray cluster that grows a node; 2 workers load the model
def test_a_machine_that_joins_later_starts_the_workers_that_waited_for_it(tmp_path):
    """`--workers 2` on a cluster of one 1-CPU machine: one worker serves at once ("on 1 of 2"), the other
    waits for room; a second machine joins and the waiting worker starts there and takes jobs."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from pusa.request import GenerationRequest
    from pusa.serving.cluster import ClusterQueue, ClusterSpec
    from pusa.serving.history import History, JobSpec
    from pusa.serving.queue import DONE, READY

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    queue = ClusterQueue(ClusterSpec(workers=2, address=cluster.address), History(tmp_path / "outputs"))
    try:
        queue.start()
        assert queue.wait_ready(300).state == READY
        assert "on 1 of 2 worker(s)" in queue.status.message
        first = [queue.submit(JobSpec(GenerationRequest(task="t2v", prompt="x", seed=i, num_inference_steps=2)))
                 for i in range(2)]  # fmt: skip
        joined = cluster.add_node(**node)
        deadline = time.monotonic() + 300
        while len(queue.ready) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(queue.ready) == 2 and "on 2 worker(s)" in queue.status.message
        late = next(remote for remote in queue.remotes if remote.index == queue.ready[1])
        assert late.info["node"] == joined.node_id
        jobs = first + [
            queue.submit(JobSpec(GenerationRequest(task="t2v", prompt="y", seed=i, num_inference_steps=20)))
            for i in range(4)
        ]
        views = []
        for job in jobs:
            view = queue.view(job.id)
            while not view.done and time.monotonic() < deadline + 300:
                view = queue.wait(job.id, view.version, timeout=5)
            views.append(view)
        assert all(view.state == DONE for view in views), [view.error for view in views]
        assert late.index in {index for job in jobs for index in queue.ran_on[job.id]}
    finally:
        queue.close(timeout=30)
        ray.shutdown()
        cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved


def test_workers_auto_counts_what_each_machine_holds():
    """`--workers auto`: every worker on one machine, by its GPUs (with cuda) and its cores."""
    import argparse

    from pusa.app.serve import add_serve_arguments, cluster_spec
    from pusa.serving.cluster import ClusterSpec, fit_workers

    machines = [{"CPU": 16.0, "GPU": 8.0}, {"CPU": 4.0, "GPU": 2.0}, {"CPU": 64.0}]
    assert fit_workers(ClusterSpec(device="cuda"), machines) == 8 + 2 + 0
    assert fit_workers(ClusterSpec(device="cuda", parallel=2), machines) == 4 + 1 + 0
    assert fit_workers(ClusterSpec(device="cuda", parallel=4, cpus_per_worker=2.0), machines) == 2 + 0 + 0
    assert fit_workers(ClusterSpec(parallel=2, cpus_per_worker=2.0), machines) == 4 + 1 + 16
    parser = add_serve_arguments(argparse.ArgumentParser())
    cores = os.cpu_count() or 1
    assert cluster_spec(parser.parse_args(["--workers", "auto"])).workers == cores  # this machine, local
    assert cluster_spec(parser.parse_args(["--workers", "auto", "--parallel", "2"])).workers == max(
        1, cores // 2
    )
    assert (
        cluster_spec(parser.parse_args(["--ray-address", "10.0.0.1:6379"])).workers == "auto"
    )  # counted there
    assert cluster_spec(parser.parse_args(["--workers", "3"])).workers == 3
    with pytest.raises(ValueError, match=r"--workers='many' is not allowed; .* or auto"):
        cluster_spec(parser.parse_args(["--workers", "many"]))
