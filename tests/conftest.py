"""Fixtures shared by the test modules (what they build is in helpers.py)."""

from __future__ import annotations

import pytest

from pusa.pipeline import PusaPipeline


@pytest.fixture(scope="session")
def tiny_random() -> PusaPipeline:
    """The seeded tiny-random model (noise videos, Wan's structure), built once for the session.

    Shared: a test that changes it (hooks, LoRA strength) must build its own."""
    return PusaPipeline.from_preset("tiny-random")


# A local Ray cluster takes seconds to start and stop (about 13 s on a busy 2-core machine), so the cluster
# modules whose queues only need room on this machine share one. Its 4 CPU slots hold the largest of them:
# 2 workers of 2 processes (test_cluster_parallel.py). A `ClusterQueue` started while Ray is up does not own
# it: its `close()` kills its workers and leaves Ray running for the next module.
SHARED_RAY_CPUS = 4


@pytest.fixture(scope="session")
def _shared_ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(_shared_ray_session) -> None:
    """The shared local Ray runtime, started on first use (again if a module that needs Ray to itself,
    such as test_cluster_nodes.py, shut it down); stopped at the end of the session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address="local": a new cluster of this process, never one that `ray start` or another test run
        # left on the machine (ray.init() without an address would join that one)
        ray.init(
            address="local",
            num_cpus=SHARED_RAY_CPUS,
            num_gpus=0,
            object_store_memory=128 * 2**20,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            namespace="pusa",
            log_to_driver=False,
            configure_logging=False,
        )
        ray.put(None)  # as `start_ray` does: Ray's serialization set-up before any other thread imports
