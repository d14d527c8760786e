"""The studio's named API endpoints through gradio_client: a real server on a free port, every task on
the tiny-random model, mp4s back, errors as the page words them."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from helpers import free_port, save_image  # noqa: E402
from pusa.pipeline import PusaPipeline  # noqa: E402
from pusa.serving.history import History  # noqa: E402
from pusa.serving.queue import JobQueue  # noqa: E402
from pusa.video import read_video, read_video_metadata  # noqa: E402
from pusa.weights.registry import TINY_DEFAULTS  # noqa: E402

# gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

FAST = dict(steps=2, width=32, height=32, seed=11)
ENDPOINTS = [
    "/image_to_video",
    "/frames_to_video",
    "/video_to_video",
    "/text_to_video",
    "/jobs",
    "/job_status",
    "/cancel_job",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pusa.app.page import build_app, launch_app

    history = History(tmp_path_factory.mktemp("studio-outputs"))
    queue = JobQueue(lambda: PusaPipeline.from_preset("tiny-random"), history).start()
    demo = build_app(queue, TINY_DEFAULTS)
    port = free_port()
    launch_app(demo, history, port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", history, queue
    finally:
        demo.close()
        queue.close(10)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-inputs")
    return [str(save_image(folder / f"{name}.png", seed=seed)) for seed, name in enumerate(("a", "b"))]


def check_video(result, frames: int = 17):
    video, settings, status = result
    settings = json.loads(settings)
    assert video.endswith(".mp4")
    decoded, _ = read_video(video)
    assert decoded.shape == (frames, 32, 32, 3)
    assert read_video_metadata(video) == settings
    # API clients get the status as plain text, with the job's id (the page gets HTML)
    assert status.startswith("Done in ") and f"seed {settings['seed']}" in status and "<" not in status
    assert re.search(r"· job [0-9a-f]{12}$", status), status
    return settings


def test_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(endpoints) == sorted(ENDPOINTS)
    names = [p["parameter_name"] for p in endpoints["/image_to_video"]["parameters"]]
    assert names[:5] == ["image", "prompt", "noise_multiplier", "lora_alpha", "steps"]


def test_every_task_returns_an_mp4(client, server, images):
    settings = check_video(
        client.predict(
            handle_file(images[0]), "a red circle", noise_multiplier=0.0, **FAST, api_name="/image_to_video"
        )
    )
    assert (settings["task"], settings["positions"], settings["noise_multipliers"]) == ("i2v", [0], [0.0])
    assert settings["seed"] == 11 and settings["num_inference_steps"] == 2

    settings = check_video(
        client.predict(
            [handle_file(path) for path in images],
            "x",
            positions="0,4",
            noise_multipliers="0.2,0.5",
            **FAST,
            api_name="/frames_to_video",
        )
    )
    assert (settings["task"], settings["positions"]) == ("frames", [0, 4])

    t2v = client.predict("a blue square", cfg=1.0, num_frames=25, **FAST, api_name="/text_to_video")
    settings = check_video(t2v, frames=25)
    assert (settings["task"], settings["cfg"], settings["prompt"]) == ("t2v", 1.0, "a blue square")

    source = handle_file(t2v[0])
    settings = check_video(
        client.predict(
            source,
            "x",
            positions="0,1",
            noise_multipliers="0,0.3",
            recipe="custom",
            **FAST,
            api_name="/video_to_video",
        )
    )
    assert (settings["task"], settings["positions"], settings["recipe"]) == ("v2v", [0, 1], None)

    settings = check_video(
        client.predict(
            source,
            "x",
            positions="0,1,2,3",
            noise_multipliers="0,0.3,0.4,0.5",
            recipe="extension",
            **FAST,
            api_name="/video_to_video",
        )
    )
    assert settings["recipe"] == "extension"

    history: History = server[1]
    entries = history.list()
    assert [entry.task for entry in entries] == ["v2v", "v2v", "t2v", "frames", "i2v"]
    assert all(history.inside(entry.video) for entry in entries)
    # The uploads were kept inside the outputs folder, so the history can refill the form.
    assert all(history.inside(path) for path in entries[-2].form["images"])


def test_errors_come_back_with_the_page_message(client, images):
    with pytest.raises(Exception, match=r"Conditioning Positions: \[0, 9\] contains 9; .*0\.\.4"):
        client.predict(
            [handle_file(path) for path in images], "x", positions="0,9", **FAST, api_name="/frames_to_video"
        )
    with pytest.raises(Exception, match=r"Width: 40 is not allowed; must be a multiple of 16"):
        client.predict(handle_file(images[0]), "x", **{**FAST, "width": 40}, api_name="/image_to_video")
    with pytest.raises(Exception, match=r"Prompt: '' is empty; describe the video to generate"):
        client.predict("", **FAST, api_name="/text_to_video")
    # Out of a slider's range: our message with the field's name, not gradio's "Value 0 is less than ...".
    with pytest.raises(
        Exception, match=r"Inference Steps: 0 is not allowed; must be a whole number in 1\.\.50"
    ):
        client.predict("x", **{**FAST, "steps": 0}, api_name="/text_to_video")
    with pytest.raises(
        Exception, match=r"Noise Multiplier: 1\.5 is not allowed; must be a number in 0\.0\.\.1\.0"
    ):
        client.predict(handle_file(images[0]), "x", noise_multiplier=1.5, **FAST, api_name="/image_to_video")
    # A choice outside a radio's list: our message naming the field, not gradio's "not in the list of choices"
    with pytest.raises(Exception, match=r"Step Cache: 'always' is not allowed; .*off, pusa"):
        client.predict("x", cache="always", **FAST, api_name="/text_to_video")
    with pytest.raises(Exception, match=r"Preset: '8-step' is not allowed; .*4-step"):
        client.predict("x", preset="8-step", **FAST, api_name="/text_to_video")


def test_a_job_is_looked_up_by_the_id_its_status_carries(client, server):
    """The status text names the job; `/job_status` answers for it (done: its video), and names an
    unknown id. After a restart the same lookup answers from the history (tested in test_app_jobs)."""
    video, _, status = client.predict("a red circle", **FAST, api_name="/text_to_video")
    job_id = status.rsplit("job ", 1)[1]
    record = client.predict(job_id, api_name="/job_status")
    assert record["state"] == "done" and Path(record["video"]).name == Path(video).name
    history: History = server[1]
    history.record_failure("gone0001", 1.0, _spec(), "a reason")
    assert client.predict("gone0001", api_name="/job_status") == {
        "id": "gone0001",
        "state": "failed",
        "reason": "a reason",
    }
    with pytest.raises(Exception, match=r"job_id='nope' is not a job of this studio"):
        client.predict("nope", api_name="/job_status")


def _spec():
    from pusa.request import GenerationRequest
    from pusa.serving.history import JobSpec

    return JobSpec(GenerationRequest(task="t2v", prompt="x", seed=1))


def test_unreadable_uploads_are_named_by_their_field(client, tmp_path):
    """A zero-byte or non-image file sent as the image: our message, naming the field and the file, with no
    server path in it (gradio's preprocessing answered "Could not preprocess input component at index 0")."""
    empty, text = tmp_path / "empty.png", tmp_path / "notes.png"
    empty.write_bytes(b"")
    text.write_text("not an image")
    for path in (empty, text):
        with pytest.raises(Exception) as caught:
            client.predict(handle_file(path), "x", **FAST, api_name="/image_to_video")
        message = str(caught.value)
        assert f"Image: '{path.name}' is not an image; allowed: PNG, JPEG, WebP, BMP, GIF" in message, message
        assert "preprocess" not in message and "/tmp/gradio" not in message


def wait_for(condition, timeout: float = 60, what: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def test_jobs_are_listed_and_cancelled_by_id_or_by_the_client(client, server, request):
    """/jobs lists every unfinished job; /cancel_job cancels one by id; a client that cancels its own
    stream (job.cancel()) cancels the server's job too, instead of leaving it to run for nobody."""
    queue: JobQueue = server[2]
    # The tiny model takes ~7 ms a step: slow each forward down so the jobs are still there to list.
    slow = queue.wait_ready(60) and queue.pipeline.transformer.register_forward_pre_hook(
        lambda *_: time.sleep(0.05)
    )
    request.addfinalizer(slow.remove)
    long = {**FAST, "steps": 50}
    running = client.submit("runs long", **long, api_name="/text_to_video")
    wait_for(lambda: client.predict(api_name="/jobs"))  # in this order: submit returns before the job exists
    waiting = client.submit("waits", **long, api_name="/text_to_video")
    jobs = wait_for(lambda: (listed := client.predict(api_name="/jobs")) and len(listed) == 2 and listed)
    assert [job["prompt"] for job in jobs] == ["runs long", "waits"]
    assert [job["state"] for job in jobs] == ["running", "queued"] and jobs[1]["position"] == 1
    assert jobs[0]["num_steps"] in (0, 50) and jobs[1]["task"] == "t2v" and jobs[1]["seed"] == 11
    stored = {job_id: spec for job_id, _, spec, _ in server[1].pending()}  # a restart would run them again
    assert {job["id"] for job in jobs} <= set(stored)
    assert stored[jobs[1]["id"]].form["prompt"] == "waits" and stored[jobs[1]["id"]].request.seed == 11

    assert client.predict(jobs[1]["id"], api_name="/cancel_job") == "cancelled before it started"
    assert queue.view(jobs[1]["id"]).state == "cancelled"
    with pytest.raises(Exception, match=r"already ended \(cancelled\)"):
        client.predict(jobs[1]["id"], api_name="/cancel_job")
    with pytest.raises(Exception, match=r"job_id='nope' is not a job of this studio; /jobs lists"):
        client.predict("nope", api_name="/cancel_job")
    with pytest.raises(Exception, match=r"cancelled"):
        waiting.result(timeout=30)  # its stream ends with the page's message

    wait_for(lambda: queue.view(jobs[0]["id"]).step >= 1, what="the long job never stepped")
    running.cancel()
    view = wait_for(lambda: (v := queue.view(jobs[0]["id"])).done and v, 30, "the server kept running it")
    assert view.state == "cancelled" and view.step < 50
    assert client.predict(api_name="/jobs") == []


def test_page_answers_while_the_model_loads_and_auth_protects_it(tmp_path):
    from pusa.app.page import build_app, launch_app
    from pusa.app.studio import WAITING_LABEL

    release = threading.Event()

    def slow_load() -> PusaPipeline:
        release.wait(60)
        return PusaPipeline.from_preset("tiny-random")

    history = History(tmp_path / "outputs")
    queue = JobQueue(slow_load, history).start()
    demo = build_app(queue, TINY_DEFAULTS)
    port = free_port()
    launch_app(demo, history, port=port, auth=("ada", "lovelace"), block=False, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # the page is up, no gateway error
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url + "config", timeout=10)
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's own error type for a refused login
            Client(url, verbose=False)
        client = Client(url, auth=("ada", "lovelace"), verbose=False)
        config = client.config
        labels = [c["props"].get("value") for c in config["components"] if c.get("type") == "button"]
        assert WAITING_LABEL in labels

        job = client.submit("a red circle", **FAST, api_name="/text_to_video")
        deadline = time.monotonic() + 30
        while not any("Waiting for the model" in str(output) for output in job.outputs()):
            assert time.monotonic() < deadline, job.outputs()
            time.sleep(0.1)
        assert queue.status.state == "loading"
        release.set()
        video, settings, status = job.result(timeout=60)
        assert video.endswith(".mp4") and status.startswith("Done in ")
        assert json.loads(settings)["prompt"] == "a red circle"
    finally:
        release.set()
        demo.close()
        queue.close(10)


def test_uploads_are_checked_as_they_arrive(tmp_path, images):
    from pusa.app.studio import Studio

    studio = Studio(
        JobQueue(PusaPipeline.from_preset, History(tmp_path / "outputs")), TINY_DEFAULTS, "tiny-random"
    )
    assert "Uploaded</b> · a.png, 40x24" in studio.check_upload("image", images[0])
    assert "Uploaded</b> · 2 images" in studio.check_upload("images", images)
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"junk" * 100)
    message = studio.check_upload("video", str(junk))
    assert (
        'class="pusa-error"' in message
        and "Source video: &#x27;clip.mp4&#x27; is not a readable video" in message
    )
    text = tmp_path / "notes.png"
    text.write_text("hello")
    assert "Images: &#x27;notes.png&#x27; is not an image" in studio.check_upload(
        "images", [images[0], str(text)]
    )
    assert 'data-state="idle"' in studio.check_upload("video", None)


def test_queue_panel_lists_every_unfinished_job_and_cancels_one(tmp_path):
    """After a reload a page no longer holds its job's id: the queue panel lists every unfinished job
    (whoever submitted it) and cancels the one picked. The model is held loading, so jobs stay queued."""
    import gradio as gr

    from pusa.app.studio import Studio
    from pusa.pipeline import GenerationRequest
    from pusa.serving.history import JobSpec

    release = threading.Event()
    queue = JobQueue(lambda: release.wait(60) and PusaPipeline.from_preset("tiny-random"), History(tmp_path))
    studio = Studio(queue.start(), TINY_DEFAULTS, "tiny-random")
    try:
        box, table, pick, shown = studio.queue_refresh(None, None)
        assert (box["label"], table["value"], pick["choices"]) == ("Queue: empty", [], [])
        first, second = (
            queue.submit(JobSpec(GenerationRequest(task="t2v", prompt=prompt, seed=seed)))
            for prompt, seed in (("a red circle", 1), ("a blue square", None))
        )
        box, table, pick, shown = studio.queue_refresh(shown, None)
        assert box["label"] == "Queue: 0 running, 2 waiting"
        assert [row[:5] for row in table["value"]] == [
            [first.id, "waiting, #1 in line", "Text-to-Video", "a red circle", 1],
            [second.id, "waiting, #2 in line", "Text-to-Video", "a blue square", "random"],
        ]
        assert [value for _, value in pick["choices"]] == [first.id, second.id] and pick["value"] == first.id
        assert studio.queue_refresh(shown, first.id) == (gr.skip(), gr.skip(), gr.skip(), shown)  # unchanged

        outcome = studio.queue_cancel(second.id)
        assert (
            'data-state="cancelled"' in outcome and f"job {second.id}: cancelled before it started" in outcome
        )
        box, table, pick, shown = studio.queue_refresh(shown, second.id)  # the pick falls back to a live job
        assert box["label"] == "Queue: 0 running, 1 waiting" and pick["value"] == first.id
        assert "has already ended (cancelled)" in studio.queue_cancel(second.id)
        assert "job_id=&#x27;&#x27; is not a job of this studio" in studio.queue_cancel(None)
    finally:
        release.set()
        queue.close(10)


def test_a_reloaded_tab_follows_its_job_again(tmp_path):
    """`Studio.follow` is what a reloaded page runs with the job id the browser kept for the tab."""
    from pusa.app.studio import Studio
    from pusa.pipeline import GenerationRequest
    from pusa.serving.history import JobSpec

    release = threading.Event()
    queue = JobQueue(lambda: release.wait(60) and PusaPipeline.from_preset("tiny-random"), History(tmp_path))
    studio = Studio(queue.start(), TINY_DEFAULTS, "tiny-random")
    try:
        nothing = list(studio.follow(None)) + list(studio.follow("forgotten-by-a-restart"))
        assert [(u.progress, u.job_id) for u in nothing] == [
            (None, None),
            (None, None),
        ]  # the page keeps its own
        view = queue.submit(
            JobSpec(GenerationRequest(task="t2v", prompt="x", seed=2, **dict(width=32, height=32)))
        )
        updates = studio.follow(view.id)
        first = next(updates)
        assert 'data-state="queued"' in first.progress and first.job_id == view.id and first.video is None
        release.set()
        last = list(updates)[-1]
        assert 'data-state="done"' in last.progress and last.video.endswith(".mp4") and last.job_id == view.id
        assert json.loads(last.settings)["seed"] == 2
    finally:
        release.set()
        queue.close(10)


def test_gradios_copies_of_videos_are_deleted_once_old(tmp_path):
    """gradio copies every video it sends into its cache folder (and does not track those copies): the
    studio deletes the copies of its own videos once older than its cache age (an hour; 3 s here), so
    the folder stops growing by one file per video. Only copies of our videos are touched."""
    from pusa.app.gradio_cache import cached_copies
    from pusa.app.page import build_app, launch_app

    sweepers = lambda: sum(t.name == "pusa-cache-sweep" for t in threading.enumerate())  # noqa: E731
    before = sweepers()
    history = History(tmp_path / "outputs")
    queue = JobQueue(lambda: PusaPipeline.from_preset("tiny-random"), history).start()
    demo = build_app(queue, TINY_DEFAULTS, cache=(1, 3))
    cache = Path(demo.GRADIO_CACHE)
    other = cache / "not-ours" / "someone-elses.mp4"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(b"x")
    port = free_port()
    launch_app(demo, history, port=port, block=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        for seed in (1, 2):
            client.predict("a red circle", **{**FAST, "seed": seed}, api_name="/text_to_video")
        names = {entry.video.name for entry in history.list()}
        copies = lambda: [path for path in cached_copies(cache) if path.name in names]  # noqa: E731
        assert len(names) == 2 and copies(), "gradio made no copies? then this test checks nothing"
        wait_for(lambda: not copies(), timeout=30, what="old copies deleted")
        assert all(entry.video.is_file() for entry in history.list())  # our videos stay
        assert other.exists()  # not ours: not touched
    finally:
        demo.close()
        queue.close(10)
        other.unlink()
        other.parent.rmdir()
    # its sweeper ends with its server: left running, it went on deleting the copies other servers serve
    wait_for(lambda: sweepers() == before, timeout=30, what="the closed server's sweeper ends")


def test_long_video_from_text_image_and_video_tabs(client, images, tmp_path):
    """Each tab's Long video controls: one video of the total asked, chained from clips of its Frames."""
    from helpers import save_clip

    source = str(save_clip(tmp_path / "source.mp4", 17, 32, 32))
    video, settings, _ = client.predict(
        "a red circle", long_frames=41, context_latents=2, **FAST, api_name="/text_to_video"
    )
    settings = json.loads(settings)
    assert read_video(video)[0].shape == (41, 32, 32, 3)
    assert (settings["task"], settings["chunk_frames"], len(settings["chunks"])) == ("long", 17, 3)
    result = client.predict(
        handle_file(images[0]), "x", noise_multiplier=0.0, long_frames=33, chain="pixel", **FAST,
        api_name="/image_to_video",
    )  # fmt: skip
    assert read_video(result[0])[0].shape == (33, 32, 32, 3) and json.loads(result[1])["chain"] == "pixel"
    result = client.predict(
        handle_file(source), "x", positions="", noise_multipliers="", recipe="extension", long_frames=33, **FAST,
        api_name="/video_to_video",
    )  # fmt: skip
    assert read_video(result[0])[0].shape == (33, 32, 32, 3) and json.loads(result[1])["task"] == "long"
    with pytest.raises(Exception, match=r"Long video \(frames\): 9 is shorter than a chunk"):
        client.predict("x", long_frames=9, **FAST, api_name="/text_to_video")
    with pytest.raises(Exception, match=r"Long video \(frames\): 33 is set with the completion recipe"):
        client.predict(
            handle_file(source), "x", positions="", noise_multipliers="", recipe="completion", long_frames=33,
            **FAST, api_name="/video_to_video",
        )  # fmt: skip
