"""The session lifecycle: start, activity, connections, end, expiry. It knows no transport.

What every instance agrees on — who has a session, who owns it, its connections everywhere,
its last activity — lives in the `SessionRegistry` (in this process, or in Redis). This
manager keeps the sessions this instance *owns*: their dialogs, a lock per user, the
disconnect timers, and the chat turns (`chatsession.turns`). Only the owner writes a
user's dialog; an instance that needs to write claims the session first (the registry
starts it, takes it from a dead owner, or has the live owner hand it over).

The user's lock is the whole local concurrency story. Every change to a user's session and
dialog — starting it, storing a chat turn, ending it, handing it over — holds that lock,
and asyncio's locks are first come, first served. So two chats of one user run one after
the other, and a message that races an ending session is stored whole before the archive
is taken (it is in the archive) or after (it starts the next session's dialog). Across
instances the registry adds the same guarantee: an end is begun and finished as two atomic
steps, and a session being ended cannot be claimed until it has ended.

Each end trigger (close, error, timeout, shutdown, explicit) names the session it means to
end and ends it only if it is still due, checked by the registry at that moment; however
many race, one archive and one ``session_ended`` result. The steps that change storage and
state together run to completion even when their caller is cancelled.

Expiry costs what expires: owned sessions without connections here sit in an ordered dict
by last activity, so a sweep reads from the front and stops at the first one still in time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from chatsession._exceptions import (
    ChatSessionError,
    FencedOff,
    InvalidSessionId,
    RegistryUnavailable,
    ServerClosedError,
)
from chatsession._state import Connection, Session, UserLock, run_to_completion
from chatsession._types import EndReason
from chatsession.domain import SessionEvent, SessionInfo
from chatsession.events import EventEmitter
from chatsession.models.base import ChatModel
from chatsession.registry.base import Claim, Inbox, Record, Route, SessionRegistry
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
    """Holds the sessions this instance owns; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: DialogStore,
        model: ChatModel,
        events: EventEmitter,
        registry: SessionRegistry,
    ) -> None:
        # The turns and the peers reach back into the manager.
        from chatsession._peers import Peers
        from chatsession.turns import Turns

        self.settings = settings
        self.store = store
        self.model = model
        self.events = events
        self.registry = registry
        self.rate_limit = 0  # chat messages per minute per user, across instances (0: none)
        self.connection_limit = 0  # open connections per user, across instances (0: none)
        self._sessions: dict[str, Session] = {}  # owned here
        self._idle: OrderedDict[str, None] = OrderedDict()  # owned, unconnected here
        self._connections: dict[str, int] = {}  # open here
        self._locks: dict[str, UserLock] = {}
        self._grace_timers: dict[str, asyncio.TimerHandle] = {}
        self._routes: dict[str, Route] = {}  # where else the user's connections are
        self._spawn: Spawn | None = None
        self._closing = False
        self.turns = Turns(self)
        self.peers = Peers(self)

    # -- the manager's own lifecycle ---------------------------------------------------

    def bind(self, spawn: Spawn | None) -> None:
        """Give the manager its task owner: ``spawn(coroutine)`` starts an owned task."""
        self._spawn = spawn

    async def open(self) -> None:
        """Join the registry: from now on other instances may ask things of this one."""
        await self.registry.open(
            Inbox(
                release=self.peers.hand_over,
                take=self.peers.take,
                deliver=self._deliver_here,
                adopt=self.peers.adopt,
                lost=self.peers.lost,
            )
        )

    async def recover(self) -> int:
        """Archive dialogs a previous run left current (reason ``recovered``).

        With other instances about, a dialog is recovered only if no session holds it
        (`RegistryUnavailable` if that cannot be asked).
        """
        recovered = 0
        for user_id in await self.store.users_with_current():
            try:
                if self.registry.shared and await self.registry.find(user_id) is not None:
                    continue  # a live session elsewhere writes it
                archive_id = await self.store.recover_current(user_id, ended_at=_now())
            except RegistryUnavailable:
                raise
            except Exception as exc:  # one unreadable dialog must not stop the others
                logger.error("could not recover the dialog of %r: %s", user_id, exc)
                continue
            if archive_id is not None:
                recovered += 1
                logger.info("recovered the dialog of %r as archive %s", user_id, archive_id)
        return recovered

    async def recover_when_reachable(self) -> None:
        """`recover`, retried until the registry can be reached."""
        while True:
            try:
                recovered = await self.recover()
            except RegistryUnavailable:
                await asyncio.sleep(self.settings.instance_ttl / 5)
                continue
            if recovered:
                logger.info("archived %d dialogs left by a previous run", recovered)
            return

    async def run_sweeper(self) -> None:
        """End idle sessions every ``session_check_interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.session_check_interval)
            try:
                await self.sweep()
            except Exception:
                logger.exception("the expiry sweep failed; it runs again next interval")

    async def shutdown(self) -> None:
        """End what ends with this instance (``shutdown``), within about twice the grace.

        Replies in flight get ``shutdown_grace`` seconds to finish; then every turn still
        running or waiting is cancelled (a partial reply is stored, marked interrupted). A
        session with connections on another instance is handed over instead: it goes on.
        """
        self._closing = True
        for timer in self._grace_timers.values():
            timer.cancel()
        self._grace_timers.clear()
        if not self._sessions and not self.turns.running:
            return
        ending = asyncio.ensure_future(self._end_all())
        grace = self.settings.shutdown_grace
        done, _ = await asyncio.wait([ending], timeout=grace)
        if not done:
            logger.warning("cancelling %d replies still running at shutdown", self.turns.running)
            self.turns.cancel_all()
            done, _ = await asyncio.wait([ending], timeout=max(grace, 1.0))
        if not done:
            logger.error("shutdown gave up waiting; unarchived dialogs are recovered at start")
            ending.cancel()
            await asyncio.wait([ending])
        # Cancelled above, turns are stopping. The store and the model close after this
        # returns: no turn may outlive it.
        await self.turns.wait_all(limit=max(grace, 1.0))

    async def _end_all(self) -> None:
        # Many at a time, so that a store that waits (fsync under ``always``) overlaps its
        # waits; a user whose reply is still streaming waits apart, holding up no one.
        idle = asyncio.Semaphore(_SHUTDOWN_CONCURRENCY)

        async def end(session: Session) -> None:
            if session.user_id in self._locks:
                await self._end_logged(session.user_id, "shutdown", expected=session)
                return
            async with idle:
                await self._end_logged(session.user_id, "shutdown", expected=session)

        # A turn that was claiming its session as shutdown began installs it afterwards:
        # go round until every turn has ended and no session is left unended.
        tried: set[int] = set()
        while True:
            sessions = [s for s in self._sessions.values() if id(s) not in tried]
            if sessions:
                tried.update(id(s) for s in sessions)
                await asyncio.gather(*(end(s) for s in sessions))
            elif self.turns.running:
                await self.turns.wait_all(limit=None)  # queued turns find the server closing
            else:
                return

    # -- reading -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def local_info(self, user_id: str) -> SessionInfo | None:
        """The user's session if this instance owns it (no I/O)."""
        session = self._sessions.get(user_id)
        if session is None:
            return None
        return session.info(self._connections.get(user_id, 0), active=True)

    def local_infos(self) -> list[SessionInfo]:
        return [self.local_info(user_id) for user_id in self._sessions]  # type: ignore[misc]

    async def info(self, user_id: str) -> SessionInfo | None:
        """The user's session as the whole cluster sees it, or None."""
        return self._info(await self.registry.find(user_id))

    async def infos(self) -> list[tuple[SessionInfo, str]]:
        """Every active session of the cluster, with the instance that owns it."""
        return [
            (info, record.owner)
            for record in await self.registry.records()
            if (info := self._info(record)) is not None
        ]

    async def count(self) -> int:
        return await self.registry.count()

    def _info(self, record: Record | None) -> SessionInfo | None:
        if record is None:
            return None
        last_activity = record.last_activity
        session = self._sessions.get(record.user_id)
        if session is not None and session.session_id == record.session_id:
            last_activity = max(last_activity, session.info(0, active=True).last_activity)
        return SessionInfo(
            user_id=record.user_id,
            session_id=record.session_id,
            started_at=record.started_at,
            last_activity=last_activity,
            is_active=True,
            connections=record.connections,
        )

    # -- sessions ----------------------------------------------------------------------

    async def start(self, user_id: str, session_id: str | None = None) -> SessionInfo:
        check_user_id(user_id)
        _check_session_id(session_id)
        async with self._locked(user_id):
            self._check_open()
            record, created = await self.registry.ensure(user_id, session_id)
            session = self._sessions.get(user_id)
            if created:
                session = self._install(Claim(record, created=True))
            if session is not None:
                self._touch(session)
            info = self._info(record)
            assert info is not None
            return info

    async def touch(self, user_id: str) -> bool:
        session = self._sessions.get(user_id)
        if session is not None:
            self._touch(session)
        return await self.registry.touch(user_id)

    async def end(self, user_id: str, reason: EndReason = "manual") -> str | None:
        session = self._sessions.get(user_id)
        if session is not None:
            return await self._end(user_id, reason, expected=session)
        return await self._end(user_id, reason)

    async def erase(self, user_id: str) -> tuple[str | None, bool, int]:
        """End the user's session and remove every dialog of theirs, as one step: no chat
        or end of that user runs meanwhile. (archive id, whether a session ended, archives
        removed)."""
        async with self._locked(user_id):
            session = await self._own(user_id, None, create=False)
            erased: list[int] = []
            archive_id = None
            if session is not None:
                # Removed while the session is still being ended, so that a chat racing the
                # erase on another instance waits, and then starts a new dialog that
                # nothing removes: its message is stored whole, after the erase.
                archive_id = await run_to_completion(
                    self._close(session, "manual", due=False, erase=erased)
                )
            if not erased:
                erased.append(await run_to_completion(self.store.purge_user(user_id)))
        return archive_id, session is not None, erased[0]

    async def sweep(self) -> int:
        """End every owned, unconnected session idle past the timeout; return how many."""
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
            elif await self._end_logged(session.user_id, "timeout", expected=session):
                ended += 1
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return ended

    def _install(self, claim: Claim) -> Session:
        """Remember a session this instance now owns (the caller holds the user's lock)."""
        record = claim.record
        user_id = record.user_id
        session = Session(user_id, record.session_id, record.started_at, record.epoch)
        # Idle since its last activity anywhere, not since it came here.
        idle = (datetime.now(UTC) - record.last_activity).total_seconds()
        session.last_seen -= min(max(idle, 0.0), self.settings.session_timeout)
        self._sessions[user_id] = session
        if user_id not in self._connections:
            self._idle[user_id] = None
        self._routes[user_id] = record.route
        if claim.created:
            logger.debug("session %s started for %r", session.session_id, user_id)
            self.events.emit("session_started", user_id, session.session_id)
            self._emit_event("session_started", user_id, session.session_id, record.route)
        return session

    async def _own(self, user_id: str, session_id: str | None, *, create: bool) -> Session | None:
        """The user's session, owned here from now on (the caller holds the user's lock)."""
        session = self._sessions.get(user_id)
        if session is not None:
            return session
        if create:
            self._check_open()
        claim = await self.registry.claim(user_id, session_id, create=create)
        if claim is None:
            return None
        session = self._install(claim)
        if claim.moved:
            await self._reload(session)
        return session

    def _forget(self, session: Session) -> None:
        user_id = session.user_id
        if self._sessions.get(user_id) is session:
            del self._sessions[user_id]
        self._idle.pop(user_id, None)
        timer = self._grace_timers.pop(user_id, None)
        if timer is not None:
            timer.cancel()

    def _check_open(self) -> None:
        if self._closing:
            raise ServerClosedError("Cannot start a session: the server is shutting down.")

    def _touch(self, session: Session) -> None:
        session.last_seen = time.monotonic()
        if session.user_id in self._idle:
            self._idle.move_to_end(session.user_id)

    async def _end_logged(
        self,
        user_id: str,
        reason: EndReason,
        *,
        expected: Session | None = None,
        session_id: str | None = None,
    ) -> bool:
        """End a session for a trigger with no caller to raise to; True if it ended."""
        try:
            await self._end(user_id, reason, expected=expected, session_id=session_id, due=True)
        except ChatSessionError as exc:
            # The dialog stays current; the next sweep, or the next start, tries again.
            logger.error("could not end the session of %r (%s): %s", user_id, reason, exc)
        except Exception:
            logger.exception("could not end the session of %r (%s)", user_id, reason)
        session = self._sessions.get(user_id)
        return session is None or (expected is not None and session is not expected)

    async def _end(
        self,
        user_id: str,
        reason: EndReason,
        *,
        expected: Session | None = None,
        session_id: str | None = None,
        due: bool = False,
    ) -> str | None:
        """End the user's session if it is still the one meant; exactly once.

        ``expected`` (a session owned here) or ``session_id`` names the session; with
        ``due`` (the background triggers) the registry checks again that the reason still
        holds: a ``timeout`` ends only a session still idle, a ``disconnect`` or ``error``
        only one with no connection open anywhere.
        """
        async with self._locked(user_id):
            session = self._sessions.get(user_id)
            if expected is not None and session is not expected:
                return expected.archive_id  # ended already, by whichever trigger came first
            if session is None:
                session = await self._own(user_id, None, create=False)
                if session is None:
                    return None
            if session_id is not None and session.session_id != session_id:
                return None  # that session ended; this is a later one
            return await run_to_completion(self._close(session, reason, due=due))

    async def _close(
        self, session: Session, reason: EndReason, *, due: bool, erase: list[int] | None = None
    ) -> str | None:
        """Archive the dialog and forget the session, as one step; with ``erase``, remove
        every dialog of the user too, before the session is forgotten (the count of
        archives removed is appended to ``erase``)."""
        user_id = session.user_id
        unconnected = reason == "shutdown" or (due and reason in ("disconnect", "error", "timeout"))
        idle_for = self.settings.session_timeout if due and reason == "timeout" else None
        check = await self.registry.begin_end(
            user_id, reason, idle_for=idle_for, unconnected=unconnected
        )
        if not check.ok:
            if check.why == "connected" and reason == "shutdown":
                await self._hand_over_now(session)  # its other connections keep it going
            elif check.why == "active" and check.last_activity is not None:
                # Active on another instance since: it ages from then on.
                idle = (datetime.now(UTC) - check.last_activity).total_seconds()
                session.last_seen = time.monotonic() - max(idle, 0.0)
                if user_id in self._idle:
                    self._idle.move_to_end(user_id)
            elif check.why in ("gone", "lost"):
                self._forget(session)
            return None
        archive_id = None
        try:
            if session.messages:
                self.registry.check_writable(user_id, session.epoch)
                archive_id = await self.store.archive_current(
                    user_id, ended_at=_now(), reason=reason, epoch=session.epoch
                )
            if erase is not None:
                erase.append(await self.store.purge_user(user_id, epoch=session.epoch))
        except BaseException:
            await self.registry.abort_end(user_id)
            raise
        route = await self.registry.finish_end(user_id)
        self._forget(session)
        self._routes.pop(user_id, None)
        session.archive_id = archive_id
        session.messages = None
        logger.debug("session %s of %r ended (%s)", session.session_id, user_id, reason)
        self.events.emit("session_ended", user_id, archive_id)
        self._emit_event(
            "session_ended",
            user_id,
            session.session_id,
            route,
            reason=reason,
            archive_id=archive_id,
        )
        return archive_id

    # -- other instances ---------------------------------------------------------------

    async def _hand_over_now(self, session: Session, to: str = "") -> None:
        """Give an owned session up (the caller holds the user's lock)."""
        self.store.forget(session.user_id)
        self._forget(session)
        await self.registry.release(session.user_id, to)

    async def _reload(self, session: Session) -> None:
        """Take the dialog another instance wrote for writing here, to go on from there.

        The store raises its fence to this instance's epoch and repairs the dialog (a
        record torn by a crash of the previous owner is cut off) before anything is
        appended; `FencedOff` if a newer owner holds it already.
        """
        user_id = session.user_id
        self.store.forget(user_id)
        try:
            dialog = await self.store.open_for_writing(user_id, epoch=session.epoch)
        except FencedOff:
            self._forget(session)
            raise
        except ChatSessionError as exc:
            logger.error("could not read the dialog of %r: %s", user_id, exc)
            return
        if dialog is not None and dialog.session_id == session.session_id:
            session.messages = dialog.messages or None

    async def drop_fenced(self, session: Session) -> None:
        """A write of ``session`` was refused as stale: this instance owns it no more.

        What is kept of it here is forgotten (the next message claims it again from its
        current owner) and the registry is told, in case it still names this instance.
        """
        user_id = session.user_id
        logger.warning("the session of %r is owned elsewhere now; dropped here", user_id)
        self.store.forget(user_id)
        self._forget(session)
        try:
            await self.registry.release(user_id)
        except ChatSessionError as exc:
            logger.error("could not release the session of %r: %s", user_id, exc)

    def _deliver_here(self, user_id: str, frame: dict[str, Any]) -> None:
        self.events.emit("user_frame", user_id, frame)

    def publish(
        self, user_id: str, frame: dict[str, Any], *, channels_only: bool, here: bool = True
    ) -> None:
        """Send ``frame`` to the user's connections on every instance.

        With ``channels_only``, only to instances holding a channel (an SSE stream); the
        frame reaches this instance's own connections through ``user_frame`` handlers
        (unless not ``here``).
        """
        if here:
            self.events.emit("user_frame", user_id, frame)
        route = self._routes.get(user_id)
        if route is not None:
            instances = route.channels if channels_only else route.connections
            if instances:
                self.registry.deliver(instances, user_id, frame)

    def note_route(self, user_id: str, route: Route) -> None:
        if user_id in self._sessions or route.connections:
            self._routes[user_id] = route

    def _emit_event(
        self,
        kind: str,
        user_id: str,
        session_id: str,
        route: Route | None,
        *,
        reason: EndReason | None = None,
        archive_id: str | None = None,
    ) -> None:
        if self.events.has_handlers("session_event") or (route and route.connections):
            event = SessionEvent(kind, user_id, session_id, reason=reason, archive_id=archive_id)
            self.events.emit("session_event", event)
            if route is not None and route.connections:
                self.registry.deliver(route.connections, user_id, event.as_frame())

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
        self, user_id: str, session_id: str | None = None, *, channel: bool = False
    ) -> AsyncIterator[Connection]:
        """Hold one connection of ``user_id`` open; see `ChatServer.connect`."""
        check_user_id(user_id)
        _check_session_id(session_id)
        async with self._locked(user_id):
            self._check_open()
            record, created = await self.registry.connect(
                user_id, session_id, limit=self.connection_limit, channel=channel
            )
            self._connections[user_id] = self._connections.get(user_id, 0) + 1
            session = self._sessions.get(user_id)
            if session is None and created:
                session = self._install(Claim(record, created=True))
            if session is not None:
                self._idle.pop(user_id, None)
                self._touch(session)
            timer = self._grace_timers.pop(user_id, None)
            if timer is not None:
                timer.cancel()
            self.note_route(user_id, record.route)
        connection = Connection(user_id, record.session_id)
        self._emit_event("connection_opened", user_id, record.session_id, record.route)
        try:
            yield connection
        except Exception:
            connection.fail()
            raise
        finally:
            await self._disconnected(connection, channel)

    async def _disconnected(self, connection: Connection, channel: bool) -> None:
        user_id = connection.user_id
        remaining = self._connections[user_id] - 1
        if remaining:
            self._connections[user_id] = remaining
        else:
            del self._connections[user_id]
            session = self._sessions.get(user_id)
            if session is not None:
                self._idle[user_id] = None  # from now on it ages like any unconnected one
                self._touch(session)
        try:
            record = await self.registry.disconnect(
                user_id, channel=channel, failed=connection.failed
            )
        except RegistryUnavailable as exc:
            logger.error("could not count a closed connection of %r: %s", user_id, exc)
            return
        if record is None or self._closing:
            return
        self.note_route(user_id, record.route)
        # Every close is told (another tab sees it go); the last one may end the session.
        self._emit_event("connection_closed", user_id, record.session_id, record.route)
        if record.connections or not self.settings.auto_archive_on_disconnect:
            return
        reason: EndReason = "error" if connection.failed else "disconnect"
        if self.settings.disconnect_grace > 0:
            self._end_later(user_id, reason, record.session_id)
            return
        await self._end_logged(user_id, reason, session_id=record.session_id)

    def _end_later(self, user_id: str, reason: EndReason, session_id: str) -> None:
        """End the session once ``disconnect_grace`` has passed, if nobody came back."""
        if self._closing or self._spawn is None:
            return
        if self.settings.disconnect_grace <= 0:
            self._start_task(self._end_logged(user_id, reason, session_id=session_id))
            return
        previous = self._grace_timers.pop(user_id, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._grace_timers[user_id] = loop.call_later(
            self.settings.disconnect_grace, self._grace_expired, user_id, reason, session_id
        )

    def _grace_expired(self, user_id: str, reason: EndReason, session_id: str) -> None:
        self._grace_timers.pop(user_id, None)
        if user_id not in self._connections and self._spawn is not None:
            self._start_task(self._end_logged(user_id, reason, session_id=session_id))


def _check_session_id(session_id: str | None) -> None:
    if session_id is not None and not _SESSION_ID.fullmatch(session_id):
        raise InvalidSessionId("a session id must be 1 to 128 letters, digits or '_.:-' characters")


def _now() -> datetime:
    return datetime.now(UTC)
