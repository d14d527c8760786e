"""The long-video task: chunks chained by their overlap into one video of the length asked (plan arithmetic,
validation, the pipeline, the CLI, the job queue). Tiny-random model, 32x32, 2 steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import raises_input_error, save_clip, save_image
from pusa import recipes
from pusa.cli import main
from pusa.pipeline import GenerationRequest, PusaPipeline
from pusa.request import validate
from pusa.sampling import Cancelled
from pusa.serving.history import History, JobSpec
from pusa.serving.queue import CANCELLED, DONE, JobQueue
from pusa.video import read_video

FAST = dict(num_inference_steps=2, width=32, height=32, seed=3)
CLI_FAST = ["--model", "tiny-random", "--steps", "2", "--seed", "3", "--width", "32", "--height", "32", "-q"]


@pytest.fixture(scope="module")
def pipe(tiny_random) -> PusaPipeline:
    return tiny_random


# ------------------------------------------------------------------------------------------------ plan
@pytest.mark.parametrize("num_frames", [17, 21, 33, 65, 69, 129])
@pytest.mark.parametrize("context", [1, 2, 3, 4])
def test_the_chunks_cover_every_frame_once(num_frames, context):
    plan = recipes.long_video(num_frames, 17, context, seed=5)
    frames = [f for c in plan.chunks for f in range(c.frames[0], c.frames[1] + 1)]
    assert frames == list(range(num_frames))
    latents = [k for c in plan.chunks for k in range(*c.kept)]
    assert latents == list(range(recipes.num_latent_frames(num_frames)))
    for previous, chunk in zip(plan.chunks, plan.chunks[1:], strict=False):
        # Chunk k opens on the last `context` latents of chunk k-1 (a chunk is 5 latents).
        assert chunk.start == previous.start + 5 - context and chunk.keep_from == context
        assert chunk.first_frame == 4 * chunk.start
    assert plan.chunks[0].seed == 5 and len({c.seed for c in plan.chunks}) == len(plan.chunks)
    assert plan.noise_multipliers == (0.0,) * context
    assert recipes.long_video(num_frames, 17).context == recipes.LONG_CONTEXT == 3  # the measured default


def test_chunk_seeds_are_reproducible_and_the_record_says_them():
    plan = recipes.long_video(65, 17, 1, seed=7)
    assert len(plan.chunks) == 4 and "4 chunks of 17 frames" in plan.note()
    again = recipes.long_video(65, 17, 1, seed=7)
    assert [c.seed for c in plan.chunks] == [c.seed for c in again.chunks]
    assert [c.seed for c in plan.chunks] != [c.seed for c in recipes.long_video(65, 17, 1, seed=8).chunks]
    record = plan.record()
    assert [r["frames"] for r in record] == [[0, 16], [17, 32], [33, 48], [49, 64]]
    assert record[1]["positions"] == [0] and record[1]["seed"] == recipes.chunk_seed(7, 1)


@pytest.mark.parametrize(
    "args, param",
    [
        ((66, 17, 1), "num_frames"),
        ((9, 17, 1), "num_frames"),
        ((65, 16, 1), "chunk_frames"),
        ((65, 17, 5), "context_latents"),
        ((65, 17, 0), "context_latents"),
    ],
)
def test_bad_plans_name_their_parameter(args, param):
    with raises_input_error(param):
        recipes.long_video(*args)


def test_overlap_multipliers_must_be_one_per_overlap_latent():
    with raises_input_error("chunk_multipliers", [0.1]) as caught:
        recipes.long_video(65, 17, 2, [0.1])
    assert "give 2 multipliers" in str(caught.value)  # as many as the overlap's latents


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "fields, param",
    [
        (dict(num_frames=65, chain="sideways"), "chain"),
        (dict(num_frames=65, context_latents=9), "context_latents"),
        (dict(num_frames=65, chunk_multipliers=[1.5]), "chunk_multipliers"),
        (dict(num_frames=65, chunk_frames=129), "chunk_frames"),
        (dict(num_frames=4 * 300 + 1), "num_frames"),
        (dict(num_frames=65, prompt=" "), "prompt"),
        (dict(num_frames=65, recipe="transition"), "recipe"),
    ],
)
def test_bad_long_requests_are_refused_by_name_before_loading(fields, param, pipe):
    limits = pipe.limits  # tiny-random: at most 125 frames per clip
    request = GenerationRequest(task="long", **{"prompt": "x", **fields})
    with raises_input_error(param):
        validate(request, limits, media=False)


def test_an_image_and_a_video_are_not_both_taken(tmp_path, pipe):
    image, clip = save_image(tmp_path / "a.png"), save_clip(tmp_path / "c.mp4", 17)
    request = GenerationRequest(
        task="long",
        prompt="x",
        num_frames=65,
        images=[image],
        positions=[0],
        noise_multipliers=[0.2],
        video=clip,
    )
    with raises_input_error("video"):
        validate(request, pipe.limits)


# ------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("chain", ["latent", "anchored", "pixel", "pixel-matched"])
def test_the_api_makes_exactly_the_frames_asked(pipe, chain):
    steps = []
    out = pipe.long_video("x", 41, context_latents=2, chain=chain, callback=steps.append, **FAST)
    assert out.frames.shape == (41, 32, 32, 3)
    # One progress over every chunk: 41 frames (11 latents) in chunks of 5 latents by 2 are 3 chunks.
    assert [s.step for s in steps] == list(range(6)) and {s.num_steps for s in steps} == {6}
    assert steps[3].text() == "chunk 2/3, step 2/2"
    settings = out.settings
    assert (settings["task"], settings["num_frames"], settings["chain"]) == ("long", 41, chain)
    assert [c["seed"] for c in settings["chunks"]] == [
        c.seed for c in recipes.long_video(41, 17, 2, seed=3).chunks
    ]


def test_the_sidecar_reproduces_the_video(pipe):
    first = pipe.long_video("x", 33, **FAST)
    s = first.settings
    again = pipe.long_video(
        s["prompt"], s["num_frames"], context_latents=s["context_latents"], chain=s["chain"],
        chunk_multipliers=s["chunk_multipliers"], seed=s["seed"], num_inference_steps=s["num_inference_steps"],
        width=s["width"], height=s["height"],
    )  # fmt: skip
    assert np.array_equal(first.frames, again.frames)


def test_latent_chain_the_boundary_is_the_next_chunks_conditioning(pipe):
    """The long video's latents at chunk 1's overlap are chunk 0's last latents, and are what chunk 1
    was conditioned on at every step (multiplier 0: kept exactly, not a re-encoded copy)."""
    request = GenerationRequest(
        task="long", prompt="x", num_frames=33, context_latents=2, chain="latent", **FAST
    )
    seen: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
    chained = pipe.chain_latents(request, lambda info: seen[info.chunk].append(info.latents.clone()))
    assert chained.shape[2] == recipes.num_latent_frames(33) == 9
    chunk1 = recipes.long_video(33, 17, 2, seed=3).chunks[1]
    overlap = chained[:, :, chunk1.start : chunk1.start + 2]
    assert torch.equal(seen[0][-1][:, :, -2:], overlap)  # chunk 0's own final latents
    for latents in seen[1]:
        assert torch.equal(latents[:, :, :2], overlap)
    assert torch.equal(chained[:, :, chunk1.start + 2 : chunk1.start + 5], seen[1][-1][:, :, 2:])
    # ...and the video is those latents decoded once.
    assert np.array_equal(pipe.generate(request).frames, pipe.decode_latents(chained))


def test_a_long_video_from_an_image_or_a_video(pipe, tmp_path):
    image, clip = save_image(tmp_path / "a.png"), save_clip(tmp_path / "c.mp4", 21, 32, 32)
    out = pipe.long_video("x", 33, image=image, noise_multiplier=0.0, **FAST)
    assert out.frames.shape[0] == 33 and out.settings["images"][0]["sha256"]
    out = pipe.long_video("x", 33, video=clip, context_latents=2, **FAST)
    assert out.frames.shape[0] == 33 and out.settings["sources"]["video"]["sha256"]


def test_cancel_in_chunk_2_stops_there(pipe):
    seen = []

    def stop_in_chunk_2(info):
        seen.append((info.chunk, info.chunk_step))
        return not (info.chunk == 1 and info.chunk_step == 0)

    with pytest.raises(Cancelled):
        pipe.long_video("x", 65, callback=stop_in_chunk_2, **FAST)
    assert seen == [(0, 0), (0, 1), (1, 0)]


def test_cancel_in_chunk_2_through_the_queue_frees_the_worker(pipe, tmp_path):
    queue = JobQueue(lambda: pipe, History(tmp_path / "out")).start()
    request = GenerationRequest(
        task="long", prompt="x", num_frames=65, context_latents=1, **{**FAST, "num_inference_steps": 50}
    )
    try:
        queue.wait_ready(30)
        job = queue.submit(JobSpec(request, form={"tab": "t2v"}))
        view = queue.view(job.id)
        while not view.phase.startswith("chunk 2/4"):
            assert not view.done
            view = queue.wait(job.id, view.version, timeout=30)
        assert queue.cancel(job.id)
        while not view.done:
            view = queue.wait(job.id, view.version, timeout=30)
        assert view.state == CANCELLED and 50 < view.step < 200 and view.num_steps == 200
        assert queue.history.list() == []
        done = queue.submit(JobSpec(GenerationRequest(task="t2v", prompt="y", **FAST), form={"tab": "t2v"}))
        view = queue.view(done.id)
        while not view.done:
            view = queue.wait(done.id, view.version, timeout=30)
        assert view.state == DONE
    finally:
        queue.close(10)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_long_writes_one_video_of_the_frames_asked(tmp_path, capsys):
    out = tmp_path / "long.mp4"
    assert (
        main(["generate", "long", "-p", "x", "--frames", "49", "--overlap", "2", *CLI_FAST, "-o", str(out)])
        == 0
    )
    video, _ = read_video(out)
    assert video.shape == (49, 32, 32, 3)
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["task"] == "long" and settings["context_latents"] == 2 and len(settings["chunks"]) == 4
    # ...and extended again from that video.
    again = tmp_path / "again.mp4"
    args = ["generate", "long", "-p", "x", "--frames", "33", "--video", str(out), *CLI_FAST, "-o", str(again)]
    assert main(args) == 0
    assert read_video(again)[0].shape == (33, 32, 32, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "66"], "--frames=66 is not allowed; must be 4k+1"),
        (["--frames", "9"], "--frames=9 is shorter than a chunk"),
        (["--frames", "65", "--overlap", "5"], "--overlap=5 is not allowed; must be a whole number in 1..4"),
        (
            ["--frames", "65", "--overlap", "2", "--overlap-multipliers", "0.1"],
            "--overlap-multipliers=[0.1] has 1",
        ),
        (["--frames", "65", "--chunk-frames", "16"], "--chunk-frames=16 is not allowed"),
        (["--frames", "65", "--image", "missing.png"], "--image='missing.png' does not exist"),
    ],
)
def test_cli_bad_long_inputs_name_the_flag(args, message, capsys):
    assert main(["generate", "long", "-p", "x", *args, *CLI_FAST]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- studio
def test_a_tabs_long_video_controls_make_its_job_a_long_one():
    from pusa.app import forms
    from pusa.app.timeline import long_timeline_html
    from pusa.weights.registry import TINY_DEFAULTS

    spec = forms.text_to_video({"prompt": "x", "seed": 3}, TINY_DEFAULTS)
    assert forms.as_long(spec, {"long_frames": 0}).request.task == "t2v"
    long = forms.as_long(spec, {"long_frames": 65, "context_latents": 1, "chain": "latent"})
    r = long.request
    assert (r.task, r.num_frames, r.chunk_frames, r.context_latents) == ("long", 65, 17, 1)
    assert long.form["long_frames"] == 65 and long.form["tab"] == "t2v"  # "Use these settings" refills it
    with raises_input_error("long_frames", 66) as caught:
        forms.as_long(spec, {"long_frames": 66})
    assert isinstance(caught.value, forms.FormError)  # its text starts with the field's label
    with raises_input_error("context_latents", 5):
        forms.as_long(spec, {"long_frames": 65, "context_latents": 5})
    html = long_timeline_html(forms.long_plan(65, 1, "latent", 17))
    assert html.count('class="pusa-long-chunk"') == 4 and "chunk 2: frames 17–32, opens on 16–16" in html
