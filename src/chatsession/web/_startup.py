"""What ``chatsession serve`` checks and prepares before it serves.

Each check turns a mistake into a `ChatSessionError` whose message names the setting and
what it accepts; `report_startup_error` prints it as one line (the traceback too only
with ``DEBUG`` set) and gives exit code 2.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import traceback
from pathlib import Path

from chatsession._exceptions import ChatSessionError, ConfigError
from chatsession.settings import Settings

__all__ = [
    "bind_socket",
    "check_data_dir",
    "configure_logging",
    "display_host",
    "report_startup_error",
]

STARTUP_ERROR_EXIT = 2


def configure_logging() -> None:
    """One handler on the ``chatsession`` logger, at INFO, unless logging is set up already."""
    package = logging.getLogger("chatsession")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def check_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` if need be and prove it writable by writing a file in it."""
    probe = data_dir / f".write-test-{os.getpid()}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"chatsession\n")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if data_dir.exists() and not data_dir.is_dir():
            reason = "it is a file"
        raise ConfigError(
            f"DATA_DIR={str(data_dir)!r} cannot hold dialogs: {reason}. "
            "DATA_DIR (--data-dir) accepts a directory this user can write, created if missing"
        ) from exc


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before anything else is touched."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"HOST={host!r} is not an address of this machine ({exc.strerror}); "
            "HOST (--host) accepts an IP address or a host name, such as 127.0.0.1"
        ) from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use by another process: "
                "choose a free one with --port (PORT)"
            ) from exc
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; set HOST (--host) and "
            "PORT (--port) to an address of this machine and a port this user may open"
        ) from exc
    sock.set_inheritable(True)  # uvicorn's workers, if any, serve the same socket
    return sock


def display_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def report_startup_error(exc: ChatSessionError, settings: Settings) -> int:
    """Print the error as one line (and its traceback under ``DEBUG``); the exit code."""
    if settings.debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"chatsession: {exc}", file=sys.stderr)
    return STARTUP_ERROR_EXIT
