"""What `pusa serve` checks before anything heavy starts: the address it will listen on and the outputs
folder. Each failure is an `InputError` naming the flag (`--port=99999 is not allowed; ...`), said in one
line before the model loads, rather than a traceback from the web server or the history once it has.
Standard library only: importing this costs nothing."""

from __future__ import annotations

import errno
import socket
import tempfile
from pathlib import Path

from ..params import InputError

PORTS = "must be a whole number in 1..65535"
OUTPUTS_ALLOWED = "give a folder the studio can write in (it is created if missing)"


def check_port(port: object) -> int:
    """A TCP port to listen on, 1..65535 (0 would make the web server pick one the page never says)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError("port", port, PORTS)
    return port


def _bind(host: str, port: int) -> None:
    """Bind (not listen) a socket to host:port and let it go: an OSError says why the server could not.
    SO_REUSEADDR as the web server sets it, so that connections of a studio just stopped (TIME_WAIT) do
    not count as the port being in use, while any socket listening on it does."""
    # AI_PASSIVE: "0.0.0.0"/"::" stay wildcard addresses; a name resolves as the server will resolve it.
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


def check_listen(host: str, port: int) -> None:
    """That the studio can listen on host:port: the host is an address of this machine and nothing
    listens on the port yet. The web server also tries the port on localhost whatever the host, so a
    port in use there is refused too."""
    check_port(port)
    try:
        _bind(host, port)
    except socket.gaierror as error:
        raise InputError(
            "host", host, "give an address or name of this machine (127.0.0.1; 0.0.0.0 for every interface)",
            f"is not an address this machine knows ({error.strerror})",
        ) from None  # fmt: skip
    except OSError as error:
        _refuse(host, port, error)
    if host not in ("127.0.0.1", "localhost"):
        try:
            _bind("127.0.0.1", port)
        except OSError as error:
            _refuse(host, port, error)


def _refuse(host: str, port: int, error: OSError) -> None:
    if error.errno == errno.EADDRINUSE:
        raise InputError(
            "port", port, "stop the program that listens on it, or give another --port",
            "is in use (another program listens on it)",
        ) from None  # fmt: skip
    if error.errno == errno.EACCES:
        raise InputError(
            "port", port, "ports below 1024 need administrator rights; give one in 1024..65535",
            "cannot be listened on (permission denied)",
        ) from None  # fmt: skip
    raise InputError(
        "host", host, "give an address of this machine (127.0.0.1; 0.0.0.0 for every interface)",
        f"cannot be listened on ({error.strerror or error})",
    ) from None  # fmt: skip


def check_outputs(outputs: str | Path) -> Path:
    """The outputs folder: created if missing; it must be a folder the studio can write in."""
    folder = Path(outputs).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError("outputs", str(outputs), OUTPUTS_ALLOWED, "is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            "outputs", str(outputs), OUTPUTS_ALLOWED, f"cannot be created ({error.strerror})"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(
            "outputs", str(outputs), OUTPUTS_ALLOWED, f"cannot be written ({error.strerror})"
        ) from None
    return folder
