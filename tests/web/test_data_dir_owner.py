"""Two real servers on one data dir: the second is refused, the first loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.web.conftest import free_port, serve_process


def _chat(url: str, text: str) -> str:
    reply = httpx.post(
        f"{url}/chat", headers={"x-user-id": "alice"}, json={"message": text}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    response: str = reply.json()["response"]
    return response


def _current(url: str) -> list[str]:
    reply = httpx.get(f"{url}/dialogs/current", headers={"x-user-id": "alice"}, timeout=10)
    return [message["content"] for message in reply.json()["dialog"]["messages"]]


def _serve_second(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "chatsession",
            "serve",
            "--port",
            str(free_port()),
            *("--data-dir", str(data_dir), "--model", "echo"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CHAT_MODEL": "echo"},
    )


def test_a_second_server_on_a_data_dir_in_use_exits_2_and_the_first_loses_nothing(
    tmp_path: Path,
) -> None:
    """Refused with exit 2 and one line naming the owner; the first keeps every message."""
    data_dir = tmp_path / "data"
    with serve_process(data_dir) as first:
        assert _chat(first.url, "before") == "echo: before"
        second = _serve_second(data_dir)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"process {first.popen.pid} serving http://127.0.0.1:{first.port}" in lines[0]
        assert "Several instances share one DATA_DIR through Redis (REDIS_URL)" in lines[0]
        assert _chat(first.url, "after") == "echo: after"
        assert _current(first.url) == ["before", "echo: before", "after", "echo: after"]
        assert not list((data_dir / "users" / "alice" / "dialogs" / "archived").iterdir())


def test_a_server_killed_with_sigkill_leaves_the_data_dir_free_at_once(tmp_path: Path) -> None:
    """kill -9 releases the lock: the next server starts and recovers the dialog whole."""
    data_dir = tmp_path / "data"
    with serve_process(data_dir) as first:
        _chat(first.url, "kept")
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        with serve_process(data_dir) as second:
            archives = httpx.get(
                f"{second.url}/dialogs", headers={"x-user-id": "alice"}, timeout=10
            ).json()
    assert [(a["endReason"], a["messageCount"]) for a in archives["archives"]] == [("recovered", 2)]
