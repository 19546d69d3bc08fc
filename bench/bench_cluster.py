"""Several instances over Redis: what sharing sessions costs, and how fast a death is noticed.

Run ``python -m bench cluster`` (``--quick`` for a smaller run). Each run starts its own
``redis-server`` on a free port of 127.0.0.1 (no persistence) and ``chatsession serve``
child processes through the server benchmark's helper (echo model, pinned CPUs); HAProxy
runs ``deploy/haproxy.cfg`` as shipped. Every baseline is measured in the same run.

1. Chat round trips per second over WebSocket, 50 connections: one instance with
   ``REDIS_URL`` against the same instance without it, interleaved (target: 0.7 or more).
2. Redis commands an instance sends per chat turn at steady state (counted by ``MONITOR``
   over a fixed number of round trips on connections already open), apart from those its
   Lua scripts run inside Redis (``INFO commandstats`` would count both), and net of what
   the instance sends while idle for as long (aim: 2 or fewer).
3. Time from kill -9 of an instance to every one of its WebSocket sessions archived (as
   ``error``) by the survivor, against ``INSTANCE_TTL``.
4. Redis memory per idle session: ``MEMORY USAGE`` summed over each user's keys, plus the
   session's share of its instance's keys, and ``used_memory`` growth as a cross-check
   (target: 512 bytes or fewer).
5. Two instances behind HAProxy against one instance behind HAProxy, 200 connections. On
   two cores the load generator has one and everything under test shares the other, so
   two instances cannot be expected to double anything here; the figure shows what the
   second instance and the shared Redis cost or gain on the same hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis
from websockets.asyncio.client import ClientConnection

from bench._timing import Verdict, check, format_bytes, print_title
from bench.bench_server import (
    HOST,
    _cpus,
    _free_port,
    _load,
    _open,
    _percentile,
    _round_trip,
    _server,
    _server_cpus,
)

HAPROXY = "/usr/sbin/haproxy"
HAPROXY_CFG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"


# -- processes --------------------------------------------------------------------------


@contextmanager
def _redis(directory: Path) -> Iterator[redis.Redis]:
    """A redis-server of this benchmark's own on a free port; a client to it."""
    port = _free_port()
    command = ["redis-server", "--bind", HOST, "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host=HOST, port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        process.kill()
        process.wait()


def _redis_env(client: redis.Redis, **more: str) -> dict[str, str]:
    """The environment of an instance on ``client``'s Redis, under a prefix of its own."""
    kwargs = client.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/0"
    return {"REDIS_URL": url, "REDIS_PREFIX": f"b-{uuid.uuid4().hex[:8]}:", **more}


@contextmanager
def _haproxy(backends: Sequence[int]) -> Iterator[int]:
    """HAProxy with ``deploy/haproxy.cfg`` in front of the instances on ``backends``; its
    port once it answers ``/health`` through every backend."""
    port = _free_port()
    env = {**os.environ, "CHAT_BIND": f"{HOST}:{port}", "CHAT_CHECK_INTER": "1s"}
    for index, backend in enumerate(backends, start=1):
        env[f"CHAT_SERVER_{index}"] = f"{HOST}:{backend}"
    process = subprocess.Popen(
        [HAPROXY, "-f", str(HAPROXY_CFG), "-db"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_server_cpus,
    )
    try:
        import httpx

        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("haproxy did not start")
            time.sleep(0.1)
        time.sleep(2.5)  # two health-check rounds: every backend is up
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- 1. round trips with and without Redis ----------------------------------------------


def bench_round_trips(clients: int, seconds: float, repeats: int) -> float:
    """Round trips per second of one instance with REDIS_URL against one without."""
    rates: dict[str, list[float]] = {"without Redis": [], "with REDIS_URL": []}
    p50s: dict[str, list[float]] = {name: [] for name in rates}
    with tempfile.TemporaryDirectory() as tmp, _redis(Path(tmp)) as client:
        for _ in range(repeats):
            for name in rates:
                env = _redis_env(client) if name == "with REDIS_URL" else None
                with _server("chat", Path(tmp) / "data", env=env) as (process, port):
                    load = asyncio.run(_load(port, clients, seconds, "chat", process.pid))
                rates[name].append(load.rate)
                p50s[name].append(_percentile(load.latencies, 0.5))
    without, with_redis = (statistics.median(rates[name]) for name in rates)
    print_title(f"1. round trips, {clients} WebSocket connections, median of {repeats}")
    for name in rates:
        print(
            f"  {name}: {statistics.median(rates[name]):,.0f}/s "
            f"(p50 {statistics.median(p50s[name]) * 1e3:.1f} ms)"
        )
    print(f"  with Redis / without: {with_redis / without:.2f}")
    return with_redis / without


# -- 2. Redis commands per chat turn ----------------------------------------------------


class _Monitor(threading.Thread):
    """Counts the commands Redis runs while it watches (``MONITOR``), apart by who sent
    them: the instances, or a Lua script they called (INFO commandstats counts both)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        kwargs = client.connection_pool.connection_kwargs
        self.sock = socket.create_connection((kwargs["host"], kwargs["port"]))
        self.sent: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self.sock.sendall(b"MONITOR\r\n")
        # Redis answers +OK once it watches; what follows it is the first commands.
        self._buffer = b""
        while b"+OK\r\n" not in self._buffer:
            self._buffer += self.sock.recv(65536)
        self._buffer = self._buffer.split(b"+OK\r\n", 1)[1]
        self.start()

    def run(self) -> None:
        buffer, self._buffer = self._buffer, b""
        while chunk := self._recv():
            *lines, buffer = (buffer + chunk).split(b"\r\n")
            for line in lines:
                # +1700000000.123456 [0 127.0.0.1:40000] "evalsha" "..."  or  [0 lua] "hget"
                source, _, command = line.partition(b"] ")
                name = command.split(b" ", 1)[0].strip(b'"').decode().lower()
                if name and name not in ("info", "monitor"):
                    (self.scripted if source.endswith(b" lua") else self.sent)[name] += 1

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def stop(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.join(5)
        self.sock.close()


async def _turns(
    port: int, clients: int, trips: int, client: redis.Redis
) -> tuple[_Monitor, float, _Monitor, float]:
    """What Redis ran during ``trips`` round trips each on ``clients`` open connections and
    the seconds they took; and what it ran while the same connections stayed idle."""
    url = f"ws://{HOST}:{port}/ws"
    sockets = await asyncio.gather(*(_open(url, f"turns{i}", True) for i in range(clients)))
    await asyncio.gather(*(_round_trip(ws, True) for ws in sockets))  # sessions started
    await asyncio.sleep(0.5)
    idle, idle_seconds = _Monitor(client), 2.0
    await asyncio.sleep(idle_seconds)  # heartbeats and inbox reads only
    idle.stop()

    async def run(ws: ClientConnection) -> None:
        for _ in range(trips):
            await _round_trip(ws, True)

    busy, started = _Monitor(client), time.monotonic()
    await asyncio.gather(*(run(ws) for ws in sockets))
    elapsed = time.monotonic() - started
    busy.stop()
    await asyncio.gather(*(ws.close() for ws in sockets))
    return busy, elapsed, idle, idle_seconds


def _by_command(counts: Counter[str], turns: float) -> str:
    top = counts.most_common(8)
    return ", ".join(f"{name} {calls / turns:.2f}" for name, calls in top) or "none"


def bench_commands_per_turn(clients: int, trips: int) -> float:
    """Commands an instance sends Redis per chat turn, on connections it holds (sticky)."""
    with tempfile.TemporaryDirectory() as tmp, _redis(Path(tmp)) as client:
        env = _redis_env(client, INSTANCE_ID="bench")
        with _server("chat", Path(tmp) / "data", env=env) as (_process, port):
            busy, elapsed, idle, idle_seconds = asyncio.run(_turns(port, clients, trips, client))
    turns = clients * trips
    sent = sum(busy.sent.values())
    background = sum(idle.sent.values()) / idle_seconds * elapsed
    print_title(
        "2. Redis commands per chat turn, sticky (one instance)",
        f"{turns:,} turns on {clients} open connections in {elapsed:.1f} s",
    )
    print(f"  sent by the instance, a turn: {_by_command(busy.sent, turns)}")
    print(f"  run inside its scripts, a turn: {_by_command(busy.scripted, turns)}")
    print(f"  sent while idle, a second: {_by_command(idle.sent, idle_seconds)}")
    print(
        f"  {sent / turns:.2f} commands sent a turn ({(sent - background) / turns:.2f} net of "
        f"what it sends idle); Redis ran {(sent + sum(busy.scripted.values())) / turns:.2f} "
        "a turn with the scripts' own"
    )
    return sent / turns


# -- 3. kill -9 until archived ----------------------------------------------------------


async def _hold(port: int, count: int) -> list[ClientConnection]:
    sockets = [await _open(f"ws://{HOST}:{port}/ws", f"held{i}", True) for i in range(count)]
    await asyncio.gather(*(_round_trip(ws, True) for ws in sockets))
    return sockets


def _archived_as_error(data_dir: Path) -> int:
    return sum(
        1
        for path in data_dir.glob("users/*/dialogs/archived/*.yaml")
        if "end_reason: error" in path.read_text()
    )


async def _kill_and_wait(
    victim: subprocess.Popen[bytes], port: int, count: int, data_dir: Path
) -> float:
    """Seconds from kill -9 of ``victim``, holding ``count`` sessions, to all archived."""
    sockets = await _hold(port, count)
    victim.kill()
    killed = time.monotonic()
    while _archived_as_error(data_dir) < count:
        if time.monotonic() - killed > 120:
            raise RuntimeError("the dead instance's sessions were not archived in 120 s")
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - killed
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return elapsed


def bench_kill(count: int, ttl: float, repeats: int) -> float:
    """Seconds from kill -9 of the instance holding ``count`` sessions to all archived."""
    times: list[float] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp, _redis(Path(tmp)) as client:
            data_dir = Path(tmp) / "data"
            env = _redis_env(client, INSTANCE_TTL=f"{ttl:g}")
            with _server("chat", data_dir, env=env) as (victim, port):
                with _server("chat", data_dir, env=env):
                    times.append(asyncio.run(_kill_and_wait(victim, port, count, data_dir)))
                victim.wait()
    median = statistics.median(times)
    print_title(f"3. kill -9 of an instance holding {count} WebSocket sessions")
    print(
        f"  all archived as error by the survivor after {median:.2f} s (median of {repeats}; "
        f"runs {', '.join(f'{t:.2f}' for t in times)}); INSTANCE_TTL {ttl:g} s: "
        f"{median / ttl:.2f}x the TTL"
    )
    return median / ttl


# -- 4. Redis memory per idle session ---------------------------------------------------


async def _start_sessions(port: int, count: int) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as http:
        gate = asyncio.Semaphore(20)

        async def one(i: int) -> None:
            async with gate:
                response = await http.post(
                    "/chat", json={"message": "hi"}, headers={"x-user-id": f"idle{i}"}
                )
                response.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))


def bench_memory(count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, _redis(Path(tmp)) as client:
        env = _redis_env(client, INSTANCE_ID="mem", RATE_LIMIT="0")
        prefix = env["REDIS_PREFIX"]
        with _server("chat", Path(tmp) / "data", env=env) as (_process, port):
            time.sleep(1.0)
            before = int(client.info("memory")["used_memory"])
            asyncio.run(_start_sessions(port, count))
            time.sleep(0.5)
            after = int(client.info("memory")["used_memory"])
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            sizes = {key: int(client.memory_usage(key, samples=0) or 0) for key in keys}
    per_user: list[int] = []
    for i in range(count):
        name = f"idle{i}"
        # A user's keys name the user between braces (its hash tag) or as a path segment.
        mine = [k for k in keys if f"{{{name}}}" in k or f":{name}:" in k]
        per_user.append(sum(sizes[k] for k in mine if not k.endswith(":rate")))
    shared = sum(size for key, size in sizes.items() if ":instance" in key or key.endswith("boot"))
    rate = [size for key, size in sizes.items() if key.endswith(":rate")]
    per_session = statistics.median(per_user) + shared / count
    print_title(f"4. Redis memory per idle session, {count} sessions started over HTTP")
    print(
        f"  {len(keys)} keys; a user's keys {format_bytes(statistics.median(per_user))} "
        f"(median), the instance's keys {format_bytes(shared / count)} a session; "
        f"{format_bytes(per_session)} a session in all"
    )
    if rate:
        print(
            f"  while its messages are recent a user also has a rate list of "
            f"{format_bytes(statistics.median(rate))} (not counted: it expires)"
        )
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    print("  largest keys: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in largest))
    print(
        f"  used_memory grew {format_bytes((after - before) / count)} a session (it also "
        "counts the rate lists, client buffers and allocator overhead)"
    )
    return per_session


# -- 5. behind HAProxy: two instances against one ---------------------------------------


_TRIP_TIMEOUT = 10.0  # seconds: a round trip not answered by then is counted as stuck


async def _load_through(port: int, clients: int, seconds: float) -> tuple[float, list[float], int]:
    """Round trips per second through a proxy, their latencies, and how many connections
    got stuck (no ``done`` within `_TRIP_TIMEOUT`): bounded, so a lost reply is counted
    rather than waited for forever."""
    url = f"ws://{HOST}:{port}/ws"
    sockets = await asyncio.gather(*(_open(url, f"user{i}", True) for i in range(clients)))
    latencies: list[float] = []
    stuck = 0

    async def answered(ws: ClientConnection) -> bool:
        nonlocal stuck
        try:
            await asyncio.wait_for(_round_trip(ws, True), _TRIP_TIMEOUT)
        except TimeoutError:
            stuck += 1
            return False
        return True

    # A first round trip each, untimed: it starts the session's dialog file.
    warm = await asyncio.gather(*(answered(ws) for ws in sockets))
    stop = time.monotonic() + seconds

    async def worker(ws: ClientConnection) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            if not await answered(ws):
                return
            latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    await asyncio.gather(*(worker(ws) for ws, ok in zip(sockets, warm, strict=True) if ok))
    elapsed = time.monotonic() - began
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return len(latencies) / elapsed, latencies, stuck


def bench_haproxy(clients: int, seconds: float, repeats: int) -> float:
    rates: dict[int, list[float]] = {1: [], 2: []}
    p99s: dict[int, list[float]] = {1: [], 2: []}
    stuck: dict[int, int] = {1: 0, 2: 0}
    for _ in range(repeats):
        for count in (1, 2):
            with tempfile.TemporaryDirectory() as tmp, _redis(Path(tmp)) as client:
                env = _redis_env(client)
                with ExitStack() as stack:
                    servers = [
                        stack.enter_context(_server("chat", Path(tmp) / "data", env=env))
                        for _ in range(count)
                    ]
                    proxy = stack.enter_context(_haproxy([port for _, port in servers]))
                    rate, latencies, lost = asyncio.run(_load_through(proxy, clients, seconds))
            rates[count].append(rate)
            p99s[count].append(_percentile(latencies, 0.99))
            stuck[count] += lost
    print_title(f"5. behind HAProxy, {clients} WebSocket connections, median of {repeats}")
    for count in (1, 2):
        print(
            f"  {count} instance{'s' if count > 1 else ''}: "
            f"{statistics.median(rates[count]):,.0f}/s "
            f"(p99 {statistics.median(p99s[count]) * 1e3:.1f} ms; "
            f"{stuck[count]} connections stuck in all)"
        )
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"  two / one: {ratio:.2f} (server side on {len(_cpus()[1])} CPU of {os.cpu_count()})")
    return ratio


def main(argv: Sequence[str] | None = None) -> list[Verdict]:
    """Run the five benchmarks (``python -m bench cluster`` calls it with no arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts, one repeat")
    args = parser.parse_args([] if argv is None else argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, _cpus()[0])
    repeats, seconds = (1, 1.0) if args.quick else (3, 3.0)
    verdicts = []
    ratio = bench_round_trips(50, seconds, repeats)
    # A Verdict is an upper bound: "with Redis at 0.7 or more of without" is
    # "without / with at most 1/0.7".
    what = "round trips without Redis / with REDIS_URL, 50 connections"
    verdicts.append(check("cluster", what, 1 / ratio, 1 / 0.7, "x"))
    per_turn = bench_commands_per_turn(50, 10 if args.quick else 40)
    verdicts.append(check("cluster", "Redis commands per chat turn", per_turn, 2.0))
    against_ttl = bench_kill(20, 2.0, repeats)
    what = "kill -9 to archived, in INSTANCE_TTLs"
    verdicts.append(check("cluster", what, against_ttl, 2.0, "x"))
    per_session = bench_memory(200 if args.quick else 1000)
    verdicts.append(check("cluster", "Redis memory per idle session", per_session, 512, " B"))
    bench_haproxy(200, seconds, repeats)
    return verdicts


if __name__ == "__main__":
    main(sys.argv[1:])
