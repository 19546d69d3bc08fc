"""`LocalRegistry`: the single process, where this instance is the whole cluster.

Every session is owned here, so claims never wait and nothing is delivered elsewhere. It
is the default and the fastest: each call is a dictionary lookup. A user's entry lives as
long as their session or their connections: connections outlive a session that ends while
they are open, and count for the next one.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from chatsession._exceptions import TooManyRequests
from chatsession._types import EndReason
from chatsession.registry.base import Claim, EndCheck, Inbox, Record, Route

__all__ = ["LocalRegistry"]

_WINDOW = 60.0  # the rate limit counts messages in any sliding minute
_NO_ROUTE = Route()


class _Entry:
    __slots__ = (
        "connections",
        "ending",
        "epoch",
        "last_seen",
        "sent",
        "session_id",
        "started_at",
    )

    def __init__(self, session_id: str | None) -> None:
        self.session_id = session_id  # None: no session, only connections
        self.epoch = 0
        self.started_at = datetime.now(UTC)
        self.last_seen = time.monotonic()
        self.connections = 0
        self.ending = False
        self.sent: deque[float] | None = None  # message times, while a rate limit applies


class LocalRegistry:
    """The `SessionRegistry` of a single process."""

    shared = False

    def __init__(self, instance_id: str = "") -> None:
        self.instance_id = instance_id or "local"
        self._entries: dict[str, _Entry] = {}
        self._epoch = 0  # the last epoch handed out

    async def open(self, inbox: Inbox) -> None:
        pass

    async def aclose(self) -> None:
        self._entries.clear()

    async def find(self, user_id: str) -> Record | None:
        entry = self._entries.get(user_id)
        return None if entry is None or entry.session_id is None else self._record(user_id, entry)

    async def ensure(self, user_id: str, session_id: str | None) -> tuple[Record, bool]:
        entry = self._entries.get(user_id)
        if entry is None:
            entry = self._entries[user_id] = _Entry(None)
        created = entry.session_id is None
        if created:
            entry.session_id = session_id or uuid.uuid4().hex
            entry.started_at = datetime.now(UTC)
            # The clock in ms, and past the last one: an epoch grows across sessions and
            # restarts, as a store that keeps the highest one seen requires.
            self._epoch = entry.epoch = max(time.time_ns() // 1_000_000, self._epoch + 1)
        entry.last_seen = time.monotonic()
        return self._record(user_id, entry), created

    async def claim(self, user_id: str, session_id: str | None, *, create: bool) -> Claim | None:
        if not create and await self.find(user_id) is None:
            return None
        record, created = await self.ensure(user_id, session_id)
        return Claim(record, created=created)

    async def release(self, user_id: str, to: str = "") -> None:
        pass  # nobody else could take it

    async def touch(self, user_id: str) -> bool:
        entry = self._entries.get(user_id)
        if entry is None or entry.session_id is None:
            return False
        entry.last_seen = time.monotonic()
        return True

    async def begin_turn(self, user_id: str, rate_limit: int) -> Route:
        entry = self._entries.get(user_id)
        if entry is None or entry.session_id is None:
            return _NO_ROUTE
        now = time.monotonic()
        if rate_limit:
            _count_message(entry, rate_limit, now)
        entry.last_seen = now
        return _NO_ROUTE

    async def begin_end(
        self, user_id: str, reason: EndReason, *, idle_for: float | None, unconnected: bool
    ) -> EndCheck:
        entry = self._entries.get(user_id)
        if entry is None or entry.session_id is None:
            return EndCheck(False, "gone")
        if unconnected and entry.connections and reason != "shutdown":
            return EndCheck(False, "connected")
        if idle_for is not None and time.monotonic() - entry.last_seen < idle_for:
            return EndCheck(False, "active", _wall_time(entry.last_seen))
        entry.ending = True
        return EndCheck(True)

    async def finish_end(self, user_id: str) -> Route:
        entry = self._entries.get(user_id)
        if entry is not None and entry.connections:
            entry.session_id, entry.ending, entry.sent = None, False, None
        else:
            self._entries.pop(user_id, None)
        return _NO_ROUTE

    async def abort_end(self, user_id: str) -> None:
        entry = self._entries.get(user_id)
        if entry is not None:
            entry.ending = False

    async def connect(
        self, user_id: str, session_id: str | None, *, limit: int, channel: bool
    ) -> tuple[Record, bool]:
        entry = self._entries.get(user_id)
        if limit and entry is not None and entry.connections >= limit:
            raise TooManyRequests(
                f"too many connections: the limit is {limit} open at once per user"
            )
        _, created = await self.ensure(user_id, session_id)
        entry = self._entries[user_id]
        entry.connections += 1
        return self._record(user_id, entry), created

    async def disconnect(self, user_id: str, *, channel: bool, failed: bool) -> Record | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        entry.connections = max(entry.connections - 1, 0)
        if entry.session_id is None:
            if not entry.connections:
                del self._entries[user_id]
            return None
        entry.last_seen = time.monotonic()
        return self._record(user_id, entry)

    async def count(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.session_id is not None)

    async def records(self) -> list[Record]:
        return [
            self._record(user_id, entry)
            for user_id, entry in self._entries.items()
            if entry.session_id is not None
        ]

    def deliver(self, instances: tuple[str, ...], user_id: str, frame: dict[str, Any]) -> None:
        pass  # there is no other instance

    def check_writable(self, user_id: str, epoch: int) -> None:
        pass  # nobody else can take a session over

    def status(self) -> dict[str, Any]:
        return {"backend": "local"}

    def _record(self, user_id: str, entry: _Entry) -> Record:
        assert entry.session_id is not None
        return Record(
            user_id=user_id,
            session_id=entry.session_id,
            started_at=entry.started_at,
            last_activity=max(_wall_time(entry.last_seen), entry.started_at),
            connections=entry.connections,
            owner=self.instance_id,
            epoch=entry.epoch,
        )


def _count_message(entry: _Entry, limit: int, now: float) -> None:
    sent = entry.sent
    if sent is None:
        sent = entry.sent = deque()
    while sent and sent[0] <= now - _WINDOW:
        sent.popleft()
    if len(sent) >= limit:
        retry = max(1, round(sent[0] + _WINDOW - now))
        raise TooManyRequests(
            f"too many messages: the limit is {limit} a minute; try again in {retry} s",
            retry_after=retry,
        )
    sent.append(now)


def _wall_time(monotonic: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - monotonic)
