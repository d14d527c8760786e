"""One video over several ranks (CPU, gloo): context parallel and CFG-parallel give the 1-rank latents.

One 2-rank group on pusa-tiny (rank 0 is this process, rank 1 a spawned child) serves every test of
the module; the reference is a 1-rank pusa-tiny pipeline (the same weights and LoRA).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import random_pixels
from pusa.parallel.context import TokenSplit, local_modulation
from pusa.parallel.launch import LoadSpec, ParallelRunner
from pusa.pipeline import GenerationRequest, PusaPipeline


def test_token_split_runs_lie_in_one_frame():
    for seq_len, per_frame, world in [(80, 16, 2), (60, 12, 3), (81, 9, 4), (21 * 1560, 1560, 8)]:
        splits = [TokenSplit(seq_len, per_frame, world, r) for r in range(world)]
        assert sum(s.length for s in splits) == seq_len
        covered = []
        for s in splits:
            assert s.length % s.run_length == 0
            frames = s.run_frames().repeat_interleave(s.run_length)
            tokens = torch.arange(s.start, s.start + s.length)
            assert torch.equal(frames, tokens // per_frame)  # every token gets its own frame's row
            covered.append(tokens)
        assert torch.equal(torch.cat(covered), torch.arange(seq_len))


def test_local_modulation_rows():
    split = TokenSplit(80, 16, 2, 1)  # tokens 40..79: frame 2 from its 9th token, then frames 3 and 4
    assert split.start % 16 != 0 and split.run_length == 8
    modulation = torch.arange(5.0).view(1, 5, 1, 1).expand(1, 5, 6, 3)
    rows = local_modulation(modulation, split, 5)
    assert rows[0, :, 0, 0].tolist() == [2, 3, 3, 4, 4]
    assert local_modulation(modulation[:, :1], split, 5).shape[1] == 1  # one row covers any slice


@pytest.fixture(scope="module")
def runner():
    with ParallelRunner(2, "context", LoadSpec("pusa-tiny", threads=1)) as group:
        yield group


@pytest.fixture(scope="module")
def single():
    return PusaPipeline.from_model("pusa-tiny")


def _latents(pipe, request: GenerationRequest) -> tuple[torch.Tensor, dict]:
    seen = []
    out = pipe.generate(request, lambda info: seen.append(info.latents.clone()))
    return seen[-1], out.settings


# 17 frames at 64x64 on pusa-tiny (4x VAE, patch 4x4, 4 heads): 5 latent frames of 4x4 tokens, 80 tokens;
# rank 1 starts at token 40, the middle of latent frame 2.
T2V = GenerationRequest(task="t2v", prompt="a red circle", seed=3, num_inference_steps=2, cfg=3.0)
I2V = GenerationRequest(
    task="i2v",
    prompt="it moves",
    images=[random_pixels((64, 64, 3), seed=1)],
    positions=[0],
    noise_multipliers=[0.2],
    seed=5,
    num_inference_steps=2,
)


@pytest.mark.slow  # the module's 2-process parallel group (gloo) and a second model
@pytest.mark.parametrize(
    ("mode", "strategy", "request_"),
    [
        ("context", "ulysses", T2V),
        ("context", "ulysses", replace(T2V, lora_alpha=1.0)),  # the LoRA strength reaches rank 1
        ("context", "ulysses", I2V),
        ("context", "ring", T2V),  # what "auto" runs when the ranks do not divide the heads
        ("context", "ring", I2V),
        ("context", "allgather", T2V),
        ("cfg", "auto", T2V),
        ("cfg", "auto", I2V),
    ],
    ids=[
        "cp-ulysses-t2v",
        "cp-ulysses-t2v-alpha",
        "cp-ulysses-i2v",
        "cp-ring-t2v",
        "cp-ring-i2v",
        "cp-allgather-t2v",
        "cfg-t2v",
        "cfg-i2v",
    ],
)
def test_parallel_matches_one_rank(runner, single, mode, strategy, request_):
    reference, _ = _latents(single, request_)
    runner.set_mode(mode, strategy)
    latents, settings = _latents(runner.pipe, request_)
    assert latents.shape == reference.shape
    # Float32 rounding only: the ranks multiply half-length token blocks (CFG-parallel: batch-1 passes where
    # one rank batches both), one torch thread each. The bound is 1e-5 of the latents' scale: pusa-tiny v4
    # differed by up to 1.1e-5 and v5 by 1.3e-5 on latents of magnitude ~2 (6.5e-6 of it), at elements near 0.
    scale = float(reference.abs().max())
    torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5 * scale)
    assert settings["acceleration"]["parallel"]["mode"] == mode
    assert settings["acceleration"]["parallel"]["world_size"] == 2
    assert settings["acceleration"]["parallel"]["attention"] == (strategy if mode == "context" else None)


@pytest.mark.slow  # the module's 2-process parallel group (gloo) and a second model
def test_parallel_video_is_written(runner, tmp_path):
    runner.set_mode("context", "auto")
    out = runner.pipe.generate(T2V)
    path = out.save(tmp_path / "cp.mp4")
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert out.frames.shape == (17, 64, 64, 3) and out.frames.dtype == np.uint8


def test_flags_give_the_rank_layout():
    from pusa.parallel.flags import check_parallel_flags, rank_layout

    for parallel, cfg_parallel, layout in [(2, False, (2, "context")), (1, True, (2, "cfg")),
                                           (2, True, (2, "cfg")), (4, True, (4, "cfg"))]:  # fmt: skip
        check_parallel_flags(parallel, cfg_parallel, "cpu")
        assert rank_layout(parallel, cfg_parallel) == layout
    with pytest.raises(ValueError, match="even number"):
        check_parallel_flags(3, True, "cpu")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parallel", "0"], "--parallel=0 is not allowed"),
        (["--parallel", "3", "--cfg-parallel"], "--parallel=3 with --cfg-parallel is not allowed"),
        (["--parallel", "2", "--device", "cuda:1"], "give plain cuda"),
    ],
)
def test_parallel_flags_refused_before_loading(argv, message, capsys):
    from pusa.cli import main

    assert main(["generate", "t2v", "-p", "x", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parallel", "65"], "--parallel=65 is not allowed"),
        (["--parallel", "3", "--cfg-parallel", "--workers", "2"], "--parallel=3 with --cfg-parallel"),
        (["--workers", "2", "--device", "cuda:1"], "give plain cuda (Ray gives each worker its own GPUs)"),
        # a local cluster's GPUs are this machine's: 64 workers of 64 processes need cuda:0..cuda:4095 here
        (["--workers", "64", "--parallel", "64", "--device", "cuda"], "4096 processes need 4096 GPUs here"),
        (["--workers", "2", "--lora", "/nowhere.safetensors"], "/nowhere.safetensors"),
        (["--workers", "-1"], "--workers=-1 is not allowed"),
    ],
)
def test_serve_parallel_and_worker_flags_refused_before_starting(argv, message, capsys):
    from pusa.cli import main

    assert main(["serve", "--port", "1", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # the module's 2-process parallel group (gloo) and a second model
@pytest.mark.parametrize("strategy", ["ulysses", "ring"])
def test_communicated_bytes_formula_matches_what_rank_0_sends(runner, monkeypatch, strategy):
    """The benchmark's formula (`communicated_bytes`) against the bytes rank 0 hands to the collectives
    in one DiT pass (1 step, cfg 1.0) on pusa-tiny: L = 80 tokens, D = 128, 6 layers, float32."""
    import torch.distributed as dist

    from pusa.parallel import context

    sent = []
    all_to_all, all_gather, batch = dist.all_to_all_single, dist.all_gather, dist.batch_isend_irecv

    def spy_batch(ops):  # the ring's exchanges: what rank 0 sends
        sent.extend(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op is dist.isend)
        return batch(ops)

    def spy_all_to_all(output, input, output_split_sizes=None, input_split_sizes=None, group=None):
        mine = input_split_sizes[dist.get_rank()] / sum(input_split_sizes)
        sent.append(input.numel() * input.element_size() * (1 - mine))
        return all_to_all(output, input, output_split_sizes, input_split_sizes, group=group)

    def spy_all_gather(parts, tensor, group=None):
        sent.append(tensor.numel() * tensor.element_size() * (len(parts) - 1))
        return all_gather(parts, tensor, group=group)

    runner.set_mode("context", strategy)
    monkeypatch.setattr(context.dist, "all_to_all_single", spy_all_to_all)
    monkeypatch.setattr(context.dist, "all_gather", spy_all_gather)
    monkeypatch.setattr(context.dist, "batch_isend_irecv", spy_batch)
    runner.pipe.generate(replace(T2V, num_inference_steps=1, cfg=1.0))
    config = runner.pipe.transformer.config
    dim = config.num_attention_heads * config.attention_head_dim
    expected = context.communicated_bytes(80, dim, config.num_layers, 2, 4, strategy)
    assert sum(sent) == pytest.approx(expected["per_rank"])


@pytest.mark.slow  # `pusa generate --parallel 2` in a subprocess: 3 processes load the model
def test_quiet_parallel_run_prints_no_loading_bars(tmp_path):
    """`-q` silences rank 0's weight-loading bars; the follower ranks (other processes) printed theirs."""
    import subprocess
    import sys

    out = tmp_path / "par.mp4"
    argv = ["generate", "t2v", "--parallel", "2", "-p", "a red circle", "--steps", "1", "-q", "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "pusa.cli", *argv], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Loading" not in done.stderr and "it/s" not in done.stderr, done.stderr
    assert out.is_file()
