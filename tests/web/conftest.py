"""A real uvicorn on a free port, in a thread, and helpers to read what it stored."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatsession import Settings
from chatsession.storage import YamlDialogStore
from chatsession.web.server import ChatUvicornServer, build_server


@dataclass
class Live:
    """A running server: its URLs, its data dir, and the uvicorn server itself."""

    server: ChatUvicornServer
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def store(self) -> YamlDialogStore:
        return YamlDialogStore(self.data_dir)

    async def archives(self, user_id: str) -> list[Any]:
        return await self.store().list_archives(user_id)

    async def wait_for_archives(self, user_id: str, count: int = 1) -> list[Any]:
        """The user's archives once there are ``count`` of them (the end is asynchronous)."""
        deadline = time.monotonic() + 5
        while True:
            archives = await self.archives(user_id)
            if len(archives) >= count or time.monotonic() > deadline:
                return archives
            await asyncio.sleep(0.02)

    async def wait_for_reply(self, user_id: str) -> Any:
        """The user's current dialog once it ends with a reply (stored after a cut, too)."""
        deadline = time.monotonic() + 5
        while True:
            dialog = await self.store().load_current(user_id)
            done = dialog is not None and dialog.messages[-1].role == "assistant"
            if done or time.monotonic() > deadline:
                return dialog
            await asyncio.sleep(0.02)


LiveFactory = Callable[..., AbstractAsyncContextManager[Live]]


@pytest.fixture
def live(tmp_path: Path) -> LiveFactory:
    """``async with live(**settings) as server``: uvicorn serving the app on a free port."""

    @asynccontextmanager
    async def run(**settings: Any) -> AsyncIterator[Live]:
        settings.setdefault("data_dir", tmp_path / "data")
        settings.setdefault("shutdown_grace", 2.0)
        settings.setdefault("chat_model", "echo")
        config = Settings(**settings)
        server = build_server(config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the server did not start")
                await asyncio.sleep(0.01)
            yield Live(server, port, config.data_dir)
        finally:
            server.should_exit = True
            await asyncio.to_thread(thread.join, 30)
            sock.close()

    return run


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Process:
    popen: subprocess.Popen[str]
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)  # only ever the process this test started

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)


@contextmanager
def serve_process(data_dir: Path, *args: str, **env: str) -> Iterator[Process]:
    """``chatsession serve`` as a child process, ready to take requests."""
    port = free_port()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "CHAT_MODEL": "echo", **env}
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatsession",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *args,
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    process = Process(popen, port, data_dir)
    try:
        deadline = time.monotonic() + 20
        while True:
            if popen.poll() is not None:
                output = popen.stdout.read() if popen.stdout else ""
                raise RuntimeError(f"chatsession serve exited early:\n{output}")
            try:
                if httpx.get(f"{process.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chatsession serve did not start in time")
            time.sleep(0.05)
        yield process
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait(10)
        if popen.stdout:
            popen.stdout.close()
