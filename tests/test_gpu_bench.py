"""benchmarks/gpu_bench.py end to end at tiny size on the CPU: every part runs through the same code paths as
the real-size run on a GPU, the offloading tiers give bit-identical outputs, and the JSON can be merged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"

pytestmark = pytest.mark.slow  # the benchmarks end to end (60 s on the busy baseline)


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_bench"]


def test_tiny_benchmark_runs_every_part_and_tiers_match(gpu_bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    gpu_bench.main(["--tiny", "--repeats", "1", "--sizes", "480p", "--json", str(out)])
    assert torch.is_grad_enabled()  # the bench runs under no_grad without leaking it to its caller
    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert all(row["status"] == "ok" for row in result["rows"]), [
        r for r in result["rows"] if r["status"] != "ok"
    ]
    for name in ("ours-fused", "ours-adapter", "diffusers-stock", "ours-compile", "ours-fp8", "tier-low"):
        assert rows[name]["ms_forward"] > 0 and rows[name]["tokens"] == 72, name
    # Offloading moves weights, never changes them: every tier's output equals the first tier's, bit for bit.
    assert rows["tier-balanced"]["rel_error_vs_first_tier"] == 0.0
    assert rows["tier-low"]["rel_error_vs_first_tier"] == 0.0
    assert 0 < rows["ours-fp8"]["rel_error_vs_bf16"] < 0.1
    assert set(result["end_to_end"]) >= {"ours-fused", "diffusers-stock"}
    assert "10-step I2V estimate" in capsys.readouterr().out

    merged = tmp_path / "merged.json"
    gpu_bench.main(["--merge", str(out), str(out), "--json", str(merged)])
    assert len(json.loads(merged.read_text())["rows"]) == 2 * len(result["rows"])


def test_tiny_speed_part_runs_every_option_and_estimates_the_cache(gpu_bench, tmp_path):
    """The speed rows (CFG batch, fp8 compute, the combination, compiled, the cache's step timings) run at
    tiny size through the code the GPU run takes, so that run cannot fail on a typo."""
    out = tmp_path / "speed.json"
    gpu_bench.main(
        ["--tiny", "--parts", "speed,attention", "--sizes", "480p", "--repeats", "1", "--json", str(out)]
    )
    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert all(row["status"] == "ok" for row in result["rows"]), [
        r for r in result["rows"] if r["status"] != "ok"
    ]
    expected = {"speed-base", "speed-cfg-batch", "speed-fp8-rowwise", "speed-fp8-tensor", "speed-combo"}
    assert expected | {"speed-combo-compile"} <= set(rows)
    assert rows["speed-base"]["rel_error_vs_bf16"] == 0.0 and rows["speed-cfg-batch"]["cfg_batch"] is True
    assert 0 < rows["speed-fp8-rowwise"]["rel_error_vs_bf16"] < 0.1
    for name in ("speed-base", "speed-combo", "speed-combo-compile"):
        assert rows[name]["ms_cfg_step_cache_skipped"] > 0 and rows[name]["ms_cfg_step_cache_computed"] > 0
        assert rows[name]["cache_skipped_forwards_skipped"] >= 1  # the skipped step really skipped
        assert rows[name]["cache_skipped_forwards_computed"] == 0
    # the end-to-end estimate with and without the cache, given text and VAE rows
    extra = [
        {"name": "umt5 encode (resident)", "status": "ok", "ms": 10.0},
        {"name": "wan vae encode", "status": "ok", "ms": 20.0},
        {"name": "wan vae decode", "status": "ok", "ms": 30.0, "size": rows["speed-base"]["size"]},
    ]
    estimates = gpu_bench.end_to_end(result["rows"] + extra, cache_skips=3)
    cached = estimates["speed-combo + cache (3 of 10 steps skipped)"]
    combo = rows["speed-combo"]
    expected_ms = 7 * combo["ms_cfg_step_cache_computed"] + 3 * combo["ms_cfg_step_cache_skipped"]
    assert abs(cached["denoise_s"] * 1e3 - expected_ms) < 1e-6
    assert set(estimates) >= expected


def test_the_parallel_overhead_benchmark_runs_its_rows_at_tiny_size(tmp_path):
    """benchmarks/parallel_overhead.py (the N = 1 cost of the context-parallel path, for a GPU) at tiny size
    on the CPU, in its own process (it holds a 1-rank default process group): every strategy's row, the
    outputs the plain forward's."""
    import os
    import subprocess

    out = tmp_path / "overhead.json"
    script = BENCH.parent / "parallel_overhead.py"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parents[1] / "src")}
    run = subprocess.run([sys.executable, str(script), "--tiny", "--repeats", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["path"] for row in rows[:4]] == [
        "plain (today's)",
        "context parallel, 1 rank (ulysses)",
        "context parallel, 1 rank (ring)",
        "context parallel, 1 rank (allgather)",
    ]
    assert len(rows) == 8 and all(row["ms"] > 0 and row["max_abs_diff"] < 1e-4 for row in rows)
    assert "| tiny 3x8x12 | context parallel, 1 rank (ring) |" in run.stdout
