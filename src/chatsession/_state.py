"""The small records the session manager keeps per user."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from chatsession.domain import Message, SessionInfo

T = TypeVar("T")


class Session:
    """One active session. Small on purpose: an idle session costs a few hundred bytes."""

    __slots__ = (
        "archive_id",
        "epoch",
        "last_seen",
        "messages",
        "session_id",
        "started_at",
        "user_id",
    )

    def __init__(
        self,
        user_id: str,
        session_id: str | None,
        started_at: datetime | None = None,
        epoch: int = 0,
    ) -> None:
        self.user_id = user_id
        self.epoch = epoch  # the fencing token this instance owns the session at
        self.session_id = session_id or uuid.uuid4().hex
        self.started_at = started_at or datetime.now(UTC)
        self.last_seen = time.monotonic()
        self.messages: list[Message] | None = None  # None until the first message is stored
        self.archive_id: str | None = None  # set when the session has ended

    def idle_for(self) -> float:
        return time.monotonic() - self.last_seen

    def info(self, connections: int, *, active: bool) -> SessionInfo:
        last_activity = max(datetime.now(UTC) - timedelta(seconds=self.idle_for()), self.started_at)
        return SessionInfo(
            user_id=self.user_id,
            session_id=self.session_id,
            started_at=self.started_at,
            last_activity=last_activity,
            is_active=active,
            connections=connections,
        )


class UserLock:
    """A user's lock, kept in ``locks`` only while someone holds or waits for it.

    ``async with`` holds it; first come, first served.
    """

    __slots__ = ("_locks", "lock", "user_id", "users")

    def __init__(self, locks: dict[str, UserLock], user_id: str) -> None:
        self._locks = locks
        self.user_id = user_id
        self.lock = asyncio.Lock()
        self.users = 0  # holding or waiting

    async def __aenter__(self) -> None:
        self.users += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self.lock.release()
        self._leave()

    def _leave(self) -> None:
        self.users -= 1
        if not self.users:
            del self._locks[self.user_id]


@dataclass(slots=True)
class Connection:
    """One open connection of a user, as `ChatServer.connect` hands it out.

    A transport calls `fail` when the connection broke rather than closed; the session then
    ends with reason ``error`` instead of ``disconnect``.
    """

    user_id: str
    session_id: str
    failed: bool = False

    def fail(self) -> None:
        self.failed = True


async def run_to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end even if the caller is cancelled meanwhile.

    The cancellation is passed on once the coroutine is done, so the caller still stops,
    but never between a write and the bookkeeping that records it.
    """
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                continue
        if not task.cancelled():
            task.exception()  # retrieved: the caller is being cancelled, not told of it
        raise
