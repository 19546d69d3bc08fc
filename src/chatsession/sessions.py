"""The session lifecycle: start, activity, connections, chat turns, end, expiry.

It knows no transport. Per user it keeps one `Session` while a session is active, a count
of open connections, and, while anything is in progress for that user, a lock.

The lock is the whole concurrency story. Every change to a user's session and dialog —
starting it, storing a chat turn, ending it — holds that user's lock, and asyncio's locks
are first come, first served. So two chats of one user run one after the other, and a
message that races an ending session is stored whole before the archive is taken (it is
in the archive) or after (it starts the next session's dialog). Each end trigger (close,
error, timeout, shutdown, explicit) names the session it means to end and ends it only if
it is still the current one, so however many race, one archive and one ``session_ended``
result. The steps that change storage and state together run to completion even when
their caller is cancelled, so a cancellation never leaves the two disagreeing.

A chat turn runs as a task the manager owns, not in the caller's task: it holds the lock,
stores both messages and hands chunks to the caller through a queue. A caller that stops
reading, or calls into the manager between chunks, therefore never holds the lock, and
shutdown can cancel every turn still running once its grace period is over.

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
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from chatsession._exceptions import (
    ChatSessionError,
    InvalidMessage,
    InvalidSessionId,
    ModelError,
    ModelOutputError,
    ServerClosedError,
)
from chatsession._state import Connection, Session, UserLock
from chatsession._turns import Turn, TurnEnd
from chatsession._types import EndReason
from chatsession.domain import Chunk, Message, Reasoning, SessionEvent, SessionInfo
from chatsession.events import EventEmitter
from chatsession.models.base import ChatModel
from chatsession.settings import Settings
from chatsession.storage._paths import check_user_id
from chatsession.storage.base import DialogStore

__all__ = ["SessionManager"]

logger = logging.getLogger("chatsession.sessions")

T = TypeVar("T")
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]

_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_YIELD_EVERY = 64  # a long sweep lets other work run between this many ends
_SHUTDOWN_CONCURRENCY = 32  # ends in flight at once at shutdown


class SessionManager:
    """Holds every user's session; see the module docstring for how it stays consistent."""

    def __init__(
        self, settings: Settings, store: DialogStore, model: ChatModel, events: EventEmitter
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.events = events
        self._sessions: dict[str, Session] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # unconnected, oldest activity first
        self._connections: dict[str, int] = {}
        self._locks: dict[str, UserLock] = {}
        self._grace_timers: dict[str, asyncio.TimerHandle] = {}
        self._turns: dict[asyncio.Task[None], Turn] = {}
        self._spawn: Spawn | None = None
        self._closing = False

    # -- the manager's own lifecycle ---------------------------------------------------

    def bind(self, spawn: Spawn | None) -> None:
        """Give the manager its task owner: ``spawn(coroutine)`` starts an owned task."""
        self._spawn = spawn

    async def recover(self) -> int:
        """Archive dialogs a previous run left current (reason ``recovered``)."""
        recovered = 0
        for user_id in await self.store.users_with_current():
            try:
                archive_id = await self.store.recover_current(user_id, ended_at=_now())
            except Exception as exc:  # one unreadable dialog must not stop the others
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
        """Archive every session with reason ``shutdown``, within about twice the grace.

        Replies in flight get ``shutdown_grace`` seconds to finish; then every turn still
        running or waiting is cancelled (a partial reply is stored, marked interrupted).
        """
        self._closing = True
        for timer in self._grace_timers.values():
            timer.cancel()
        self._grace_timers.clear()
        if not self._sessions and not self._turns:
            return
        ending = asyncio.ensure_future(self._end_all())
        grace = self.settings.shutdown_grace
        done, _ = await asyncio.wait([ending], timeout=grace)
        if not done:
            logger.warning("cancelling %d replies still running at shutdown", len(self._turns))
            for turn in list(self._turns.values()):
                turn.cancel()
            done, _ = await asyncio.wait([ending], timeout=max(grace, 1.0))
        if not done:
            logger.error("shutdown gave up waiting; unarchived dialogs are recovered at start")
            ending.cancel()
            await asyncio.wait([ending])
        if self._turns:
            # Cancelled above, they are stopping. The store and the model close after this
            # returns: no turn may outlive it.
            _, stuck = await asyncio.wait(list(self._turns), timeout=max(grace, 1.0))
            if stuck:
                logger.error("waiting for %d replies that are slow to stop", len(stuck))
                await asyncio.wait(stuck)

    async def _end_all(self) -> None:
        # Many at a time, so that a store that waits (fsync under ``always``) overlaps its
        # waits; a user whose reply is still streaming waits apart, holding up no one.
        idle = asyncio.Semaphore(_SHUTDOWN_CONCURRENCY)

        async def end(session: Session) -> None:
            if session.user_id in self._locks:
                await self._end_logged(session, "shutdown")
                return
            async with idle:
                await self._end_logged(session, "shutdown")

        await asyncio.gather(*(end(s) for s in list(self._sessions.values())))
        if self._turns:  # turns queued behind others find the server closing; let them finish
            await asyncio.wait(list(self._turns))

    # -- sessions ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def info(self, user_id: str) -> SessionInfo | None:
        session = self._sessions.get(user_id)
        if session is None:
            return None
        return session.info(self._connections.get(user_id, 0), active=True)

    def infos(self) -> list[SessionInfo]:
        return [self._info(s) for s in self._sessions.values()]

    def _info(self, session: Session) -> SessionInfo:
        return session.info(self._connections.get(session.user_id, 0), active=True)

    async def start(self, user_id: str, session_id: str | None = None) -> SessionInfo:
        check_user_id(user_id)
        async with self._locked(user_id):
            session = self._current_or_new(user_id, session_id)
            self._touch(session)
            return self._info(session)

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
        expired: list[Session] = []
        for user_id in self._idle:
            session = self._sessions[user_id]
            if session.last_seen > deadline:
                break
            expired.append(session)
        ended = 0
        for count, session in enumerate(expired, 1):
            if session.user_id in self._locks:
                self._touch(session)  # a reply is streaming or being stored: not idle
            elif await self._end_logged(session, "timeout"):
                ended += 1
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return ended

    def _current_or_new(self, user_id: str, session_id: str | None) -> Session:
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
        session = Session(user_id, session_id)
        self._sessions[user_id] = session
        if user_id not in self._connections:
            self._idle[user_id] = None
        logger.debug("session %s started for %r", session.session_id, user_id)
        self.events.emit("session_started", user_id, session.session_id)
        self._emit_event("session_started", session)
        return session

    def _touch(self, session: Session) -> None:
        session.last_seen = time.monotonic()
        if session.user_id in self._idle:
            self._idle.move_to_end(session.user_id)

    async def _end_logged(self, session: Session, reason: EndReason) -> bool:
        """End ``session`` for a trigger with no caller to raise to; True if it ended."""
        try:
            await self._end(session, reason, still_due=True)
        except ChatSessionError as exc:
            # The dialog stays current; the next sweep, or the next start, tries again.
            logger.error("could not end the session of %r (%s): %s", session.user_id, reason, exc)
        except Exception:
            logger.exception("could not end the session of %r (%s)", session.user_id, reason)
        return self._sessions.get(session.user_id) is not session

    async def _end(
        self, session: Session, reason: EndReason, *, still_due: bool = False
    ) -> str | None:
        """End ``session`` if it is still its user's current one; exactly once.

        With ``still_due`` (the background triggers), the reason is checked again once the
        lock is held, since things may have changed while the trigger waited for it: a
        ``timeout`` ends only a session still idle, a ``disconnect`` or ``error`` only one
        with no connection open.
        """
        user_id = session.user_id
        async with self._locked(user_id):
            if self._sessions.get(user_id) is not session:
                return session.archive_id  # ended already, by whichever trigger came first
            if still_due and not self._still_due(session, reason):
                return None
            return await _complete(self._close(session, reason))

    def _still_due(self, session: Session, reason: EndReason) -> bool:
        if reason in ("disconnect", "error", "timeout") and session.user_id in self._connections:
            return False
        return reason != "timeout" or session.idle_for() >= self.settings.session_timeout

    async def _close(self, session: Session, reason: EndReason) -> str | None:
        """Archive the dialog and forget the session, as one step."""
        archive_id = None
        if session.messages:
            archive_id = await self.store.archive_current(
                session.user_id, ended_at=_now(), reason=reason
            )
        user_id = session.user_id
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
        session: Session,
        *,
        reason: EndReason | None = None,
        archive_id: str | None = None,
    ) -> None:
        if self.events.has_handlers("session_event"):
            event = SessionEvent(
                kind, session.user_id, session.session_id, reason=reason, archive_id=archive_id
            )
            self.events.emit("session_event", event)

    def _locked(self, user_id: str) -> UserLock:
        """``async with self._locked(user_id):`` holds the user's lock."""
        entry = self._locks.get(user_id)
        if entry is None:
            entry = self._locks[user_id] = UserLock(self._locks, user_id)
        return entry

    def _start_task(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._spawn is None:
            coroutine.close()
            raise ServerClosedError("The ChatServer is not running.")
        return self._spawn(coroutine)

    # -- connections -------------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self, user_id: str, session_id: str | None = None
    ) -> AsyncIterator[Connection]:
        """Hold one connection of ``user_id`` open; see `ChatServer.connect`."""
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

    def _grace_expired(self, session: Session, reason: EndReason) -> None:
        self._grace_timers.pop(session.user_id, None)
        if session.user_id not in self._connections and self._spawn is not None:
            self._start_task(self._end_logged(session, reason))

    # -- chat --------------------------------------------------------------------------

    async def chat(
        self, user_id: str, text: str, *, json_output: bool = False, reasoning_enabled: bool = False
    ) -> AsyncGenerator[Chunk, None]:
        """Store ``text``, stream the model's reply, store the reply; see ChatServer."""
        check_user_id(user_id)
        _check_text(text)
        if self._spawn is None:
            raise ServerClosedError("The ChatServer is not running.")
        turn = Turn()
        # The manager owns its turns itself (`_turns`; shutdown waits for them, then
        # cancels them): one task per message, with no other bookkeeping.
        task = turn.task = asyncio.ensure_future(
            self._turn(turn, user_id, text, json_output, reasoning_enabled)
        )
        self._turns[task] = turn
        task.add_done_callback(self._turn_done)
        try:
            while True:
                await turn.arrival()
                chunks, end = turn.take()
                for chunk in chunks:
                    yield chunk
                if end is not None:
                    if end.error is not None:
                        raise end.error
                    return
        finally:
            if not task.done():
                # The caller left mid-reply: stop the model, and let the partial reply be
                # stored before the caller goes on.
                turn.cancel()
                await asyncio.wait([task])

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        turn = self._turns.pop(task)
        if task.cancelled():  # by shutdown, perhaps before it ever ran
            turn.put(TurnEnd(ServerClosedError("The server shut down before the reply finished.")))

    async def _turn(
        self, turn: Turn, user_id: str, text: str, json_output: bool, reasoning: bool
    ) -> None:
        error: BaseException | None = None
        try:
            async with self._locked(user_id):
                if self._closing:
                    raise ServerClosedError("Cannot chat: the server is shutting down.")
                session = self._current_or_new(user_id, None)
                await self._store(turn, session, Message("user", text))
                await self._reply(turn, session, json_output, reasoning)
        except Exception as exc:
            error = exc
        turn.put(TurnEnd(error))

    async def _reply(
        self, turn: Turn, session: Session, json_output: bool, reasoning: bool
    ) -> None:
        """Stream the model's reply into ``turn``, then store it (partial, if cut short)."""
        answer: list[str] = []
        thinking: list[str] = []
        finished = False
        error: str | None = None
        # The model reads the dialog itself, not a copy: copying would make each turn cost
        # more as the dialog grows. Nothing changes it until the reply is stored.
        history = session.messages or []
        stream = self.model.stream(history, json_output=json_output, reasoning_enabled=reasoning)
        try:
            try:
                async for chunk in stream:
                    if isinstance(chunk, Reasoning):
                        thinking.append(chunk.text)
                    else:
                        answer.append(chunk)
                    turn.put(chunk)
                    self._touch(session)
            except BaseException:
                # Stopped midway: let the model release what it holds. (A stream that ran
                # to its end has closed itself.)
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
                raise
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
                    _storable("".join(answer)),
                    interrupted=not finished,
                    reasoning=_storable("".join(thinking)) if thinking else None,
                    error=error,
                )
                await self._store(turn, session, reply)
        if error is not None:
            raise ModelOutputError(f"the model was asked for JSON but its reply is {error}")

    async def _store(self, turn: Turn, session: Session, message: Message) -> None:
        """Store ``message`` and remember it, as one step; only a stored one is remembered."""
        turn.guard()
        try:
            messages = session.messages
            await self.store.append(
                session.user_id,
                session.session_id,
                session.started_at,
                message,
                first=messages is None,
            )
            if messages is None:
                messages = session.messages = []
            messages.append(message)
            self._touch(session)
        finally:
            turn.unguard()


async def _complete(coroutine: Coroutine[Any, Any, T]) -> T:
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


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise InvalidMessage(f"a message must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(
            "a message must be valid Unicode text (it has a lone surrogate)"
        ) from None


def _storable(text: str) -> str:
    """Model output as UTF-8 can store it: a stray surrogate becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _json_error(text: str) -> str | None:
    """None if ``text`` is a JSON document, else why it is not."""
    try:
        json.loads(text)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    return None


def _now() -> datetime:
    return datetime.now(UTC)
