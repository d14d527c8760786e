"""The studio in a real browser (Debian's chromium driven by Playwright), against `python -m pusa.app`
(what `pusa serve` runs) on the default model (the shipped pusa-tiny).

One flow, as a user would go: open the page, run Image-to-Video with an uploaded image and watch the
video play, reload the page and find it again; type a number past a slider's range and be refused by name; type bad positions in Multi-Frames, see the error, fix them and generate; make
a long video from Text-to-Video's Long video control, then one at the 4-step preset, then one with a
LoRA set in the LoRA panel; restart the
server (with a job left in its queue, which it then runs) and find the videos in History, then refill
a form from one. Every request the page makes is
recorded and must stay on this machine. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers import Studio, free_port
from pusa.pipeline import GenerationRequest
from pusa.serving.history import History, JobSpec
from pusa.weights.registry import model_defaults

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Generous on purpose: CI's 2 cores may be busy with another process; a wait that passes costs nothing more.
UI_TIMEOUT = 30_000  # ms: the page reacting to a click, an upload or a reload
JOB_TIMEOUT = 120_000  # ms: a job (or a model load and a job) finishing

pytestmark = [
    pytest.mark.slow,  # a studio subprocess and a real browser
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture
def inputs(tmp_path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("a", "b"):
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        paths[name] = str(path)
    return paths


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"studio-{name}.png"), full_page=True)


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label, exact=True).click()


def wait_enabled(page, selector: str, timeout: float = JOB_TIMEOUT) -> None:
    page.wait_for_function(
        f"() => {{ const b = document.querySelector('{selector}'); return b && !b.disabled; }}",
        timeout=timeout,
    )


def generate(page, tab: str) -> str:
    """Press Generate on `tab`, wait for the job to end; returns the final status text."""
    wait_enabled(page, f"#{tab}-generate")
    # Mark what the status shows now, so only the new job's status counts.
    page.evaluate(
        f"() => document.querySelector('#{tab}-progress :is(.pusa-progress, .pusa-error)')?.setAttribute('data-stale', '1')"
    )
    page.locator(f"#{tab}-generate").click()
    fresh = ":not([data-stale])"
    page.wait_for_selector(
        f"#{tab}-progress :is(.pusa-progress, .pusa-error){fresh}:not([data-state=idle])", timeout=UI_TIMEOUT
    )
    page.wait_for_selector(
        f"#{tab}-progress :is(.pusa-progress[data-state=done], .pusa-progress[data-state=cancelled], "
        f".pusa-error){fresh}",
        timeout=JOB_TIMEOUT,
    )
    return page.locator(f"#{tab}-progress").inner_text()


def wait_video_plays(page, selector: str) -> dict:
    """The <video> loaded its data and plays (its clock moves), or at least knows its duration."""
    page.wait_for_function(
        f"""() => {{
            const v = document.querySelector('{selector} video');
            return v && v.readyState >= 2 && (v.currentTime > 0 || v.duration > 0);
        }}""",
        timeout=UI_TIMEOUT,
    )
    page.evaluate(f"() => document.querySelector('{selector} video').play()")
    page.wait_for_function(
        f"() => document.querySelector('{selector} video').currentTime > 0", timeout=UI_TIMEOUT
    )
    return page.evaluate(
        f"() => {{ const v = document.querySelector('{selector} video'); "
        "return {readyState: v.readyState, duration: v.duration, currentTime: v.currentTime}; }"
    )


def test_studio_in_a_real_browser(tmp_path, inputs):
    from playwright.sync_api import sync_playwright

    studio = Studio(tmp_path / "outputs", free_port(), tmp_path / "studio.log")
    requests: list[str] = []
    try:
        studio.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.on("request", lambda request: requests.append(request.url))
            pages = [context.new_page()]
            try:
                run_flow(pages, context, studio, inputs)
            except Exception:
                shot(pages[-1], "failure")
                raise
            browser.close()
    finally:
        studio.stop()

    assert requests, "the page made no requests at all?"
    local = (f"http://127.0.0.1:{studio.port}/", "data:", "blob:")
    outside = sorted({url for url in requests if not url.startswith(local)})
    assert outside == [], f"the page made requests that leave this machine: {outside}"


def run_flow(pages: list, context, studio: Studio, inputs: dict[str, str]) -> None:
    page = pages[0]
    page.goto(studio.url)
    wait_enabled(page, "#i2v-generate")  # the page is wired and the model is ready

    # Image-to-Video with an uploaded image: the timeline shows its thumbnail; the video plays.
    page.locator("#i2v-image input[type=file]").set_input_files(inputs["a"])
    page.wait_for_function(  # checked as it arrives
        "() => document.querySelector('#i2v-progress').innerText.includes('Uploaded · a.png, 64x48')",
        timeout=UI_TIMEOUT,
    )
    page.locator("#i2v-prompt textarea").fill("a red circle slides to the left")
    page.wait_for_selector("#i2v-timeline .pusa-timeline img", timeout=UI_TIMEOUT)
    # A number typed past a slider's range is kept as typed (gradio's box clamped it, silently, and the
    # clamped value ran): Generate refuses it naming the field.
    steps = page.locator("#i2v-steps input[type=number]")
    own_steps = steps.input_value()
    steps.fill("500")
    page.locator("#i2v-prompt textarea").click()  # the box loses focus, where gradio clamped
    assert steps.input_value() == "500"
    marked = "document.querySelector('#i2v-steps input[type=number]').classList.contains('pusa-out-of-range')"
    page.wait_for_function(f"() => {marked}", timeout=UI_TIMEOUT)  # the box says it is outside the range
    status = generate(page, "i2v")
    assert "Inference Steps: 500 is not allowed" in status, status
    steps.fill(own_steps)
    page.locator("#i2v-prompt textarea").click()
    page.wait_for_function(f"() => !{marked}", timeout=UI_TIMEOUT)

    status = generate(page, "i2v")
    assert "Done in" in status and "seed" in status, status
    video = wait_video_plays(page, "#i2v-video")
    assert video["duration"] > 0 and video["currentTime"] > 0, video
    shot(page, "image-to-video")

    # A reload keeps the tab's job (the browser stores its id): its result comes back, Cancel still works.
    page.reload()
    page.wait_for_function(
        "() => (document.querySelector('#i2v-progress')?.innerText || '').includes('Done in')",
        timeout=UI_TIMEOUT,
    )
    wait_video_plays(page, "#i2v-video")

    # Multi-Frames: bad positions show an error as they are typed and when generating.
    open_tab(page, "Multi-Frames to Video")
    page.locator("#frames-images input[type=file]").set_input_files([inputs["a"], inputs["b"]])
    page.locator("#frames-prompt textarea").fill("from one noise to another")
    positions = page.locator("#frames-positions textarea")
    positions.fill("0,9")
    error = page.locator("#frames-timeline .pusa-error")
    error.wait_for(timeout=UI_TIMEOUT)
    assert "Conditioning Positions: [0, 9] contains 9" in error.inner_text()
    status = generate(page, "frames")
    assert "Conditioning Positions: [0, 9] contains 9" in status, status
    shot(page, "multi-frames-error")
    positions.fill("0,4")
    page.wait_for_selector("#frames-timeline .pusa-timeline img", timeout=UI_TIMEOUT)
    assert page.locator("#frames-timeline .pusa-timeline-cell").count() == 5
    assert (
        "latent 4 = frames 13–16: image 2, noise multiplier 0.5"
        in page.locator("#frames-timeline").inner_text()
    )
    status = generate(page, "frames")
    assert "Done in" in status, status
    wait_video_plays(page, "#frames-video")
    shot(page, "multi-frames")

    for label, name in (("Video-to-Video", "video-to-video"), ("Text-to-Video", "text-to-video")):
        open_tab(page, label)
        page.wait_for_timeout(500)
        shot(page, name)
    # Text-to-Video's Long video control: the timeline shows the chunks; one video of the total comes back.
    open_tab(page, "Text-to-Video")
    page.locator("#t2v-long").get_by_text("Long video", exact=True).first.click()
    total = page.locator("#t2v-long-frames input")
    total.fill("41")
    total.press("Tab")
    page.wait_for_function(
        "() => document.querySelectorAll('#t2v-long-timeline .pusa-long-chunk').length === 4",
        timeout=UI_TIMEOUT,
    )
    assert "chunk 2: frames 17–24, opens on 8–16" in page.locator("#t2v-long-timeline").inner_text()
    page.locator("#t2v-prompt textarea").fill("a red circle slides to the left")
    status = generate(page, "t2v")
    assert "Done in" in status, status
    video = wait_video_plays(page, "#t2v-video")
    fps = model_defaults("pusa-tiny").fps
    assert video["duration"] > 2 * 17 / fps, video  # 41 frames, not one clip of 17
    shot(page, "long-video")
    # The 4-step preset, picked on the page: 4 steps at cfg 1.0 (pusa-tiny has no speed LoRA: a warning).
    total.fill("0")
    total.press("Tab")
    page.locator("#t2v-preset").get_by_text("4-step", exact=True).click()
    status = generate(page, "t2v")
    assert "Done in" in status, status
    settings = History(studio.outputs).list()[0].settings
    assert (settings["preset"], settings["num_inference_steps"], settings["cfg"]) == ("4-step", 4, 1.0), (
        settings
    )
    assert settings["dit_forwards"] == 4 and settings["num_frames"] == 17, settings
    page.locator("#t2v-preset").get_by_text("none", exact=True).click()
    # The LoRA panel: the model's own LoRA picked from a row's list at strength 0.5 reaches the job's stack.
    page.locator("#t2v-lora-panel").get_by_text("LoRAs", exact=True).first.click()
    page.locator("#t2v-lora-1-file input").click()
    page.get_by_role("option", name="pusa_tiny_lora.safetensors").click()
    page.locator("#t2v-lora-1-strength :is(input, textarea)").fill("0.5")
    page.locator("#t2v-lora-1-strength :is(input, textarea)").press("Tab")
    status = generate(page, "t2v")
    assert "Done in" in status, status
    stack = History(studio.outputs).list()[0].settings["lora_stack"]
    assert [(Path(e["path"]).name, e["strength"], e["expert"]) for e in stack] == [
        ("pusa_tiny_lora.safetensors", 0.5, "all")
    ], stack
    shot(page, "lora-panel")
    page.locator("#t2v-lora-clear").click()
    open_tab(page, "Video-to-Video")
    page.locator("#v2v-recipe-completion").click()
    page.wait_for_function(
        "() => document.querySelector('#v2v-positions textarea').value === '0,4'", timeout=UI_TIMEOUT
    )

    # A restart: the history lives on disk, and so does a job left unfinished (stored here as a
    # server killed mid-queue would have left it): the restarted studio runs it.
    # The page is closed first and a new one opened after: an open gradio page that lost its server
    # reloads itself when the server is back (its reconnect loop), at a moment of its own choosing,
    # which interrupted a `goto` made at the same time. A closed page cannot race anything.
    page.close()
    studio.stop()
    left = JobSpec(GenerationRequest(task="t2v", prompt="left in the queue", seed=5), form={"tab": "t2v"})
    assert History(studio.outputs).remember("leftover0001", time.time(), left)
    studio.start()
    page = context.new_page()
    pages.append(page)
    page.goto(studio.url)
    open_tab(page, "History")
    table = page.locator("#history-table")
    page.wait_for_function(
        "() => (document.querySelector('#history-table')?.innerText || '').includes('Multi-Frames to Video')",
        timeout=UI_TIMEOUT,
    )
    # The restored job runs once the model is loaded (the table refreshes whenever a job saves a video).
    page.wait_for_function(
        "() => (document.querySelector('#history-table')?.innerText || '').includes('left in the queue')",
        timeout=JOB_TIMEOUT,
    )
    assert "Image-to-Video" in table.inner_text()
    assert "a red circle slides to the left" in table.inner_text()
    wait_video_plays(page, "#history-video")  # the newest is opened
    shot(page, "history")
    page.locator("#history-table .body-cell", has_text="Image-to-Video").first.click()
    page.wait_for_function(
        "() => (document.querySelector('#history-picker input')?.value || '').includes('Image-to-Video')",
        timeout=UI_TIMEOUT,
    )
    wait_enabled(page, "#history-use")
    page.locator("#history-use").click()
    page.wait_for_function(
        "() => document.querySelector('#i2v-prompt textarea')?.value === 'a red circle slides to the left'",
        timeout=UI_TIMEOUT,
    )
    page.wait_for_selector("#i2v-image img", timeout=UI_TIMEOUT)  # the kept upload came back
    shot(page, "use-these-settings")


def test_the_page_shows_a_remote_workers_progress(tmp_path):
    """`pusa serve --workers 1 --parallel 2`: a Ray worker that is a 2-process group runs the job; the page
    shows its steps as they happen (not only the end) and says which worker made the video."""
    pytest.importorskip("ray")
    from playwright.sync_api import sync_playwright

    flags = ("--workers", "1", "--parallel", "2")
    studio = Studio(tmp_path / "outputs", free_port(), tmp_path / "studio.log", flags)
    try:
        studio.start(timeout=120)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            try:
                page.goto(studio.url)
                open_tab(page, "Text-to-Video")
                wait_enabled(page, "#t2v-generate")  # the worker's model is loaded
                page.locator("#t2v-prompt textarea").fill("a red circle slides to the left")
                page.locator("#t2v-steps input[type=number]").fill("50")
                page.locator("#t2v-prompt textarea").click()
                page.locator("#t2v-generate").click()
                # a step part-way, streamed back from the worker while it runs
                page.wait_for_function(
                    """() => { const t = document.querySelector('#t2v-progress').innerText;
                               const m = t.match(/Step (\\d+)\\/50/); return m && +m[1] < 50; }""",
                    timeout=JOB_TIMEOUT,
                )
                page.wait_for_function(
                    "() => document.querySelector('#t2v-progress').innerText.includes('Done in')",
                    timeout=JOB_TIMEOUT,
                )
                status = page.locator("#t2v-progress").inner_text()
                assert "worker 0 on " in status and "2 processes (context parallel)" in status, status
                shot(page, "remote-worker")
            except Exception:
                shot(page, "remote-worker-failure")
                raise
            browser.close()
    finally:
        studio.stop()
    assert len(History(tmp_path / "outputs").list()) == 1


# The docs' pictures (docs/images/) come from this test: `PUSA_DOCS_SCREENSHOTS=1` writes them there;
# otherwise they go to test-artifacts/, so a CI run never changes a tracked file.
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def docs_shot(target, name: str) -> Path:
    """A viewport (or element) screenshot for the docs; returns where it went."""
    folder = DOCS_IMAGES if os.environ.get("PUSA_DOCS_SCREENSHOTS") == "1" else ARTIFACTS / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    target.screenshot(path=str(path))
    return path


def test_docs_screenshots_of_the_studio(tmp_path):
    """The studio after a text-to-video job, the Multi-Frames timeline and the History tab, as the docs
    show them; each picture is a real PNG of the viewport's size."""
    from playwright.sync_api import sync_playwright

    # Two frames of pusa-tiny's world (a red circle on dark blue, left then right) as keyframes.
    keyframes = []
    for name, x in (("start", 44), ("end", 20)):
        image = Image.new("RGB", (64, 64), (20, 30, 90))
        ImageDraw.Draw(image).ellipse((x - 7, 25, x + 7, 39), fill=(220, 40, 40))
        keyframes.append(str(tmp_path / f"{name}.png"))
        image.save(keyframes[-1])

    studio = Studio(tmp_path / "outputs", free_port(), tmp_path / "studio.log")
    written: list[Path] = []
    try:
        studio.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            try:
                page.goto(studio.url)
                open_tab(page, "Text-to-Video")
                page.locator("#t2v-prompt textarea").fill(
                    "a red circle slides to the left over a dark blue background"
                )
                status = generate(page, "t2v")
                assert "Done in" in status, status
                wait_video_plays(page, "#t2v-video")
                written.append(docs_shot(page, "studio"))

                open_tab(page, "Multi-Frames to Video")
                page.locator("#frames-images input[type=file]").set_input_files(keyframes)
                page.locator("#frames-positions textarea").fill("0,4")
                page.wait_for_selector("#frames-timeline .pusa-timeline img", timeout=UI_TIMEOUT)
                assert page.locator("#frames-timeline .pusa-timeline-cell").count() == 5
                written.append(docs_shot(page.locator("#frames-timeline"), "timeline"))

                open_tab(page, "History")
                page.wait_for_function(
                    "() => (document.querySelector('#history-table')?.innerText || '').includes('Text-to-Video')",
                    timeout=UI_TIMEOUT,
                )
                wait_video_plays(page, "#history-video")
                written.append(docs_shot(page, "history"))
            except Exception:
                shot(page, "docs-failure")
                raise
            browser.close()
    finally:
        studio.stop()
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width > 0, path
    with Image.open(written[0]) as picture:
        assert picture.size == (1280, 800), picture.size
