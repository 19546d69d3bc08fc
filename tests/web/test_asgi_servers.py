"""The app factory under the ASGI servers people deploy with, stopped by a real SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from chatsession.storage import YamlDialogStore
from tests.web.conftest import free_port

BIN = Path(sys.executable).parent
FACTORY = "chatsession.web:create_app_from_env"


def _command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [str(BIN / "uvicorn"), FACTORY, "--factory", "--port", str(port)]
    if server == "gunicorn":
        worker = ("-k", "uvicorn.workers.UvicornWorker", "-w", "1")
        return [str(BIN / "gunicorn"), *worker, "-b", f"127.0.0.1:{port}", f"{FACTORY}()"]
    return [str(BIN / "hypercorn"), "-b", f"127.0.0.1:{port}", f"{FACTORY}()"]


@contextmanager
def _running(server: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "CHAT_MODEL": "echo",
        "HOME": str(tmp_path),  # gunicorn keeps a control socket under $HOME
    }
    popen = subprocess.Popen(
        _command(server, port),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert popen.poll() is None, popen.stdout.read() if popen.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"{server} did not start"
                time.sleep(0.1)
        yield popen, port
    finally:
        if popen.poll() is None:
            popen.kill()  # only the process this test started
        popen.wait(10)
        if popen.stdout:
            popen.stdout.close()


async def _reasons(tmp_path: Path, user: str) -> list[str | None]:
    return [a.end_reason for a in await YamlDialogStore(tmp_path / "data").list_archives(user)]


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
async def test_sigterm_under_uvicorn_archives_open_websockets_as_shutdown(
    server: str, tmp_path: Path
) -> None:
    """Stock uvicorn closes WebSockets with 1012 on SIGTERM: their sessions end as shutdown."""
    with _running(server, tmp_path) as (popen, port):
        async with connect(f"ws://127.0.0.1:{port}/ws?userId=alice") as ws:
            await ws.recv()  # the session frame
            await ws.send(json.dumps({"text": "hello"}))
            assert json.loads(await ws.recv())["content"] == "echo: hello"
            await ws.recv()  # done
            async with httpx.AsyncClient() as http:
                await http.post(
                    f"http://127.0.0.1:{port}/chat",
                    headers={"x-user-id": "bob"},
                    json={"message": "hi"},
                )
            popen.send_signal(signal.SIGTERM)
            await asyncio.wait_for(ws.wait_closed(), 20)
            assert ws.close_code == 1012
        # Stock uvicorn re-raises the signal once it has shut down; gunicorn exits 0.
        assert await asyncio.to_thread(popen.wait, 20) in (0, -signal.SIGTERM)
    assert await _reasons(tmp_path, "alice") == ["shutdown"]
    assert await _reasons(tmp_path, "bob") == ["shutdown"]


async def test_hypercorn_serves_the_factory_and_archives_at_sigterm(tmp_path: Path) -> None:
    """Under hypercorn the factory serves chats, and SIGTERM archives them as shutdown."""
    with _running("hypercorn", tmp_path) as (popen, port):
        async with httpx.AsyncClient() as http:
            reply = await http.post(
                f"http://127.0.0.1:{port}/chat",
                headers={"x-user-id": "bob"},
                json={"message": "hi"},
            )
            assert reply.json() == {"response": "echo: hi"}
        popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(popen.wait, 20) == 0
    assert await _reasons(tmp_path, "bob") == ["shutdown"]
