"""benchmarks/cli_phases.py runs its rows (fresh processes of the real command) and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # four fresh processes that each import torch and diffusers

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cli_phases.py"


def test_the_cli_phase_benchmark_times_every_phase_of_one_command(tmp_path):
    out = tmp_path / "phases.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny-random", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    phases = record["phases_median_s"]
    assert list(phases) == [
        "interpreter start", "cli parsed", "engine imported", "model loaded", "LoRA fused, prompts encoded",
        "sampled", "decoded", "mp4 written",
    ]  # fmt: skip
    assert all(seconds >= 0 for seconds in phases.values()) and phases["engine imported"] > 0.1
    assert len(record["end_to_end_s"]) == 1 and record["end_to_end_s"][0] > phases["engine imported"]
    assert "| **end to end (`pusa generate t2v`)** |" in result.stdout
