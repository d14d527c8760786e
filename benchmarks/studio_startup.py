"""How fast the studio answers: start-up, first progress after Generate, Image-to-Video end to end.

Each repeat starts a fresh `python -m pusa.app` (what `pusa serve` runs) on a free port, then drives
the page in headless chromium (Playwright, /usr/bin/chromium) like a user:

- page answers:     from starting the process to `GET /` returning 200 (the model may still be loading)
- model ready:      from starting the process to the page's status line saying "ready"
- first progress:   from clicking Generate to the status box first changing (queued / starting / step)
- first step:       from clicking Generate to the status box showing "Step 1/N"
- I2V end to end:   from clicking Generate to the finished video being loaded in the page's <video>

Run: `python benchmarks/studio_startup.py [--model pusa-tiny] [--repeats 3]`. Without chromium it
reports the first two rows and an end-to-end time through gradio_client instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, outputs: Path, port: int) -> tuple[subprocess.Popen, float, str]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pusa.app", "--model", model, "--port", str(port), "--outputs", str(outputs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the studio exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, time.perf_counter() - started, url
        except OSError:
            time.sleep(0.05)


def in_browser(url: str, started: float, image: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    times = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#pusa-status [data-state=ready]", timeout=600_000)
        times["model ready"] = time.perf_counter() - started
        page.wait_for_function("() => !document.querySelector('#i2v-generate').disabled")
        page.locator("#i2v-image input[type=file]").set_input_files(image)
        page.locator("#i2v-prompt textarea").fill("a red circle slides to the left")
        page.wait_for_selector("#i2v-timeline img")
        clicked = time.perf_counter()
        page.locator("#i2v-generate").click()
        page.wait_for_selector("#i2v-progress .pusa-progress:not([data-state=idle])", timeout=60_000)
        times["first progress"] = time.perf_counter() - clicked
        page.wait_for_function(
            "() => /Step [1-9]/.test(document.querySelector('#i2v-progress').innerText) || "
            "document.querySelector('#i2v-progress [data-state=done]')",
            timeout=600_000,
        )
        times["first step"] = time.perf_counter() - clicked
        page.wait_for_function(
            "() => { const v = document.querySelector('#i2v-video video'); return v && v.readyState >= 2; }",
            timeout=600_000,
        )
        times["I2V end to end"] = time.perf_counter() - clicked
        browser.close()
    return times


def with_client(url: str, started: float, image: str) -> dict[str, float]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    clicked = time.perf_counter()
    client.predict(handle_file(image), "a red circle slides to the left", api_name="/image_to_video")
    return {"I2V end to end (gradio_client)": time.perf_counter() - clicked}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="pusa-tiny", help="built-in model or folder (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pusa-studio-bench-"))
    image = str(folder / "first.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    browser = Path(CHROMIUM).exists()
    rows: dict[str, list[float]] = {}
    for repeat in range(options.repeats):
        started = time.perf_counter()
        process, answered, url = start(options.model, folder / f"outputs-{repeat}", free_port())
        try:
            times = {"page answers": answered}
            times.update(in_browser(url, started, image) if browser else with_client(url, started, image))
        finally:
            process.terminate()
            process.wait(30)
        for name, seconds in times.items():
            rows.setdefault(name, []).append(seconds)
    how = "headless chromium" if browser else "gradio_client (no chromium)"
    print(f"pusa studio, model {options.model} (its default steps and size), {os.cpu_count()} CPU cores, "
          f"{how}, median of {options.repeats}")  # fmt: skip
    print(f"{'measure':<34}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, values in rows.items():
        print(f"{name:<34}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")


if __name__ == "__main__":
    main()
