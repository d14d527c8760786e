"""A parallel group whose follower rank goes away (killed): the job fails naming the rank, and so does
every later one, at once. Its own module: one process holds one default process group, and
test_parallel.py's module-wide group must be closed first."""

from __future__ import annotations

import os
import signal

import pytest

from pusa.parallel.launch import LoadSpec, ParallelRunner, RanksLost
from pusa.pipeline import GenerationRequest

pytestmark = pytest.mark.slow  # a 2-process parallel group (gloo) started, run and broken


def test_a_rank_that_goes_away_is_named_and_the_group_refuses_later_jobs():
    request = GenerationRequest(task="t2v", prompt="x", num_inference_steps=2, seed=1)
    with ParallelRunner(2, "context", LoadSpec("tiny-random", threads=1)) as group:
        assert group.pipe.generate(request).frames.shape[0] == 17  # the group works
        follower = group._processes[0]
        os.kill(follower.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        follower.join(30)
        # gloo said only "Connection reset by peer"; this names the rank and how it ended
        with pytest.raises(
            RanksLost, match=r"2-rank parallel pipeline lost rank 1 \(exit code -9\); start it"
        ):
            group.pipe.generate(request)
        with pytest.raises(RanksLost, match=r"lost rank 1 \(exit code -9\)"):  # at once, not a hang
            group.pipe.generate(request)
