"""A weight file changed on disk while its model is loaded: the DiT's files (read again by the LoRA fusers
and by `--memory stream` at the boundary) are refused by name, never mixed with the loaded version; a LoRA
file is read again (its new version fused, its new sha256 recorded). Tiny-random-a14b written to folders,
2 steps at 32x32."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pusa.params import InputError
from pusa.pipeline import GenerationRequest, PusaPipeline
from pusa.serving.history import History, JobSpec
from pusa.serving.queue import DONE, FAILED, JobQueue
from pusa.weights.sources import FileChangedError
from pusa.weights.wan_original import write_two_expert_folder
from test_lora_stack import write_peft

SMALL = dict(width=32, height=32, num_frames=5, num_inference_steps=2, seed=5)


def shard_with(folder: Path, key: str) -> Path:
    """The safetensors file of `folder` that holds `key`."""
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            if key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                return file
    raise AssertionError(f"no file of {folder} holds {key}")


def replace_by_rename(file: Path, seed: int) -> None:
    """What download and sync tools do: other weights written beside `file`, renamed over it. Same size and
    mtime as the old file, so only the inode tells them apart."""
    old = os.stat(file)
    generator = torch.Generator().manual_seed(seed)
    state = {k: v + torch.randn(v.shape, generator=generator).to(v.dtype) for k, v in load_file(file).items()}
    partial = file.with_name(file.name + ".part")
    save_file(state, str(partial))
    assert partial.stat().st_size == old.st_size
    os.utime(partial, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(partial, file)


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_two_expert_folder(tmp_path / "a14b", "wan-original")


@pytest.fixture
def lora(tmp_path) -> Path:
    return write_peft(tmp_path / "pusa.safetensors")


def test_a_dit_file_replaced_while_loaded_is_refused_by_name_not_mixed(folder, lora):
    pipe = PusaPipeline.from_pretrained(folder, lora=str(lora))
    before = pipe.text_to_video("a fox", lora_alpha=1.0, **SMALL).frames
    target = shard_with(folder / "high_noise_model", "blocks.0.self_attn.q.weight")  # a LoRA target in it
    replace_by_rename(target, seed=1)

    with pytest.raises(FileChangedError) as caught:
        pipe.text_to_video("a fox", lora_alpha=1.5, **SMALL)  # re-fused from the files: refused
    message = str(caught.value)
    assert str(target) in message and "changed on disk" in message and "inode" in message
    assert "reload the model" in message
    assert caught.value.path == target and not isinstance(caught.value, InputError)  # not the request's fault
    with pytest.raises(FileChangedError):  # and again: nothing was half fused
        pipe.text_to_video("a fox", lora_alpha=1.5, **SMALL)
    # the loaded weights were left as they were: the strength already fused still makes the same video
    assert np.array_equal(pipe.text_to_video("a fox", lora_alpha=1.0, **SMALL).frames, before)

    reloaded = PusaPipeline.from_pretrained(folder, lora=str(lora))  # the new version, whole
    after = reloaded.text_to_video("a fox", lora_alpha=1.5, **SMALL).frames
    assert not np.array_equal(after, pipe.text_to_video("a fox", lora_alpha=1.0, **SMALL).frames)


def test_a_deleted_dit_file_fails_the_job_with_the_same_message(folder, lora, tmp_path, caplog):
    pipe = PusaPipeline.from_pretrained(folder, lora=str(lora))
    pipe.text_to_video("a fox", lora_alpha=1.0, **SMALL)
    target = shard_with(folder / "low_noise_model", "blocks.0.self_attn.q.weight")
    target.unlink()

    with pytest.raises(FileChangedError) as caught:
        pipe.text_to_video("a fox", lora_alpha=1.5, **SMALL)
    assert str(target) in str(caught.value) and "no longer exists" in str(caught.value)
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)  # from a Ray worker too

    # through the studio's queue: a failed job with that message, no traceback in the log
    queue = JobQueue(lambda: pipe, History(tmp_path / "out")).start()
    try:
        request = GenerationRequest(task="t2v", prompt="a fox", lora_alpha=2.0, **SMALL)
        view = queue.view(queue.submit(JobSpec(request)).id)
        with caplog.at_level(logging.ERROR):
            while not view.done:
                view = queue.wait(view.id, view.version, timeout=60)
        assert view.state == FAILED and view.error == str(caught.value)
        assert not [r for r in caplog.records if r.exc_info]
        same = GenerationRequest(task="t2v", prompt="a fox", lora_alpha=1.0, **SMALL)  # what is fused
        done = queue.view(queue.submit(JobSpec(same)).id)
        while not done.done:
            done = queue.wait(done.id, done.version, timeout=60)
        assert done.state == DONE
    finally:
        queue.close(10)


def test_a_lora_file_replaced_is_read_again_and_recorded_with_its_new_sha256(folder, lora):
    pipe = PusaPipeline.from_pretrained(folder)
    first = pipe.text_to_video("a fox", loras=f"{lora}:1.0", **SMALL)
    assert first.settings["lora_stack"][0]["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()

    replacement = write_peft(lora.with_name("pusa.safetensors.part"), seed=50)
    os.utime(replacement, ns=(lora.stat().st_atime_ns, lora.stat().st_mtime_ns))  # only the inode differs
    os.replace(replacement, lora)
    second = pipe.text_to_video("a fox", loras=f"{lora}:1.0", **SMALL)
    assert second.settings["lora_stack"][0]["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert second.settings["lora_stack"][0]["sha256"] != first.settings["lora_stack"][0]["sha256"]
    fresh = PusaPipeline.from_pretrained(folder).text_to_video("a fox", loras=f"{lora}:1.0", **SMALL)
    assert np.array_equal(second.frames, fresh.frames)  # the new LoRA, exactly
    assert not np.array_equal(second.frames, first.frames)


def test_stream_refuses_a_low_noise_expert_replaced_before_the_boundary(folder):
    pipe = PusaPipeline.from_pretrained(folder, memory="stream")  # the low-noise expert not read yet
    target = shard_with(folder / "low_noise_model", "blocks.0.self_attn.q.weight")
    replace_by_rename(target, seed=2)

    for _ in range(2):  # refused at the boundary, and again on the next video
        with pytest.raises(FileChangedError) as caught:
            pipe.text_to_video("a fox", **SMALL)
        assert str(target) in str(caught.value) and "reload the model" in str(caught.value)
    assert pipe.expert_switch.active == "high"  # refused before the high-noise expert was freed
    fresh = PusaPipeline.from_pretrained(folder, memory="stream")
    assert fresh.text_to_video("a fox", **SMALL).settings["expert_swaps"]["swaps"] == 1
