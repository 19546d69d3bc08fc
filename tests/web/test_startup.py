"""``chatsession serve`` at startup: configuration mistakes, the port, the order of its logs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from chatsession.domain import Message
from chatsession.storage import _yaml_format as fmt
from tests.web.conftest import free_port

_SERVE = (sys.executable, "-m", "chatsession", "serve")


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DEBUG"))}
    return subprocess.run(
        [*_SERVE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**environment, **env},
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--model", "nope"], "CHAT_MODEL='nope' is not a model chatsession knows"),
        (["--model", "local", "--model-path", "/no/such.gguf"], "MODEL_PATH='/no/such.gguf'"),
        (["--model", "openai:gpt-4o-mini"], "needs a key: set OPENAI_API_KEY"),
        (["--session-timeout", "5min"], "--session-timeout '5min' is not accepted"),
        (["--host", "no-such-host.invalid", "--trusted-proxy"], "HOST='no-such-host.invalid'"),
    ],
)
def test_a_configuration_mistake_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], names: str
) -> None:
    """A bad model, path, key or value: exit 2, one line naming it, no traceback."""
    result = _serve("--port", str(free_port()), "--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert names in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_dir_that_cannot_hold_dialogs_is_named(tmp_path: Path) -> None:
    """DATA_DIR a file, or under one: exit 2 with a line saying what DATA_DIR accepts."""
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for data_dir in (a_file, a_file / "below"):
        result = _serve("--port", str(free_port()), "--data-dir", str(data_dir), "--model", "echo")
        assert result.returncode == 2
        assert f"DATA_DIR={str(data_dir)!r} cannot hold dialogs" in result.stderr
        assert "accepts a directory this user can write" in result.stderr
    assert a_file.read_text() == "not a directory"


def test_a_traceback_only_with_debug(tmp_path: Path) -> None:
    """With DEBUG set, the same mistake also prints its traceback."""
    result = _serve("--port", str(free_port()), "--model", "nope", DEBUG="1")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("chatsession: CHAT_MODEL")


def test_a_port_in_use_names_the_port_and_the_flag(tmp_path: Path) -> None:
    """Port taken: exit 2, one line naming the port and --port; the data dir is untouched."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data_dir = tmp_path / "data"
        leftover = _leave_dialog(data_dir)
        result = _serve("--port", str(port), "--data-dir", str(data_dir), "--model", "echo")
    assert result.returncode == 2
    assert result.stderr == (
        f"chatsession: port {port} on 127.0.0.1 is in use by another process: "
        "choose a free one with --port (PORT)\n"
    )
    assert leftover.exists()  # not recovered: a server that cannot serve touches nothing


def _leave_dialog(data_dir: Path) -> Path:
    path = data_dir / "users" / "alice" / "dialogs" / "current.yaml"
    path.parent.mkdir(parents=True)
    t0 = datetime(2024, 1, 15, tzinfo=UTC)
    path.write_text(
        fmt.dump_header("alice", "old", t0) + fmt.dump_message(Message("user", "hi", t0))
    )
    return path


def test_listening_is_said_after_the_port_is_bound_and_dialogs_recovered(tmp_path: Path) -> None:
    """The log's order: recovery, then "listening", and by then the port answers."""
    data_dir = tmp_path / "data"
    _leave_dialog(data_dir)
    port = free_port()
    popen = subprocess.Popen(
        [*_SERVE, "--port", str(port), "--data-dir", str(data_dir), "--model", "echo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert popen.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = popen.stdout.readline()
            lines.append(line)
            if "listening" in line or not line:
                break
        assert "listening on http://127.0.0.1:" in lines[-1], lines
        assert any("recovered the dialog of 'alice'" in line for line in lines[:-1]), lines
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        popen.send_signal(signal.SIGTERM)  # only the process this test started
        popen.wait(20)
        if popen.stdout:
            popen.stdout.close()


def test_session_debug_prints_each_line_once(tmp_path: Path) -> None:
    """DEBUG=session:* logs a session's start and end once each."""
    port = free_port()
    popen = subprocess.Popen(
        [*_SERVE, "--port", str(port), "--data-dir", str(tmp_path / "data"), "--model", "echo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "DEBUG": "session:*"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        httpx.post(
            f"http://127.0.0.1:{port}/chat",
            headers={"x-user-id": "alice"},
            json={"message": "hi"},
            timeout=5,
        )
    finally:
        popen.send_signal(signal.SIGTERM)
        output, _ = popen.communicate(timeout=20)
    started = [line for line in output.splitlines() if "started for 'alice'" in line]
    ended = [line for line in output.splitlines() if "of 'alice' ended (shutdown)" in line]
    assert (len(started), len(ended)) == (1, 1), output
