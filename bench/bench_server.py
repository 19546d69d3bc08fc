"""Server benchmarks: WebSocket round trips, idle connection memory, SIGTERM with sessions.

Run ``python -m bench.bench_server`` (``--quick`` for a smaller run). Everything targets
127.0.0.1, and every count and duration is bounded. Servers run as child processes so the
load generator does not share their CPU time slices; the bare Starlette echo server is
measured in the same run as the chat server, so the ratio compares like with like.

1. Chat round trips per second over WebSocket (echo model, batched fsync) at 50 and 500
   concurrent connections, against a bare Starlette WebSocket echo server; p50 and p99.
   Three more lines show where the difference goes: the bare server answering with the
   two frames of a chat reply; the least a stored reply takes (parse the frame, append two
   records to a file, send two frames: no sessions, model or checks); and the chat server
   keeping dialogs in memory. Each line also gives the server's CPU time per round trip
   and how busy the load generator was: a load generator near 100% means that line
   measured the client, not the server. ``python -m bench instructions`` counts the same
   servers' instructions per round trip, which the machine's load does not change.
2. Memory per idle WebSocket connection (each its own user and session) with 10,000 held.
3. SIGTERM with 1,000 active sessions: time until the process exits, and how many
   sessions were archived with reason ``shutdown``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench._timing import Verdict, check

HOST = "127.0.0.1"


# -- servers under test ------------------------------------------------------------------


def _bare_echo_app() -> object:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    async def frames(websocket: WebSocket) -> None:
        # The frames of a chat reply to "hi", with no session, model or storage behind them.
        await websocket.accept()
        try:
            while True:
                await websocket.receive_text()
                await websocket.send_text('{"type":"response","content":"echo: hi"}')
                await websocket.send_text('{"type":"done"}')
        except WebSocketDisconnect:
            pass

    async def minimal(websocket: WebSocket) -> None:
        # The least a stored chat reply takes: parse the frame, append the user's message
        # and the reply to an open file, send the two frames. No sessions, model or checks.
        await websocket.accept()
        with tempfile.TemporaryFile(buffering=0) as dialog:
            try:
                while True:
                    text = json.loads(await websocket.receive_text())["text"]
                    dialog.write(f"- role: user\n  content: {text}\n".encode())
                    reply = f"echo: {text}"
                    await websocket.send_text(json.dumps({"type": "response", "content": reply}))
                    dialog.write(f"- role: assistant\n  content: {reply}\n".encode())
                    await websocket.send_text('{"type":"done"}')
            except WebSocketDisconnect:
                pass

    routes = [("/ws", echo), ("/frames", frames), ("/minimal", minimal)]
    return Starlette(routes=[WebSocketRoute(path, endpoint) for path, endpoint in routes])


def _serve_bare_echo(port: int) -> None:
    import uvicorn

    # The same uvicorn options as `chatsession serve`, so only the app differs.
    uvicorn.run(
        _bare_echo_app(),  # type: ignore[arg-type]
        host=HOST,
        port=port,
        log_level="warning",
        ws_per_message_deflate=False,
        access_log=False,
        server_header=False,
    )


def _serve_chat_in_memory(port: int) -> None:
    """The chat server with dialogs kept in memory: what storage costs, by difference."""
    from chatsession import Settings
    from chatsession.storage import MemoryDialogStore
    from chatsession.web.app import create_app
    from chatsession.web.server import build_server

    settings = Settings(
        host=HOST, port=port, rate_limit=0, max_connections_per_user=100_000, chat_model="echo"
    )
    server = build_server(settings)
    server.config.app = create_app(settings, store=MemoryDialogStore(), drain=server.drain)
    server.run()


@functools.cache
def _cpus() -> tuple[set[int], set[int]]:
    """CPUs for the load generator and for the server under test: apart, where there are two
    or more, so that neither takes the other's time slices; the same CPUs in every run.
    Worked out once, before this process pins itself to its share."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def _server_cpus() -> None:
    os.sched_setaffinity(0, _cpus()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _server(
    kind: str,
    data_dir: Path,
    *,
    wrapper: Sequence[str] = (),
    start_timeout: float = 20,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A server of ``kind`` (bare, memory or chat) on a free port, ready for connections;
    ``wrapper`` is a command to run it under (such as valgrind), ``env`` variables to add to
    its environment (such as ``REDIS_URL``)."""
    port = _free_port()
    if kind == "bare":
        command = [sys.executable, "-m", "bench.bench_server", "--serve-bare-echo", str(port)]
    elif kind == "memory":
        command = [sys.executable, "-m", "bench.bench_server", "--serve-chat-memory", str(port)]
    else:
        command = [sys.executable, "-m", "chatsession", "serve", "--port", str(port)]
        command += ["--data-dir", str(data_dir), "--rate-limit", "0", "--model", "echo"]
        command += ["--shutdown-grace", "10", "--max-connections-per-user", "100000"]
    process = subprocess.Popen(
        [*wrapper, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_server_cpus,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the {kind} server did not start") from None
                time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- 1. round trips ---------------------------------------------------------------------


async def _open(url: str, user: str, chat: bool) -> ClientConnection:
    ws = await connect(url, additional_headers={"x-user-id": user}, max_queue=None)
    if chat:
        await ws.recv()  # the session frame
    return ws


async def _round_trip(ws: ClientConnection, until_done: bool) -> None:
    await ws.send('{"text": "hi"}')
    if until_done:
        while json.loads(await ws.recv())["type"] != "done":
            pass
    else:
        await ws.recv()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """One timed load: round trips per second, latencies, and where the CPU time went."""

    rate: float
    latencies: list[float]
    server_cpu_per_trip: float  # seconds
    client_busy: float  # the load generator's CPU time over the elapsed time


async def _load(port: int, clients: int, seconds: float, mode: str, server_pid: int) -> Load:
    """Round trips per second and their latencies; ``mode`` is bare, frames or chat."""
    url = f"ws://{HOST}:{port}/{mode if mode in ('frames', 'minimal') else 'ws'}"
    chat = mode in ("chat", "memory")
    until_done = mode != "bare"
    sockets = await asyncio.gather(*(_open(url, f"user{i}", chat) for i in range(clients)))
    # A first round trip each, untimed: it starts the session's dialog file, a one-off cost
    # per session (creating a file and directories) that is not what is measured here.
    await asyncio.gather(*(_round_trip(ws, until_done) for ws in sockets))
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def worker(ws: ClientConnection) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await _round_trip(ws, until_done)
            latencies.append(time.perf_counter() - started)

    began, server_began, client_began = (
        time.monotonic(),
        _cpu_seconds(server_pid),
        time.process_time(),
    )
    await asyncio.gather(*(worker(ws) for ws in sockets))
    elapsed = time.monotonic() - began
    server_cpu = _cpu_seconds(server_pid) - server_began
    client_busy = (time.process_time() - client_began) / elapsed
    await asyncio.gather(*(ws.close() for ws in sockets))
    trips = max(1, len(latencies))
    return Load(trips / elapsed, latencies, server_cpu / trips, client_busy)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_round_trips(clients: int, seconds: float, repeats: int) -> float:
    """Chat against bare echo (one frame back) and bare frames (a reply's two frames back)."""
    modes = ("bare", "frames", "minimal", "chat", "memory")
    results: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for mode in modes:
                kind = "bare" if mode in ("frames", "minimal") else mode
                with _server(kind, Path(tmp) / "data") as (process, port):
                    load = asyncio.run(_load(port, clients, seconds, mode, process.pid))
                p50, p99 = _percentile(load.latencies, 0.5), _percentile(load.latencies, 0.99)
                results[mode].append(
                    (load.rate, p50, p99, load.server_cpu_per_trip, load.client_busy)
                )
    medians = {
        mode: tuple(statistics.median(run[i] for run in runs) for i in range(5))
        for mode, runs in results.items()
    }

    def describe(mode: str) -> str:
        rate, p50, p99, cpu, busy = medians[mode]
        return (
            f"{rate:,.0f}/s (p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; server CPU "
            f"{cpu * 1e6:.0f} µs a round trip; load generator {busy:.0%} busy)"
        )

    (chat, *_, chat_cpu, _), (bare, *_, bare_cpu, _) = medians["chat"], medians["bare"]
    frames = medians["frames"][0]
    print(
        f"round trips, {clients} connections (median of {repeats}):\n"
        f"  chat {describe('chat')}\n"
        f"  bare echo {describe('bare')}\n"
        f"  bare echo sending a chat reply's 2 frames {describe('frames')}\n"
        f"  the least a stored reply takes (parse, 2 appends, 2 frames) {describe('minimal')}\n"
        f"  chat with dialogs in memory instead of YAML files {describe('memory')}\n"
        f"  chat / bare echo {chat / bare:.0%} of the round trips; chat / bare 2 frames "
        f"{chat / frames:.0%}; server CPU a round trip, chat / bare echo "
        f"{chat_cpu / bare_cpu:.1f}x"
    )
    return bare / chat


# -- 2. idle memory ---------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _hold(port: int, count: int, pid: int, chat: bool) -> tuple[int, int]:
    url = f"ws://{HOST}:{port}/ws"
    # A few first, so imports and first-use allocations are not counted per connection.
    warm = [await _open(url, f"warm{i}", chat) for i in range(20)]
    await asyncio.sleep(0.5)
    before = _rss_bytes(pid)
    gate = asyncio.Semaphore(200)

    async def open_one(i: int) -> ClientConnection:
        async with gate:
            return await _open(url, f"idle{i}", chat)

    held = await asyncio.gather(*(open_one(i) for i in range(count)))
    await asyncio.sleep(1.0)
    after = _rss_bytes(pid)
    if chat:
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"http://{HOST}:{port}/health")).json()
        assert health["activeSessions"] >= count, health
    gate = asyncio.Semaphore(500)

    async def close(ws: ClientConnection) -> None:
        async with gate:
            await ws.close()

    await asyncio.gather(*(close(ws) for ws in [*held, *warm]))
    return before, after


def bench_idle_memory(count: int) -> None:
    per: dict[str, float] = {}
    for kind in ("bare", "chat"):
        with tempfile.TemporaryDirectory() as tmp, _server(kind, Path(tmp) / "data") as server:
            process, port = server
            before, after = asyncio.run(_hold(port, count, process.pid, kind == "chat"))
        per[kind] = (after - before) / count
        print(
            f"idle WebSocket connections, {kind}: {count:,} held, server RSS "
            f"{before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB, "
            f"{per[kind] / 1024:.1f} KiB per connection"
        )
    print(f"idle memory per connection, chat / bare echo: {per['chat'] / per['bare']:.1f}x")


# -- 3. SIGTERM with active sessions -----------------------------------------------------


async def _fill(port: int, count: int) -> list[ClientConnection]:
    url = f"ws://{HOST}:{port}/ws"
    gate = asyncio.Semaphore(100)

    async def one(i: int) -> ClientConnection:
        async with gate:
            ws = await _open(url, f"user{i}", True)
            await _round_trip(ws, True)
            return ws

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _sigterm(process: subprocess.Popen[bytes], port: int, count: int) -> tuple[float, int]:
    sockets = await _fill(port, count)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.wait, 60)
    elapsed = time.monotonic() - started
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return elapsed, code


