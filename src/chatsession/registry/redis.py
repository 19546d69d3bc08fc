"""`RedisRegistry`: sessions shared by every instance through Redis (or a Redis Cluster).

Keys, under ``REDIS_PREFIX`` (``{p}``):

- ``{p}{USER}:session`` — a hash per active session (see `_scripts`); ``{p}{USER}:rate`` —
  the times of the user's last messages, only while a rate limit counts them. Both share
  the hash tag ``{USER}``, so every atomic step on a user runs on one Cluster slot.
- ``{p}instance:ID`` — this instance's heartbeat, expiring after ``INSTANCE_TTL``;
  ``{p}instance:ID:users`` — the users it owns or holds connections of (what a survivor
  walks when it dies); ``{p}instance:ID:sessions`` — how many sessions it owns;
  ``{p}instance:ID:inbox`` — a stream of what other instances ask of it (hand a session
  over; frames for its connections).
- ``{p}instances`` — the instances' ids; ``{p}boot`` — a marker that tells a Redis that
  lost its data (restarted empty) from one that did not.

No key grows with the number of users of the cluster: a user's keys are the user's, and
an instance's set grows only with the sessions it serves itself.

**Ownership.** Only the owner of a session writes its dialog. An instance renews its
heartbeat every fifth of ``INSTANCE_TTL`` and the key lives for 0.8 of it; it stops
writing (`check_writable`) 0.7 of ``INSTANCE_TTL`` after the last renewal it *sent*, so
it has stopped before its key can expire anywhere, and a survivor takes its sessions only
once the key has expired. A live owner hands a session over when asked through its inbox,
after the turn it is running; each change of owner bumps the session's epoch, and every
script that writes checks the caller is the owner.

**A steady chat costs no Redis command.** Every turn runs on the owner, so the owner counts
the user's rate limit in its own memory, and hands the count on with the session. It marks
the session active in Redis (and learns where the user's other connections are) at most
once a second; an instance where a connection of the user opens tells the owner at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from hashlib import sha1
from typing import Any, TypeVar

from chatsession._exceptions import (
    ConfigError,
    FencedOff,
    OwnershipLost,
    RegistryUnavailable,
    TooManyRequests,
)
from chatsession._types import END_REASONS, EndReason
from chatsession.registry import _scripts
from chatsession.registry.base import NO_ROUTE, Adopted, Claim, EndCheck, Inbox, Record, Route
from chatsession.settings import Settings
from chatsession.storage._paths import directory_name

__all__ = ["RedisRegistry"]

logger = logging.getLogger("chatsession.registry")

T = TypeVar("T")

_WINDOW_MS = 60_000  # the rate limit counts messages in any sliding minute
_INBOX_LENGTH = 10_000  # an inbox keeps about this many entries
_CLAIM_WAIT = 0.01  # first pause while a session is being ended or handed over
_ASK_AGAIN = 0.5  # seconds before a handover is asked for again
_POOL_SIZE = 256  # connections to Redis at most; more commands at once wait their turn


class RedisRegistry:
    """The `SessionRegistry` of several instances sharing one Redis."""

    shared = True

    def __init__(self, settings: Settings) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.cluster import RedisCluster
            from redis.exceptions import NoScriptError, RedisError
        except ImportError as exc:  # pragma: no cover - redis is a dependency
            raise ConfigError("REDIS_URL needs the redis package: pip install redis") from exc
        self._redis_error: type[Exception] = RedisError
        self._no_script: type[Exception] = NoScriptError
        self.instance_id = settings.instance_id or f"{_host()}-{uuid.uuid4().hex[:8]}"
        self._p = settings.redis_prefix
        self._ttl = settings.instance_ttl
        self._url = settings.redis_url
        options: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": max(3.0, self._ttl / 2),
            "decode_responses": True,
        }
        self._client: Any
        self._pool: Any = None
        if settings.redis_cluster:
            self._client = RedisCluster.from_url(self._url, **options)
            self._reader: Any = self._client
        else:
            # Past its size, a command waits for a free connection rather than fail.
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url, max_connections=_POOL_SIZE, timeout=self._ttl / 2, **options
            )
            self._pool = pool
            self._client = aioredis.Redis(connection_pool=pool)
            self._reader = aioredis.from_url(
                self._url, **{**options, "socket_timeout": max(5.0, self._ttl)}
            )
        # The owner marks a session active in Redis at most this often (a chat turn costs no
        # Redis command in between); the rate limit it counts itself.
        self._touch_every = min(1.0, settings.session_timeout / 10)
        self._touched: dict[str, float] = {}  # user -> monotonic time of the last mark
        self._windows: dict[str, deque[float]] = {}  # user -> times (s) of recent messages
        self._routes: dict[str, Route] = {}
        self._shas = {
            name: sha1(getattr(_scripts, name).encode()).hexdigest()
            for name in (
                "OPEN", "CLAIM", "RELEASE", "TOUCH", "TURN", "BEGIN_END", "FINISH_END",
                "ABORT_END", "CLOSE", "REAP", "RESTORE", "LEAVE",
            )
        }  # fmt: skip
        self._inbox: Inbox | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reading: asyncio.Task[None] | None = None
        self._handovers: set[asyncio.Task[None]] = set()  # asked for by other instances
        self._outbox: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue(10_000)
        self._lease_until = 0.0  # monotonic: writing is allowed until then
        self._registered = False
        self._boot: str | None = None
        self._reachable = False
        self._reason = "not connected yet"
        self._dirty = False  # a change could not reach Redis: put everything back later
        # What this instance holds, to put back if Redis loses it.
        # user -> (session id, started ms, epoch)
        self._owned: dict[str, tuple[str, int, int]] = {}
        self._held: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])  # conns, chans
        self._closed = False

    # -- joining and leaving -------------------------------------------------------------

    async def open(self, inbox: Inbox) -> None:
        self._inbox = inbox
        try:
            await self._beat()
        except RegistryUnavailable as exc:
            logger.error("Redis at %s cannot be reached (%s); retrying", _safe(self._url), exc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_alive()), loop.create_task(self._send_outbox())]
        self._reading = loop.create_task(self._read_inbox())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in [*self._tasks, *self._handovers]:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        try:
            await self._leave()
        except (self._redis_error, RegistryUnavailable) as exc:
            logger.warning("could not leave the cluster cleanly: %s", exc)
        # A blocked XREAD does not yield to cancellation; closing its connection ends it.
        for client in {id(self._reader): self._reader, id(self._client): self._client}.values():
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                await client.aclose()
        if self._pool is not None:  # made here, so closed here
            with contextlib.suppress(Exception):
                await self._pool.aclose()
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.wait([self._reading], timeout=2)

    async def _leave(self) -> None:
        """Stop counting the connections still open here; what this instance still owns
        (nothing, after a clean shutdown) is left for a survivor to take over."""
        for user_id in list(self._held):
            await self._script("LEAVE", [self._key(user_id)], [self.instance_id])
        self._held.clear()
        me = self._instance_key()
        if self._owned:
            await self._client.delete(me)  # taken for dead at once: survivors adopt the rest
            return
        await self._client.delete(me, me + ":users", me + ":sessions", me + ":inbox")
        await self._client.srem(self._p + "instances", self.instance_id)

    # -- sessions --------------------------------------------------------------------------

    async def find(self, user_id: str) -> Record | None:
        flat = await self._call(self._client.hgetall(self._key(user_id)))
        return self._from_hash(user_id, flat) if flat.get("sid") else None

    async def ensure(self, user_id: str, session_id: str | None) -> tuple[Record, bool]:
        return await self._open_session(user_id, session_id, connect=False, limit=0, channel=False)

    async def connect(
        self, user_id: str, session_id: str | None, *, limit: int, channel: bool
    ) -> tuple[Record, bool]:
        await self._track(user_id)
        record, created = await self._open_session(
            user_id, session_id, connect=True, limit=limit, channel=channel
        )
        held = self._held[user_id]
        held[0] += 1
        held[1] += int(channel)
        if record.owner and record.owner != self.instance_id:
            self._send(record.owner, {"k": "route", "u": user_id})  # frames now come here too
        return record, created

    async def _open_session(
        self, user_id: str, session_id: str | None, *, connect: bool, limit: int, channel: bool
    ) -> tuple[Record, bool]:
        new_id = session_id or uuid.uuid4().hex
        args = [self.instance_id, new_id, int(connect), limit, int(channel)]

        async def attempt() -> tuple[int, list[Any]] | None:
            reply = await self._script("OPEN", [self._key(user_id)], args)
            code = int(reply[0])
            return None if code == -5 else (code, reply)

        code, reply = await self._until(attempt, "an end of this session is under way")
        if code == -3:
            raise TooManyRequests(
                f"too many connections: the limit is {limit} open at once per user"
            )
        record = self._from_reply(user_id, reply)
        if code == 1:
            await self._now_own(user_id, record)
        return record, code == 1

    async def claim(self, user_id: str, session_id: str | None, *, create: bool) -> Claim | None:
        key = self._key(user_id)
        new_id = session_id or uuid.uuid4().hex
        asked: tuple[str, float] | None = None
        dead = ""

        async def attempt() -> tuple[int, list[Any]] | None:
            nonlocal asked, dead
            reply = await self._script(
                "CLAIM", [key], [self.instance_id, new_id, int(create), dead]
            )
            code = int(reply[0])
            if code >= 0:
                return code, reply
            if code == -4:
                owner = str(reply[4])
                now = time.monotonic()
                if not await self._alive(owner):
                    dead = owner  # its heartbeat expired: it has stopped writing
                elif asked is None or asked[0] != owner or now - asked[1] > _ASK_AGAIN:
                    # It hands over after the turn it is running; asked again now and then,
                    # in case it took the session back in between.
                    asked = (owner, now)
                    self._send(owner, {"k": "release", "u": user_id, "to": self.instance_id})
            return None

        code, reply = await self._until(attempt, "another instance is handing the session over")
        if code == 0:
            return None
        record = self._from_reply(user_id, reply)
        await self._now_own(user_id, record)
        if code != 1:  # the previous owner left the user's recent messages to count on
            times = await self._call(self._client.lrange(self._rate_key(user_id), 0, -1))
            self._windows[user_id] = deque(sorted(float(t) for t in times))
        # Owned here but not loaded (code 2) reads the dialog again like a move does.
        return Claim(record, created=code == 1, moved=code != 1)

    async def release(self, user_id: str, to: str = "") -> None:
        await self._save_window(user_id)
        released = await self._script("RELEASE", [self._key(user_id)], [self.instance_id, to])
        await self._disown(user_id)
        if released and to:
            self._send(to, {"k": "owned", "u": user_id})

    async def touch(self, user_id: str) -> bool:
        return bool(await self._script("TOUCH", [self._key(user_id)], []))

    async def begin_turn(self, user_id: str, rate_limit: int) -> Route:
        self._check_lease()
        if rate_limit:
            _count_message(self._windows.setdefault(user_id, deque()), rate_limit, time.time())
        now = time.monotonic()
        last = self._touched.get(user_id)
        if last is not None and now - last < self._touch_every:
            return self._routes.get(user_id, NO_ROUTE)
        self._touched[user_id] = now
        reply = await self._script("TURN", [self._key(user_id)], [self.instance_id])
        if int(reply[0]) < 0:
            await self._disown(user_id)
            raise OwnershipLost(f"the session of {user_id!r} is owned by another instance now")
        route = self._routes[user_id] = _route(reply)
        return route

    async def begin_end(
        self, user_id: str, reason: EndReason, *, idle_for: float | None, unconnected: bool
    ) -> EndCheck:
        self._check_lease()
        timeout_ms = -1 if idle_for is None else int(idle_for * 1000)
        reply = await self._script(
            "BEGIN_END",
            [self._key(user_id)],
            [self.instance_id, reason, timeout_ms, int(unconnected)],
        )
        code = int(reply[0])
        if code == 1:
            return EndCheck(True)
        if code == 0:
            await self._disown(user_id)
            return EndCheck(False, "gone")
        if code == -2:
            await self._disown(user_id)
            return EndCheck(False, "lost")
        if code == -3:
            return EndCheck(False, "connected")
        return EndCheck(False, "active", _time(reply[8]))

    async def finish_end(self, user_id: str) -> Route:
        await self._save_window(user_id)
        reply = await self._script(
            "FINISH_END", [self._key(user_id), self._rate_key(user_id)], [self.instance_id]
        )
        await self._disown(user_id)
        return _route(reply)

    async def abort_end(self, user_id: str) -> None:
        try:
            await self._script("ABORT_END", [self._key(user_id)], [self.instance_id])
        except RegistryUnavailable as exc:
            logger.error("could not abort the end of %r's session: %s", user_id, exc)

    async def disconnect(self, user_id: str, *, channel: bool, failed: bool) -> Record | None:
        if self._closed:
            return None  # left the cluster: its connections no longer count
        held = self._held[user_id]
        held[0] = max(held[0] - 1, 0)
        held[1] = max(held[1] - int(channel), 0)
        try:
            reply = await self._script(
                "CLOSE", [self._key(user_id)], [self.instance_id, int(channel), int(failed)]
            )
        finally:
            if not held[0]:
                self._held.pop(user_id, None)
        if not int(reply[0]):
            return None
        await self._untrack_if_idle(user_id)
        return self._from_reply(user_id, reply)

    # -- the whole cluster ---------------------------------------------------------------

    async def count(self) -> int:
        others = [i for i in await self._live_instances() if i != self.instance_id]
        total = len(self._owned)
        if others:
            keys = [self._instance_key(i) + ":sessions" for i in others]
            values = await self._call(self._pipelined([("GET", key) for key in keys]))
            total += sum(int(v or 0) for v in values)
        return total

    async def records(self) -> list[Record]:
        users: set[str] = set()
        for instance in await self._live_instances():
            key = self._instance_key(instance) + ":users"
            users.update(await self._call(self._client.smembers(key)))
        ordered = sorted(users)
        flats = await self._call(
            self._pipelined([("HGETALL", self._key(user)) for user in ordered])
        )
        pairs = [(user_id, _pairs(flat)) for user_id, flat in zip(ordered, flats, strict=True)]
        return [self._from_hash(user_id, flat) for user_id, flat in pairs if flat.get("sid")]

    def deliver(self, instances: tuple[str, ...], user_id: str, frame: dict[str, Any]) -> None:
        body = json.dumps(frame, separators=(",", ":"))
        for instance in instances:
            self._send(instance, {"k": "frame", "u": user_id, "f": body})

    def check_writable(self, user_id: str, epoch: int) -> None:
        owned = self._owned.get(user_id)
        if owned is None or owned[2] != epoch:
            raise FencedOff(
                f"this instance no longer owns the session of {user_id!r} (another instance "
                "took it over); nothing was stored: reconnect to go on"
            )
        self._check_lease()

    def _check_lease(self) -> None:
        if not self._reachable or time.monotonic() >= self._lease_until:
            raise RegistryUnavailable(
                "this instance cannot reach Redis to renew its lease, so it may not write "
                "dialogs now; retry in a moment",
                retry_after=max(1, round(self._ttl / 5)),
            )

    def status(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "reachable": self._reachable,
            "reason": None if self._reachable else self._reason,
            "owned": len(self._owned),
            "connections": sum(held[0] for held in self._held.values()),
        }

    # -- heartbeat, death, and a Redis that lost its data ---------------------------------

    async def _keep_alive(self) -> None:
        period = self._ttl / 5
        while True:
            await asyncio.sleep(period)
            try:
                await self._beat()
                await self._reap_the_dead()
            except RegistryUnavailable:
                pass  # said once, by _lost_redis; the next beat tries again
            except Exception:
                logger.exception("the heartbeat failed; retrying")

    async def _beat(self) -> None:
        sent = time.monotonic()
        me = self._instance_key()
        ttl_ms = int(self._ttl * 800)
        info = json.dumps({"started": int(time.time())})
        marker = f"{uuid.uuid4().hex}:{int(time.time() * 1000)}"
        pipe = self._client.pipeline(transaction=False)
        pipe.set(me, info, px=ttl_ms, get=True)
        pipe.sadd(self._p + "instances", self.instance_id)
        pipe.get(self._p + "boot")
        pipe.set(self._p + "boot", marker, nx=True)
        previous, _, boot, made = await self._call(pipe.execute())
        boot = marker if made else boot
        was_reachable, self._reachable = self._reachable, True
        self._reason = ""
        if not was_reachable and self._registered:
            logger.info("Redis can be reached again")
        if self._boot is not None and boot != self._boot:
            logger.warning("Redis lost its data (restarted empty?): putting back what is here")
            self._dirty = True
        elif self._registered and previous is None:
            # Our key expired: the others took us for dead and may own our sessions now.
            logger.error("this instance was taken for dead by the others")
            self._owned.clear()
            if self._inbox is not None:
                await self._inbox.lost()
            self._dirty = True
        self._boot = boot
        self._registered = True
        self._lease_until = sent + self._ttl * 0.7
        if self._dirty:
            await self._restore()

    async def _restore(self) -> None:
        """Put back the sessions this instance owns and the connections it holds."""
        users = set(self._owned) | set(self._held)
        lost: list[str] = []
        for user_id in users:
            session_id, started, epoch = self._owned.get(user_id, ("", 0, 0))
            held = self._held.get(user_id, [0, 0])
            if not session_id and not held[0]:
                continue
            code = await self._script(
                "RESTORE",
                [self._key(user_id)],
                [
                    self.instance_id,
                    session_id or "",
                    started,
                    int(bool(session_id)),
                    *held,
                    epoch,
                ],
            )
            if int(code) == -1 and session_id:
                lost.append(user_id)
        if users:
            await self._call(self._client.sadd(self._instance_key() + ":users", *users))
        for user_id in lost:
            self._owned.pop(user_id, None)
        await self._count_owned()
        self._dirty = False
        if lost and self._inbox is not None:
            logger.error("%d sessions are owned elsewhere now; dropped here", len(lost))
            await self._inbox.lost()

    async def _reap_the_dead(self) -> None:
        instances = await self._call(self._client.smembers(self._p + "instances"))
        others = sorted(i for i in instances if i != self.instance_id)
        if not others:
            return
        alive = await self._call(
            self._pipelined([("EXISTS", self._instance_key(i)) for i in others])
        )
        for instance, is_alive in zip(others, alive, strict=True):
            if not int(is_alive):
                await self._reap(instance)

    async def _reap(self, dead: str) -> None:
        """Take over what an instance that died left: its sessions and its connections."""
        base = self._instance_key(dead)
        got = await self._call(
            self._client.set(base + ":reaper", self.instance_id, nx=True, px=int(self._ttl * 2000))
        )
        if not got:
            return  # another survivor is on it
        users = await self._call(self._client.smembers(base + ":users"))
        adopted: list[Adopted] = []
        for user_id in users:
            reply = await self._script("REAP", [self._key(user_id)], [dead, self.instance_id])
            code = int(reply[0])
            pending, _, ending = str(reply[8]).partition("|")
            reason = ending or pending
            if code == 0 or (code == 2 and (int(reply[5]) or not pending)):
                continue  # gone, or owned by a live instance and still connected somewhere
            record = self._from_reply(user_id, reply)
            if code == 1:
                await self._now_own(user_id, record)
            adopted.append(
                Adopted(
                    record,
                    pending=reason if reason in END_REASONS else None,  # type: ignore[arg-type]
                    ending=bool(ending),
                )
            )
        logger.warning(
            "instance %s died; took over %d of its %d sessions", dead, len(adopted), len(users)
        )
        if adopted and self._inbox is not None:
            await self._inbox.adopt(adopted)
        await self._call(self._client.delete(base + ":users", base + ":sessions", base + ":inbox"))
        await self._call(self._client.srem(self._p + "instances", dead))

    # -- the inbox: what other instances ask of this one ---------------------------------

    async def _read_inbox(self) -> None:
        key = self._instance_key() + ":inbox"
        last = "0"
        while True:
            try:
                answer = await self._reader.xread({key: last}, count=256, block=1000)
            except self._redis_error as exc:
                if self._closed:
                    return
                self._lost_redis(exc)  # noticed at once: this connection is always open
                await asyncio.sleep(self._ttl / 5)
                continue
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    last = entry_id
                    self._dispatch(fields)

    def _dispatch(self, fields: dict[str, str]) -> None:
        inbox = self._inbox
        if inbox is None:
            return
        kind, user_id = fields.get("k"), fields.get("u", "")
        if kind == "frame":
            try:
                inbox.deliver(user_id, json.loads(fields["f"]))
            except Exception:
                logger.exception("could not deliver a frame to %r", user_id)
        elif kind == "release":
            self._background(inbox.release(user_id, fields.get("to", "")))
        elif kind == "owned":
            self._background(inbox.take(user_id))
        elif kind == "route":
            self._touched.pop(user_id, None)  # the next turn asks Redis where to send frames

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    @staticmethod
    async def _guarded(work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            logger.exception("handing a session over failed")

    def _send(self, instance: str, fields: dict[str, str]) -> None:
        try:
            self._outbox.put_nowait((instance, fields))
        except asyncio.QueueFull:
            logger.warning("too much is waiting to go to other instances; dropped a message")

    async def _send_outbox(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < 256:
                batch.append(self._outbox.get_nowait())
            commands = [
                (
                    "XADD",
                    self._instance_key(instance) + ":inbox",
                    "MAXLEN",
                    "~",
                    _INBOX_LENGTH,
                    "*",
                    *[part for pair in fields.items() for part in pair],
                )
                for instance, fields in batch
            ]
            try:
                await self._pipelined(commands)
            except self._redis_error as exc:
                logger.warning("could not reach other instances: %s", exc)

    # -- helpers -------------------------------------------------------------------------

    def _key(self, user_id: str) -> str:
        return f"{self._p}{{{directory_name(user_id)}}}:session"

    def _rate_key(self, user_id: str) -> str:
        return f"{self._p}{{{directory_name(user_id)}}}:rate"

    def _instance_key(self, instance: str | None = None) -> str:
        return f"{self._p}instance:{instance or self.instance_id}"

    async def _alive(self, instance: str) -> bool:
        return bool(await self._call(self._client.exists(self._instance_key(instance))))

    async def _live_instances(self) -> list[str]:
        instances = sorted(await self._call(self._client.smembers(self._p + "instances")))
        if not instances:
            return [self.instance_id]
        alive = await self._call(
            self._pipelined([("EXISTS", self._instance_key(i)) for i in instances])
        )
        live = [i for i, a in zip(instances, alive, strict=True) if int(a)]
        return live if self.instance_id in live else [*live, self.instance_id]

    async def _now_own(self, user_id: str, record: Record) -> None:
        started = int(record.started_at.timestamp() * 1000)
        self._owned[user_id] = (record.session_id, started, record.epoch)
        await self._track(user_id)
        await self._count_owned()

    async def _disown(self, user_id: str) -> None:
        self._touched.pop(user_id, None)
        self._windows.pop(user_id, None)
        self._routes.pop(user_id, None)
        if self._owned.pop(user_id, None) is not None:
            await self._count_owned()
        await self._untrack_if_idle(user_id)

    async def _save_window(self, user_id: str) -> None:
        """Leave the user's recent message times for the next owner to go on counting."""
        window = self._windows.get(user_id)
        if not window:
            return
        key = self._rate_key(user_id)
        pipe = self._client.pipeline(transaction=True)  # one key: one slot
        pipe.delete(key)
        pipe.rpush(key, *(repr(t) for t in window))
        pipe.pexpire(key, _WINDOW_MS)
        await self._call(pipe.execute())

    async def _track(self, user_id: str) -> None:
        await self._call(self._client.sadd(self._instance_key() + ":users", user_id))

    async def _untrack_if_idle(self, user_id: str) -> None:
        if user_id not in self._owned and user_id not in self._held:
            await self._call(self._client.srem(self._instance_key() + ":users", user_id))

    async def _count_owned(self) -> None:
        await self._call(self._client.set(self._instance_key() + ":sessions", len(self._owned)))

    async def _until(
        self, attempt: Callable[[], Awaitable[tuple[int, list[Any]] | None]], waiting: str
    ) -> tuple[int, list[Any]]:
        """Repeat ``attempt`` until it answers, backing off, for about two instance TTLs."""
        deadline = time.monotonic() + 2 * self._ttl
        pause = _CLAIM_WAIT
        while True:
            answer = await attempt()
            if answer is not None:
                return answer
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"{waiting}; retry in a moment", retry_after=1)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._shas[name]
        try:
            return await self._call(
                self._client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            )
        except RegistryUnavailable as exc:
            if not isinstance(exc.__cause__, self._no_script):
                raise
        source = getattr(_scripts, name)
        return await self._call(
            self._client.execute_command("EVAL", source, len(keys), *keys, *args)
        )

    def _pipelined(self, commands: list[tuple[Any, ...]]) -> Awaitable[list[Any]]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        result: Awaitable[list[Any]] = pipe.execute()
        return result

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except self._redis_error as exc:
            if not isinstance(exc, self._no_script):
                self._lost_redis(exc)
            raise RegistryUnavailable(
                f"the session registry (Redis) cannot be reached: {exc}",
                retry_after=max(1, round(self._ttl / 5)),
            ) from exc
        except OSError as exc:
            self._lost_redis(exc)
            raise RegistryUnavailable(
                f"the session registry (Redis) cannot be reached: {exc}", retry_after=1
            ) from exc

    def _lost_redis(self, exc: BaseException) -> None:
        """Redis failed a command: write no dialog until a heartbeat gets through again
        (it also puts back, then, whatever did not reach Redis meanwhile)."""
        self._dirty = True
        if self._reachable:
            logger.error("Redis cannot be reached: %s", exc)
        self._reachable, self._reason = False, str(exc)

    def _from_reply(self, user_id: str, reply: list[Any]) -> Record:
        return Record(
            user_id=user_id,
            session_id=str(reply[1]),
            started_at=_time(reply[2]),
            last_activity=_time(reply[3]),
            connections=int(reply[5]),
            owner=str(reply[4]),
            route=_route(reply),
            epoch=int(reply[9]) if len(reply) > 9 else 0,
        )

    def _from_hash(self, user_id: str, flat: dict[str, str]) -> Record:
        connections = sum(int(v) for f, v in flat.items() if f.startswith("c:"))
        return Record(
            user_id=user_id,
            session_id=flat.get("sid", ""),
            started_at=_time(flat.get("st", 0)),
            last_activity=_time(flat.get("la", 0)),
            connections=connections,
            owner=flat.get("own", ""),
            epoch=int(flat.get("ep") or 0),
        )


