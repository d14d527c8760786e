"""What several test modules build or check: tiny model configs, random media files, a studio subprocess,
and `raises_input_error` (imported as `helpers`: pytest puts tests/ on sys.path). The fixtures that use
them are in conftest.py."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pusa.params import InputError
from pusa.video import write_video

# PusaTransformer3DModel at toy size: 2 blocks, 2 heads of 12, 4 latent channels.
TINY_DIT = dict(
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=12,
    ffn_dim=32,
    text_dim=32,
    freq_dim=16,
    in_channels=4,
    out_channels=4,
    rope_max_seq_len=32,
)


def random_pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint8 noise of `shape` ([H, W, 3] an image, [F, H, W, 3] a clip), the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def save_image(path: str | Path, height: int = 24, width: int = 40, seed: int = 0) -> Path:
    """A random RGB PNG (or any format Pillow writes for the suffix)."""
    Image.fromarray(random_pixels((height, width, 3), seed)).save(path)
    return Path(path)


def save_clip(path: str | Path, frames: int, height: int = 32, width: int = 48, seed: int = 0) -> Path:
    """A random H.264 mp4 at 8 fps."""
    return write_video(path, random_pixels((frames, height, width, 3), seed), 8.0)


_ANY: Any = object()  # raises_input_error's "any value"


@contextmanager
def raises_input_error(param: str, value: Any = _ANY) -> Iterator[pytest.ExceptionInfo[InputError]]:
    """`pytest.raises(InputError)` that also checks the parameter it names (and the value, when given).

    Error tests assert what a face needs to name the parameter (`.param`, `.value`), not the message's
    wording, so rewording a message breaks only the tests that are about the wording. Yields the
    ExceptionInfo: `caught.value` is the error, for checks of `.allowed` or a key fact of the message."""
    with pytest.raises(InputError) as caught:
        yield caught
    error = caught.value
    assert error.param == param, f"the error names {error.param!r}, not {param!r}: {error}"
    if value is not _ANY:
        assert error.value == value, f"the error's value is {error.value!r}, not {value!r}: {error}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Studio:
    """`python -m pusa.app` (what `pusa serve` runs) in a subprocess, on the default model."""

    def __init__(
        self, outputs: Path, port: int, log: Path, extra_args: tuple[str, ...] = (), env: dict | None = None
    ) -> None:
        self.outputs, self.port, self.log = outputs, port, log
        self.extra_args = tuple(extra_args)  # more `pusa serve` flags, e.g. ("--workers", "2")
        self.env = dict(env or {})  # more environment variables
        self.url = f"http://127.0.0.1:{port}/"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> float:
        """Start and wait until the page answers; returns the seconds that took."""
        started = time.perf_counter()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("PUSA_AUTH", None)
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pusa.app",
                    "--port",
                    str(self.port),
                    "--outputs",
                    str(self.outputs),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the studio exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the studio did not answer within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels (a decompression bomb, without the
    gigabytes): an 8x8 image with its IHDR size rewritten and the chunk's CRC computed again."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")  # the chunk type; its 13 bytes of data follow, then the CRC
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    return bytes(data)
