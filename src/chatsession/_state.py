"""The small records the session manager keeps per user."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from chatsession.domain import Message, SessionInfo


class Session:
    """One active session. Small on purpose: an idle session costs a few hundred bytes."""

    __slots__ = ("archive_id", "last_seen", "messages", "session_id", "started_at", "user_id")

    def __init__(self, user_id: str, session_id: str | None) -> None:
        self.user_id = user_id
        self.session_id = session_id or uuid.uuid4().hex
        self.started_at = time.time()
        self.last_seen = time.monotonic()
        self.messages: list[Message] | None = None  # None until the first message is stored
        self.archive_id: str | None = None  # set when the session has ended

    @property
    def started_at_utc(self) -> datetime:
        return datetime.fromtimestamp(self.started_at, UTC)

    def idle_for(self) -> float:
        return time.monotonic() - self.last_seen

    def info(self, connections: int, *, active: bool) -> SessionInfo:
        last_activity = max(time.time() - self.idle_for(), self.started_at)
        return SessionInfo(
            user_id=self.user_id,
            session_id=self.session_id,
            started_at=self.started_at_utc,
            last_activity=datetime.fromtimestamp(last_activity, UTC),
            is_active=active,
            connections=connections,
        )


class UserLock:
    """A user's lock, kept only while someone holds or waits for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


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