def _count_message(window: deque[float], limit: int, now: float) -> None:
    """Count one message in ``window`` (times in seconds); `TooManyRequests` past ``limit``
    in the last minute."""
    while window and window[0] <= now - _WINDOW_MS / 1000:
        window.popleft()
    if len(window) >= limit:
        retry = max(1, round(window[0] + _WINDOW_MS / 1000 - now))
        raise TooManyRequests(
            f"too many messages: the limit is {limit} a minute; try again in {retry} s",
            retry_after=retry,
        )
    window.append(now)


def _route(reply: list[Any]) -> Route:
    connections = tuple(i for i in str(reply[6]).split(",") if i)
    channels = tuple(i for i in str(reply[7]).split(",") if i)
    return Route(connections, channels)


def _pairs(flat: Any) -> dict[str, str]:
    if isinstance(flat, dict):
        return flat
    items = list(flat or ())
    return dict(zip(items[::2], items[1::2], strict=True))


def _time(milliseconds: Any) -> datetime:
    return datetime.fromtimestamp(int(milliseconds or 0) / 1000, UTC)


def _host() -> str:
    return (socket.gethostname().split(".")[0] or "host")[:24] + f"-{os.getpid()}"


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, _, rest = url.partition("://")
    _credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{'***@' if at else ''}{host}"
