"""`pusa serve` refuses an address or an outputs folder it cannot use in one line that names the flag,
exit status 2, before the model loads (not as a traceback from the web server or the history after it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from pusa.app import startup_checks


def serve(*flags: str, cwd: Path) -> subprocess.CompletedProcess:
    """`pusa serve FLAGS` in a fresh process (a check that failed to stop it would start a server: the
    timeout ends the test then)."""
    env = {key: value for key, value in os.environ.items() if key != "PUSA_AUTH"}
    return subprocess.run(
        [sys.executable, "-m", "pusa.main", "serve", *flags],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert f"pusa serve: error: {message}" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Loading weights" not in result.stderr  # refused before the model loads


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_is_refused(tmp_path, port):
    result = serve("--port", port, "--outputs", str(tmp_path / "outputs"), cwd=tmp_path)
    assert_refused(result, f"--port={port} is not allowed; must be a whole number in 1..65535")
    assert not (tmp_path / "outputs").exists()  # refused before anything was made


def test_a_port_in_use_is_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve("--port", str(port), "--outputs", str(tmp_path / "outputs"), cwd=tmp_path)
    assert_refused(result, f"--port={port} is in use (another program listens on it);")


def test_a_host_that_is_not_this_machine_is_refused(tmp_path):
    # 192.0.2.1 is reserved for documentation (RFC 5737): no machine has it
    result = serve("--host", "192.0.2.1", "--port", str(helpers.free_port()), cwd=tmp_path)
    assert_refused(result, "--host='192.0.2.1' cannot be listened on (")


def test_outputs_that_is_a_file_is_refused(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0\n")
    result = serve("--outputs", str(passwd), "--port", str(helpers.free_port()), cwd=tmp_path)
    assert_refused(
        result, f"--outputs={str(passwd)!r} is not a folder; give a folder the studio can write in"
    )
    assert passwd.read_text() == "root:x:0:0\n"


def test_outputs_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    below_a_file = str(tmp_path / "file" / "outputs")
    result = serve("--outputs", below_a_file, "--port", str(helpers.free_port()), cwd=tmp_path)
    assert_refused(result, f"--outputs={below_a_file!r} cannot be created (Not a directory)")


def test_outputs_that_cannot_hold_the_history_is_refused(tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "videos").write_text("a file where the videos folder goes")
    result = serve("--outputs", str(tmp_path / "outputs"), "--port", str(helpers.free_port()), cwd=tmp_path)
    assert_refused(result, f"--outputs={str(tmp_path / 'outputs')!r} cannot hold the history (")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write in any folder")
def test_outputs_that_cannot_be_written_is_refused(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir(mode=0o500)
    try:
        with helpers.raises_input_error("outputs", str(folder)) as caught:
            startup_checks.check_outputs(folder)
        assert "cannot be written" in str(caught.value)
    finally:
        folder.chmod(0o700)


def test_the_checks_name_their_parameter(tmp_path):
    for bad in (0, 65536, True, "80"):
        with helpers.raises_input_error("port", bad):
            startup_checks.check_port(bad)
    assert startup_checks.check_port(7860) == 7860
    startup_checks.check_listen("127.0.0.1", helpers.free_port())  # a free port on this machine: fine
    assert startup_checks.check_outputs(tmp_path / "new" / "outputs").is_dir()  # created when missing
