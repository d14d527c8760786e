"""Fixtures shared by the test modules (what they build is in helpers.py)."""

from __future__ import annotations

import pytest

from pusa.pipeline import PusaPipeline


@pytest.fixture(scope="session")
def tiny_random() -> PusaPipeline:
    """The seeded tiny-random model (noise videos, Wan's structure), built once for the session.

    Shared: a test that changes it (hooks, LoRA strength) must build its own."""
    return PusaPipeline.from_preset("tiny-random")