def bench_sigterm(count: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with _server("chat", data_dir) as (process, port):
            elapsed, code = asyncio.run(_sigterm(process, port, count))
        archived = sum(
            1
            for path in (data_dir / "users").glob("*/dialogs/archived/*.yaml")
            if "end_reason: shutdown" in path.read_text()
        )
    print(
        f"SIGTERM with {count:,} active sessions: exit code {code} after {elapsed:.2f} s; "
        f"{archived:,} of {count:,} archived as shutdown"
    )
    return elapsed, count - archived


def main(argv: Sequence[str] | None = None) -> list[Verdict]:
    """Run the three benchmarks (``python -m bench server`` calls it with no arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve-bare-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-chat-memory", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller counts, one repeat")
    args = parser.parse_args([] if argv is None else argv)
    if args.serve_bare_echo:
        _serve_bare_echo(args.serve_bare_echo)
        return []
    if args.serve_chat_memory:
        _serve_chat_in_memory(args.serve_chat_memory)
        return []
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, _cpus()[0])
    repeats, seconds = (1, 1.0) if args.quick else (3, 3.0)
    verdicts = []
    for clients in (50, 500):
        slowdown = bench_round_trips(clients, seconds, repeats)
        # The target is chat at 50% or more of bare echo: bare / chat at most 2.
        what = f"bare echo / chat round trips per second, {clients} connections"
        verdicts.append(check("server", what, slowdown, 2.0, "x"))
    bench_idle_memory(1_000 if args.quick else min(10_000, hard - 500))
    exit_seconds, unarchived = bench_sigterm(100 if args.quick else 1_000)
    verdicts.append(check("server", "sessions not archived after SIGTERM", unarchived, 0))
    verdicts.append(check("server", "time to exit after SIGTERM", exit_seconds, 10.0, " s"))
    return verdicts


if __name__ == "__main__":
    main(sys.argv[1:])
