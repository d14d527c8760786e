"""The studio under a long load: rounds of short jobs from several clients, one server restart in the
middle; prints the server's resident memory (RSS) after each round and what became of every job.

Run: `python benchmarks/soak.py [--rounds 5] [--jobs 10] [--clients 3] [--restart-after 2]` (the built-in
model, 2 steps, 64x64). `tests/test_soak.py` checks the same flow for lost jobs; memory is measured here.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(port: int, outputs: Path, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pusa.app", "--port", str(port), "--outputs", str(outputs)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process
        except OSError:
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10, help="jobs per round")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--restart-after", type=int, default=2, help="restart the server after this round")
    args = parser.parse_args()
    from gradio_client import Client

    from pusa.serving.history import History

    folder = Path(tempfile.mkdtemp(prefix="pusa-soak-"))
    port, log = free_port(), (folder / "studio.log").open("a")
    server = start(port, folder / "outputs", log)
    url = f"http://127.0.0.1:{port}/"
    print(f"{args.rounds} rounds x {args.jobs} jobs from {args.clients} clients; restart after round "
          f"{args.restart_after}; server log {folder / 'studio.log'}")  # fmt: skip
    print("| round | jobs ended | server RSS MiB | seconds |")
    print("|---:|---:|---:|---:|")

    def one(number: int) -> str:
        try:
            client = Client(url, verbose=False, download_files=False)
            client.predict(f"a red circle {number}", seed=number, steps=2, api_name="/text_to_video")
            return "done"
        except Exception as error:
            return f"{type(error).__name__}"

    try:
        for round_ in range(1, args.rounds + 1):
            started = time.perf_counter()
            numbers = range((round_ - 1) * args.jobs, round_ * args.jobs)
            with ThreadPoolExecutor(args.clients) as pool:
                outcomes = list(pool.map(one, numbers))
            ended = sum(outcome == "done" for outcome in outcomes)
            print(
                f"| {round_} | {ended}/{args.jobs} | {rss_mib(server.pid):.0f} | {time.perf_counter() - started:.1f} |"
            )
            if round_ == args.restart_after:
                server.terminate()
                server.wait(30)
                server = start(port, folder / "outputs", log)
                print("| restart | | | |")
    finally:
        server.terminate()
        server.wait(30)
    history = History(folder / "outputs")
    print(
        f"videos: {len(history.list())}, failed: {len(history.failures())}, pending: {len(history.pending())}"
    )


if __name__ == "__main__":
    main()
