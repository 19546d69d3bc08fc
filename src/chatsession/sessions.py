"""The session lifecycle: start, activity, connections, chat turns, end, expiry.

It knows no transport. Per user it keeps one `_Session` while a session is active, a count
of open connections, and, while anything is in progress for that user, a lock.

The lock is the whole concurrency story. Every change to a user's session and dialog —
starting it, storing a chat turn, ending it — holds that user's lock, and asyncio's locks
are first come, first served. So two chats of one user run one after the other, and a
message that races an ending session is stored whole before the archive is taken (it is
in the archive) or after (it starts the next session's dialog). Each end trigger (close,
error, timeout, shutdown, explicit) names the session it means to end and ends it only if
it is still the current one, so however many race, one archive and one ``session_ended``
result.

Expiry costs what expires: sessions without connections sit in an ordered dict by last
activity (a touch moves one to the end), so a sweep reads from the front and stops at the
first session still in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chatsession._exceptions import (
    ChatSessionError,
    InvalidSessionId,
    ModelError,
    ModelOutputError,
    ServerClosedError,
    StorageError,
)
from chatsession._types import EndReason
from chatsession.domain import Chunk, Message, Reasoning, SessionEvent, SessionInfo
from chatsession.events import EventEmitter
from chatsession.models.base import ChatModel
from chatsession.settings import Settings
from chatsession.storage._paths import check_user_id
from chatsession.storage.base import DialogStore

__all__ = ["Connection", "SessionManager"]

logger = logging.getLogger("chatsession.sessions")

_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class _Session:
    """One active session. Small on purpose: an idle session costs a few hundred bytes."""

    __slots__ = ("archive_id", "last_seen", "messages", "session_id", "started_at", "user_id")

    def __init__(self, user_id: str, session_id: str) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.started_at = time.time()
        self.last_seen = time.monotonic()
        self.messages: list[Message] | None = None  # None until the first message
        self.archive_id: str | None = None  # set when the session has ended

    def info(self, connections: int) -> SessionInfo:
        last_activity = time.time() - (time.monotonic() - self.last_seen)
        return SessionInfo(
            user_id=self.user_id,
            session_id=self.session_id,
            started_at=self.started_at_utc,
            last_activity=datetime.fromtimestamp(max(last_activity, self.started_at), UTC),
            is_active=self.archive_id is None,
            connections=connections,
        )

    @property
    def started_at_utc(self) -> datetime:
        return datetime.fromtimestamp(self.started_at, UTC)


class _UserLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclass(slots=True)
class Connection:
    """One open connection of a user, as `SessionManager.connect` hands it out.

    A transport calls `fail` when the connection broke rather than closed; the session then
    ends with reason ``error`` instead of ``disconnect``.
    """

    user_id: str
    session_id: str
    failed: bool = False

    def fail(self) -> None:
        self.failed = True


class SessionManager:
    """Holds every user's session; see the module docstring for how it stays consistent."""

    def __init__(
        self,
        settings: Settings,
        store: DialogStore,
        model: ChatModel,
        events: EventEmitter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.events = events
        self._sessions: dict[str, _Session] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # unconnected, oldest activity first
        self._connections: dict[str, int] = {}
        self._locks: dict[str, _UserLock] = {}
        self._grace_timers: dict[str, asyncio.TimerHandle] = {}
        self._turns: dict[str, asyncio.Task[Any]] = {}
        self._spawn: Any = None
        self._closing = False

    # -- lifecycle of the manager ----------------------------------------------------

    def bind(self, spawn: Any) -> None:
        """Give the manager its task owner: ``spawn(coroutine)`` runs a background task."""
        self._spawn = spawn

    @property
    def closing(self) -> bool:
        return self._closing

    async def recover(self) -> int:
        """Archive dialogs a previous run left current (reason ``recovered``)."""
        recovered = 0
        for user_id in await self.store.users_with_current():
            try:
                archive_id = await self.store.recover_current(user_id, ended_at=_now())
            except StorageError as exc:
                logger.error("could not recover the dialog of %r: %s", user_id, exc)
                continue
            if archive_id is not None:
                recovered += 1
                logger.info("recovered the dialog of %r as archive %s", user_id, archive_id)
        return recovered

    async def run_sweeper(self) -> None:
        """End idle sessions every ``session_check_interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.session_check_interval)
            try:
                await self.sweep()
            except Exception:
                logger.exception("the expiry sweep failed; it runs again next interval")

    async def shutdown(self) -> None:
        """Archive every session with reason ``shutdown``.

        Replies in flight get ``shutdown_grace`` seconds to finish, then are cancelled
        (their partial replies are stored, marked interrupted).
        """
        self._closing = True
        for timer in self._grace_timers.values():
            timer.cancel()
        self._grace_timers.clear()
        sessions = list(self._sessions.values())
        if not sessions:
            return
        ending = asyncio.ensure_future(self._end_all(sessions))
        done, _ = await asyncio.wait([ending], timeout=self.settings.shutdown_grace)
        if not done:
            logger.warning("cancelling %d replies still streaming at shutdown", len(self._turns))
            for task in list(self._turns.values()):
                task.cancel()
        await ending

    async def _end_all(self, sessions: list[_Session]) -> None:
        # Concurrently, so a user whose reply is still streaming holds up no one else.
        await asyncio.gather(*(self._end_logged(s, "shutdown") for s in sessions))

    # -- sessions --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._sessions

    def info(self, user_id: str) -> SessionInfo | None:
        session = self._sessions.get(user_id)
        if session is None:
            return None
        return session.info(self._connections.get(user_id, 0))

    def infos(self) -> list[SessionInfo]:
        return [s.info(self._connections.get(s.user_id, 0)) for s in self._sessions.values()]

    async def start(self, user_id: str, session_id: str | None = None) -> SessionInfo:
        check_user_id(user_id)
        async with self._locked(user_id):
            session = self._current_or_new(user_id, session_id)
            self._touch(session)
            return session.info(self._connections.get(user_id, 0))

    def touch(self, user_id: str) -> bool:
        session = self._sessions.get(user_id)
        if session is None:
            return False
        self._touch(session)
        return True

    async def end(self, user_id: str, reason: EndReason = "manual") -> str | None:
        session = self._sessions.get(user_id)
        if session is None:
            return None
        return await self._end(session, reason)

    async def sweep(self) -> int:
        """End every unconnected session idle past the timeout; return how many ended."""
        deadline = time.monotonic() - self.settings.session_timeout
        expired: list[_Session] = []
        for user_id in self._idle:
            session = self._sessions[user_id]
            if session.last_seen > deadline:
                break
            expired.append(session)
        ended = 0
        for session in expired:
            if session.user_id in self._locks:
                self._touch(session)  # a reply is streaming or being stored: not idle
            elif await self._end_logged(session, "timeout"):
                ended += 1
        return ended

    def _current_or_new(self, user_id: str, session_id: str | None) -> _Session:
        """The user's session, or a new one (the caller holds the user's lock)."""
        session = self._sessions.get(user_id)
        if session is not None:
            return session
        if self._closing:
            raise ServerClosedError("Cannot start a session: the server is shutting down.")
        if session_id is not None and not _SESSION_ID.fullmatch(session_id):
            raise InvalidSessionId(
                "a session id must be 1 to 128 letters, digits or '_.:-' characters"
            )
        session = _Session(user_id, session_id or uuid.uuid4().hex)
        self._sessions[user_id] = session
        if user_id not in self._connections:
            self._idle[user_id] = None
        logger.debug("session %s started for %r", session.session_id, user_id)
        self.events.emit("session_started", user_id, session.session_id)
        self._emit_event("session_started", session)
        return session

    def _touch(self, session: _Session) -> None:
        session.last_seen = time.monotonic()
        if session.user_id in self._idle:
            self._idle.move_to_end(session.user_id)

    async def _end_logged(self, session: _Session, reason: EndReason) -> bool:
        """End ``session`` for a background trigger, which has no caller to raise to."""
        try:
            await self._end(session, reason)
        except ChatSessionError as exc:
            # The dialog stays current; the next sweep, or the next start, tries again.
            logger.error("could not end the session of %r (%s): %s", session.user_id, reason, exc)
            return False
        except Exception:
            logger.exception("could not end the session of %r (%s)", session.user_id, reason)
            return False
        return True

    async def _end(self, session: _Session, reason: EndReason) -> str | None:
        """End ``session`` if it is still its user's current one; exactly once."""
        user_id = session.user_id
        async with self._locked(user_id):
            if self._sessions.get(user_id) is not session:
                return session.archive_id  # ended already, by whichever trigger came first
            if reason in ("disconnect", "error") and user_id in self._connections:
                return None  # a new connection came in while this end waited for the lock
            archive_id = None
            if session.messages:
                archive_id = await self.store.archive_current(
                    user_id, ended_at=_now(), reason=reason
                )
            del self._sessions[user_id]
            self._idle.pop(user_id, None)
            timer = self._grace_timers.pop(user_id, None)
            if timer is not None:
                timer.cancel()
            session.archive_id = archive_id
            session.messages = None
        logger.debug("session %s of %r ended (%s)", session.session_id, user_id, reason)
        self.events.emit("session_ended", user_id, archive_id)
        self._emit_event("session_ended", session, reason=reason, archive_id=archive_id)
        return archive_id

    def _emit_event(
        self,
        kind: str,
        session: _Session,
        *,
        reason: EndReason | None = None,
        archive_id: str | None = None,
    ) -> None:
        if self.events.has_handlers("session_event"):
            event = SessionEvent(
                kind, session.user_id, session.session_id, reason=reason, archive_id=archive_id
            )
            self.events.emit("session_event", event)

    @asynccontextmanager
    async def _locked(self, user_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(user_id)
        if entry is None:
            entry = self._locks[user_id] = _UserLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[user_id]

    # -- connections -----------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self, user_id: str, session_id: str | None = None
    ) -> AsyncIterator[Connection]:
        """Hold one connection of ``user_id`` open for the ``async with`` block.

        The session (started if there is none) does not expire while any connection of its
        user is open. When the last one closes, the session ends — ``error`` if the block
        raised or `Connection.fail` was called, else ``disconnect`` — after
        ``disconnect_grace`` seconds in which a new connection keeps it; with
        ``auto_archive_on_disconnect`` off, only the inactivity timeout ends it.
        """
        check_user_id(user_id)
        async with self._locked(user_id):
            session = self._current_or_new(user_id, session_id)
            self._connections[user_id] = self._connections.get(user_id, 0) + 1
            self._idle.pop(user_id, None)
            timer = self._grace_timers.pop(user_id, None)
            if timer is not None:
                timer.cancel()
            self._touch(session)
        connection = Connection(user_id, session.session_id)
        self._emit_event("connection_opened", session)
        try:
            yield connection
        except Exception:
            connection.fail()
            raise
        finally:
            await self._disconnected(connection)

    async def _disconnected(self, connection: Connection) -> None:
        user_id = connection.user_id
        remaining = self._connections[user_id] - 1
        if remaining:
            self._connections[user_id] = remaining
            return
        del self._connections[user_id]
        session = self._sessions.get(user_id)
        if session is None or self._closing:
            return
        self._emit_event("connection_closed", session)
        self._idle[user_id] = None  # from now on it ages like any unconnected session
        self._touch(session)
        if not self.settings.auto_archive_on_disconnect:
            return
        reason: EndReason = "error" if connection.failed else "disconnect"
        if self.settings.disconnect_grace > 0:
            loop = asyncio.get_running_loop()
            self._grace_timers[user_id] = loop.call_later(
                self.settings.disconnect_grace, self._grace_expired, session, reason
            )
            return
        await self._end_logged(session, reason)

    def _grace_expired(self, session: _Session, reason: EndReason) -> None:
        self._grace_timers.pop(session.user_id, None)
        if session.user_id not in self._connections:
            self._run(self._end_logged(session, reason))

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        if self._spawn is None:
            coroutine.close()
            raise ServerClosedError("The server is not running.")
        self._spawn(coroutine)

    # -- chat ------------------------------------------------------------------------

    async def chat(
        self, user_id: str, text: str, *, json_output: bool = False, reasoning_enabled: bool = False
    ) -> AsyncIterator[Chunk]:
        """Store ``text``, stream the model's reply, store the reply; see ChatServer."""
        check_user_id(user_id)
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self._closing:
            raise ServerClosedError("Cannot chat: the server is shutting down.")
        async with self._locked(user_id):
            session = self._current_or_new(user_id, None)
            task = asyncio.current_task()
            if task is not None:
                self._turns[user_id] = task
            try:
                await self._store(session, Message("user", text))
                # The model reads the dialog itself, not a copy: copying would make each turn
                # cost more as the dialog grows. Nothing changes it until the reply is stored.
                history = session.messages or []
                reply = self._reply(session, history, json_output, reasoning_enabled)
                async with aclosing(reply):  # closed here, not whenever it is collected
                    async for chunk in reply:
                        yield chunk
            finally:
                self._turns.pop(user_id, None)

    async def _reply(
        self, session: _Session, history: list[Message], json_output: bool, reasoning: bool
    ) -> AsyncGenerator[Chunk, None]:
        answer: list[str] = []
        thinking: list[str] = []
        finished = False
        error: str | None = None
        stream = self.model.stream(history, json_output=json_output, reasoning_enabled=reasoning)
        try:
            async with aclosing(stream):  # type: ignore[type-var]  # AsyncIterator has aclose
                async for chunk in stream:
                    if isinstance(chunk, Reasoning):
                        thinking.append(chunk.text)
                    else:
                        answer.append(chunk)
                    self._touch(session)
                    yield chunk
            finished = True
            if json_output:
                error = _json_error("".join(answer))
        except ChatSessionError:
            raise
        except Exception as exc:
            raise ModelError(f"the chat model failed: {exc}") from exc
        finally:
            if answer or thinking or finished:
                reply = Message(
                    "assistant",
                    "".join(answer),
                    interrupted=not finished,
                    reasoning="".join(thinking) if thinking else None,
                    error=error,
                )
                await self._store(session, reply)
        if error is not None:
            raise ModelOutputError(f"the model was asked for JSON but its reply is {error}")

    async def _store(self, session: _Session, message: Message) -> None:
        first = session.messages is None
        try:
            await self.store.append(
                session.user_id, session.session_id, session.started_at_utc, message, first=first
            )
        except asyncio.CancelledError:
            # A store finishes a write it has begun even when cancelled (the DialogStore
            # contract): the message is stored, and the cancellation goes on after.
            self._remember(session, message)
            raise
        self._remember(session, message)

    def _remember(self, session: _Session, message: Message) -> None:
        if session.messages is None:
            session.messages = []
        session.messages.append(message)
        self._touch(session)


def _json_error(text: str) -> str | None:
    """None if ``text`` is a JSON document, else why it is not."""
    try:
        json.loads(text)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    return None


def _now() -> datetime:
    return datetime.now(UTC)
