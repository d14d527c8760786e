"""The studio's named API endpoints through gradio_client: a real server on a free port, every task on
the tiny-random model, mp4s back, errors as the page words them."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from pusa.jobs import History, JobQueue  # noqa: E402
from pusa.pipeline import PusaPipeline  # noqa: E402
from pusa.presets import TINY_DEFAULTS  # noqa: E402
from pusa.video import read_video, read_video_metadata  # noqa: E402

# gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

FAST = dict(steps=2, width=32, height=32, seed=11)
ENDPOINTS = ["/image_to_video", "/frames_to_video", "/video_to_video", "/text_to_video"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pusa.app.studio import build_app, launch_app

    history = History(tmp_path_factory.mktemp("studio-outputs"))
    queue = JobQueue(lambda: PusaPipeline.from_preset("tiny-random"), history).start()
    demo = build_app(queue, TINY_DEFAULTS)
    port = free_port()
    launch_app(demo, history, port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", history
    finally:
        demo.close()
        queue.close(10)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-inputs")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(paths[-1])
    return [str(path) for path in paths]


def check_video(result, frames: int = 17):
    video, settings, status = result
    settings = json.loads(settings)
    assert video.endswith(".mp4")
    decoded, _ = read_video(video)
    assert decoded.shape == (frames, 32, 32, 3)
    assert read_video_metadata(video) == settings
    assert 'data-state="done"' in status and f"seed {settings['seed']}" in status
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
            source, "x", positions="0,1", noise_multipliers="0,0.3", **FAST, api_name="/video_to_video"
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
    with pytest.raises(Exception, match=r"Conditioning Positions: positions contains 9; .*0\.\.4"):
        client.predict(
            [handle_file(path) for path in images], "x", positions="0,9", **FAST, api_name="/frames_to_video"
        )
    with pytest.raises(Exception, match=r"Width: width=40 is not allowed; width must be a multiple of 16"):
        client.predict(handle_file(images[0]), "x", **{**FAST, "width": 40}, api_name="/image_to_video")
    with pytest.raises(Exception, match=r"Prompt: empty; describe the video to generate"):
        client.predict("", **FAST, api_name="/text_to_video")


def test_page_answers_while_the_model_loads_and_auth_protects_it(tmp_path):
    from pusa.app.studio import WAITING_LABEL, build_app, launch_app

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
        assert video.endswith(".mp4") and 'data-state="done"' in status
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
        'class="pusa-error"' in message and "Video: &#x27;clip.mp4&#x27; is not a readable video" in message
    )
    text = tmp_path / "notes.png"
    text.write_text("hello")
    assert "Images: &#x27;notes.png&#x27; is not an image" in studio.check_upload(
        "images", [images[0], str(text)]
    )
    assert 'data-state="idle"' in studio.check_upload("video", None)
