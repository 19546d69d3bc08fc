"""The cluster rig: real redis-server processes, a real Redis Cluster, several `chatsession
serve` processes sharing one DATA_DIR and one Redis, and Debian's HAProxy in front of them.

Every process here is started by the fixture that yields it, on 127.0.0.1 and a free port,
and is killed by its own pid when the test ends, whatever happened. Waits are bounded; a
process that does not come up fails the test with its log.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from websockets.asyncio.client import ClientConnection, connect

from chatsession.storage import YamlDialogStore
from tests.web.conftest import free_port

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
HAPROXY = "/usr/sbin/haproxy"
START_TIMEOUT = 30.0  # seconds; the machine is shared, a Python server may start slowly


def _wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def _stop(popen: subprocess.Popen[bytes] | None, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal a process this rig started, by its pid, and reap it."""
    if popen is None or popen.poll() is not None:
        return
    popen.send_signal(sig)
    try:
        popen.wait(15)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(5)


# -- Redis ------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """One ``redis-server`` without persistence, on its own port and directory."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start it (on the same port as before) and wait until it answers PING."""
        if self.running:
            raise RuntimeError("this redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        # ``--save ""`` and ``--appendonly no``: a restart comes back empty, the worst case.
        command = ["redis-server", "--bind", HOST, "--port", str(self.port), "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.directory), *self.extra]
        self.popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_until(self.ping, 10, f"redis-server on port {self.port} answering PING")

    def ping(self) -> bool:
        if not self.running:
            raise RuntimeError(f"redis-server on port {self.port} exited:\n{self.log()}")
        try:
            with redis.Redis(host=HOST, port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM, and wait for it to exit."""
        _stop(self.popen, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: Redis vanishes mid-whatever, as when its machine is lost."""
        _stop(self.popen, signal.SIGKILL)

    def restart(self) -> None:
        """Kill it and start it again on the same port, empty."""
        self.kill()
        self.start()

    def client(self) -> redis.asyncio.Redis:
        """An asyncio client to look at what the instances keep (close it with ``aclose``)."""
        return redis.asyncio.Redis(host=HOST, port=self.port, decode_responses=True)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` on a free port, killed at the end of the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class RedisCluster:
    """Three ``redis-server --cluster-enabled yes`` masters joined into one Redis Cluster."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """Any one node names the cluster."""
        return self.nodes[0].url

    def client(self) -> redis.asyncio.RedisCluster:
        node = self.nodes[0]
        return redis.asyncio.RedisCluster(host=HOST, port=node.port, decode_responses=True)

    def state_ok(self) -> bool:
        for node in self.nodes:
            with redis.Redis(host=HOST, port=node.port, socket_timeout=1) as client:
                info = client.cluster("info")
            if info.get("cluster_state") != "ok":
                return False
        return True


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A three-master Redis Cluster on free ports, its state ``ok``; killed at the end."""
    nodes = []
    for index in range(3):
        directory = tmp_path / f"redis-cluster-{index}"
        # The cluster bus gets a free port of its own (Redis 7's ``cluster-port``) rather
        # than port + 10000, which may be taken or past 65535.
        extra: tuple[str, ...] = ("--cluster-enabled", "yes")
        extra += ("--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()))
        extra += ("--cluster-node-timeout", "2000")
        nodes.append(RedisServer(directory, extra=extra))
    try:
        for node in nodes:
            node.start()
        create = ["redis-cli", "--cluster", "create", *(f"{HOST}:{n.port}" for n in nodes)]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        cluster = RedisCluster(nodes)
        _wait_until(cluster.state_ok, 30, "cluster_state:ok on every node")
        yield cluster
    finally:
        for node in nodes:
            node.kill()


# -- chatsession serve ------------------------------------------------------------------


@dataclass
class Instance:
    """One ``chatsession serve`` child process of a cluster."""

    id: str
    port: int
    data_dir: Path
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """kill -9, and reap it: the instance vanishes with whatever it held."""
        _stop(self.popen, signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: a graceful shutdown starts; `wait` for its end."""
        self.popen.send_signal(signal.SIGTERM)

    async def wait(self, within: float = 30) -> int:
        """Its exit code, waited for off the event loop."""
        return await asyncio.to_thread(self.popen.wait, within)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Instances:
    """``instances(n, env)`` starts n instances sharing one DATA_DIR and REDIS_PREFIX.

    ``env`` goes to each instance's environment (``{"REDIS_URL": ..., "INSTANCE_TTL": "1"}``);
    each instance gets ``INSTANCE_ID`` ``i0``, ``i1``, ... unless given. All of them are
    killed (by pid) when the test ends.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.prefix = f"t-{uuid.uuid4().hex[:12]}:"
        self.started: list[Instance] = []

    def __call__(
        self, count: int, env: Mapping[str, str] | None = None, *, healthy: bool = True
    ) -> list[Instance]:
        """Start ``count`` instances at once with ``env`` added to their environment; wait
        until each answers ``/health`` (with 200 unless ``healthy`` is false)."""
        fresh = [self._spawn(dict(env or {})) for _ in range(count)]
        for instance in fresh:
            self._wait_ready(instance, healthy)
        return fresh

    def one(self, env: Mapping[str, str] | None = None, *, healthy: bool = True) -> Instance:
        return self(1, env, healthy=healthy)[0]

    def _spawn(self, env: dict[str, str]) -> Instance:
        index = len(self.started)
        port = free_port()
        instance_id = env.pop("INSTANCE_ID", f"i{index}")
        environment = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "CHAT_MODEL": "echo",
            "DATA_DIR": str(self.data_dir),
            "REDIS_PREFIX": self.prefix,
            "INSTANCE_ID": instance_id,
            "SHUTDOWN_GRACE": "2",
            **env,
        }
        log_path = self.root / f"{instance_id}.log"
        command = [sys.executable, "-m", "chatsession", "serve", "--host", HOST]
        command += ["--port", str(port)]
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        instance = Instance(instance_id, port, self.data_dir, log_path, popen)
        self.started.append(instance)
        return instance

    def _wait_ready(self, instance: Instance, healthy: bool) -> None:
        def ready() -> bool:
            if not instance.running:
                raise RuntimeError(f"instance {instance.id} exited early:\n{instance.log()}")
            try:
                status = httpx.get(f"{instance.url}/health", timeout=2).status_code
            except httpx.TransportError:
                return False
            return status == 200 or not healthy

        try:
            _wait_until(ready, START_TIMEOUT, f"instance {instance.id} answering /health")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{instance.log()}") from None

    def store(self) -> YamlDialogStore:
        """The shared DATA_DIR, read the way the instances write it."""
        return YamlDialogStore(self.data_dir)

    def archive_files(self, user_id: str) -> list[Path]:
        """The user's archive files (a plain id names its directory as it is)."""
        return sorted((self.data_dir / "users" / user_id / "dialogs" / "archived").glob("*.yaml"))

    async def archives(self, user_id: str, count: int = 1, within: float = 10) -> list[Any]:
        """The user's archives once there are ``count`` (the end is asynchronous), or what
        there is after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            found = await self.store().list_archives(user_id)
            if len(found) >= count or time.monotonic() > deadline:
                return list(found)
            await asyncio.sleep(0.05)

    async def settled_archives(self, user_id: str, count: int = 1, settle: float = 1.5) -> Any:
        """The user's archives once ``count`` exist and no more appear for ``settle``
        seconds: how a test sees an end that must happen exactly once."""
        await self.archives(user_id, count)
        await asyncio.sleep(settle)
        return await self.store().list_archives(user_id)

    def close(self) -> None:
        for instance in self.started:
            _stop(instance.popen, signal.SIGKILL)


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Instances]:
    """``instances(n, {"REDIS_URL": ...})``: n ``chatsession serve`` processes, one DATA_DIR."""
    rig = Instances(tmp_path / "cluster")
    rig.root.mkdir(parents=True, exist_ok=True)
    try:
        yield rig
    finally:
        rig.close()


# -- HAProxy ----------------------------------------------------------------------------


@dataclass
class HAProxy:
    """Debian's haproxy running ``deploy/haproxy.cfg`` as shipped, in front of instances."""

    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def haproxy_environment(port: int, backends: list[str]) -> dict[str, str]:
    """The variables ``deploy/haproxy.cfg`` reads: where to listen and up to three servers."""
    if not 1 <= len(backends) <= 3:
        raise ValueError("deploy/haproxy.cfg names one to three servers")
    environment = {**os.environ, "CHAT_BIND": f"{HOST}:{port}", "CHAT_CHECK_INTER": "500ms"}
    for index, backend in enumerate(backends, start=1):
        environment[f"CHAT_SERVER_{index}"] = backend
    return environment


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[list[Instance]], HAProxy]]:
    """``haproxy(instances)``: HAProxy listening on a free port, every backend seen up."""
    started: list[subprocess.Popen[bytes]] = []

    def start(backends: list[Instance]) -> HAProxy:
        port = free_port()
        log_path = tmp_path / f"haproxy-{port}.log"
        environment = haproxy_environment(port, [f"{HOST}:{b.port}" for b in backends])
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [HAPROXY, "-f", str(HAPROXY_CFG), "-db"],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(popen)
        proxy = HAProxy(port, popen, log_path)

        def all_up() -> bool:
            if popen.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{proxy.log()}")
            try:
                return httpx.get(f"{proxy.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait_until(all_up, 15, "haproxy answering /health")
        # Its health checks run every 500 ms; two rounds see every server up.
        time.sleep(1.2)
        return proxy

    try:
        yield start
    finally:
        for popen in started:
            _stop(popen, signal.SIGKILL)


# -- clients ----------------------------------------------------------------------------

ADMIN = {"x-user-id": "admin", "x-user-roles": "admin"}


def user(name: str) -> dict[str, str]:
    return {"x-user-id": name}


@asynccontextmanager
async def websocket(
    ws_url: str, user_id: str, session_id: str | None = None
) -> AsyncIterator[tuple[ClientConnection, str]]:
    """A WebSocket of ``user_id`` and the session id its first frame names."""
    url = ws_url if session_id is None else f"{ws_url}?sessionId={session_id}"
    async with connect(url, additional_headers=user(user_id), open_timeout=10) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "session", first
        yield ws, first["sessionId"]


async def say(ws: ClientConnection, text: str) -> list[dict[str, Any]]:
    """Send one chat message and return the frames up to its ``done`` (or ``error``)."""
    await ws.send(json.dumps({"text": text}))
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] in ("session_event", "heartbeat"):
            continue
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            return frames


def reply_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["content"] for f in frames if f["type"] == "response")


async def health(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/health")
    return response.status_code, response.json()


async def sessions(url: str) -> list[dict[str, Any]]:
    """The cluster's sessions as the admin ``GET /sessions`` of one instance lists them."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/sessions", headers=ADMIN)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["sessions"]
    return listed


async def chat(url: str, user_id: str, text: str, session_id: str | None = None) -> httpx.Response:
    """``POST /chat`` as ``user_id``, naming ``session_id`` when given."""
    headers = user(user_id)
    if session_id is not None:
        headers["x-session-id"] = session_id
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{url}/chat", json={"message": text}, headers=headers)


async def eventually(check: Callable[[], Any], within: float, what: str) -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.05)
