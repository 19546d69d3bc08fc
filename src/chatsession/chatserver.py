"""`ChatServer`: the library's front door, wiring settings, storage, model and sessions."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncGenerator, Coroutine, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

from chatsession._exceptions import ServerClosedError
from chatsession._state import Connection
from chatsession._types import END_REASONS, EndReason, EventHandler
from chatsession.domain import ArchiveSummary, Chunk, Dialog, SessionInfo
from chatsession.events import EventEmitter
from chatsession.models import load_model
from chatsession.models.base import ChatModel
from chatsession.registry import SessionRegistry, open_registry
from chatsession.sessions import SessionManager
from chatsession.settings import Settings
from chatsession.storage import open_store
from chatsession.storage._lock import DataDirLock, files_root
from chatsession.storage._paths import check_user_id
from chatsession.storage.base import DialogStore

__all__ = ["ChatServer"]

logger = logging.getLogger("chatsession")


class _State(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSING = "closing"  # refusing new work, finishing what runs: background tasks still start
    CLOSED = "closed"


class ChatServer:
    """Users' chat sessions, their dialogs, and their archives.

    Use it as an async context manager::

        async with ChatServer(Settings(data_dir="data")) as chat:
            async for chunk in chat.chat_with_history("alice", "hi"):
                print(chunk, end="")

    Entering it recovers dialogs a previous run left unarchived and starts the expiry sweep;
    leaving it archives every active session with reason ``shutdown``.

    Args:
        settings: The configuration; `Settings.from_env` reads it from the environment.
        store: A `DialogStore` to use instead of the YAML files under ``settings.data_dir``.
        model: A `ChatModel` to use instead of the one ``settings.chat_model`` names.
        registry: A `SessionRegistry` to use instead of the one the settings choose (Redis
            when ``redis_url`` is set, else this process alone).
        enforce_limits: Apply ``settings.rate_limit`` and ``settings.max_connections_per_user``
            to every user, across every instance (the server does; a library is trusted).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: DialogStore | None = None,
        model: ChatModel | None = None,
        registry: SessionRegistry | None = None,
        enforce_limits: bool = False,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.store = (
            store
            if store is not None
            else open_store(self.settings.data_dir, self.settings.durability)
        )
        self.model = (
            model if model is not None else load_model(self.settings.chat_model, self.settings)
        )
        self.registry = registry if registry is not None else open_registry(self.settings)
        self._events = EventEmitter()
        self._sessions = SessionManager(
            self.settings, self.store, self.model, self._events, self.registry
        )
        if enforce_limits:
            self._sessions.rate_limit = self.settings.rate_limit
            self._sessions.connection_limit = self.settings.max_connections_per_user
        self.address: str | None = None  # where it serves, recorded in the data dir's lock
        self._lock: DataDirLock | None = None
        self._state = _State.UNOPENED
        self._task_group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_env(cls, **overrides: Any) -> ChatServer:
        """A server configured from environment variables (see `Settings`)."""
        return cls(Settings.from_env(**overrides))

    # -- running ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state in (_State.RUNNING, _State.CLOSING):
            raise RuntimeError("Cannot enter a ChatServer that is already running.")
        if self._state is _State.CLOSED:
            raise RuntimeError("Cannot reopen a ChatServer once it has been closed.")
        # A single process owns its data dir, taken before any dialog is touched: a second
        # process would otherwise archive this one's live dialogs as recovered. Instances
        # that share one through a registry (Redis) coordinate there instead.
        root = files_root(self.store)
        if root is not None and not self.registry.shared:
            self._lock = DataDirLock(root)
            self._lock.acquire(self.address)
        if self.settings.session_debug:
            _enable_session_debug()
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._state = _State.RUNNING
        self._events.bind(self._spawn)
        self._sessions.bind(self._spawn)
        try:
            await self._sessions.open()
            # With other instances about, recovery asks Redis about each dialog, so it waits
            # until Redis can be reached rather than hold up the start.
            recovered = 0 if self.registry.shared else await self._sessions.recover()
        except BaseException:
            await self.aclose()
            raise
        if recovered:
            logger.info("archived %d dialogs left by a previous run", recovered)
        self._background = [self._spawn(self._sessions.run_sweeper())]
        if self.registry.shared:
            self._background.append(self._spawn(self._sessions.recover_when_reachable()))
        if self.settings.durability == "batch":
            self._background.append(self._spawn(self._flush_periodically()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Shut down, in this order. Idempotent.

        1. Refuse new work, and stop the background work (sweeper, flusher, recovery).
        2. End what ends with this instance (``shutdown``): replies still streaming get
           ``shutdown_grace`` seconds, then are cancelled and stored as far as they got; a
           session with connections on another instance is handed over and goes on there.
        3. Give the event handlers of those last sessions up to ``shutdown_grace`` more.
        4. Leave the cluster (other instances stop counting this one's connections),
           flush and close the store, close the model, release the data dir.

        A transport closes its connections after this returns (see
        `chatsession.web.shutdown`), so their sessions end as ``shutdown``, not
        ``disconnect``.
        """
        if self._state is not _State.RUNNING:
            if self._state is _State.UNOPENED:
                self._state = _State.CLOSED
            return
        self._state = _State.CLOSING
        for task in getattr(self, "_background", ()):
            task.cancel()
        try:
            await self._sessions.shutdown()
            await self._let_handlers_finish()
        finally:
            self._state = _State.CLOSED
            await self._release_resources()

    async def _let_handlers_finish(self) -> None:
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.shutdown_grace)

    async def _release_resources(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._events.bind(None)
        self._sessions.bind(None)
        try:
            await self.registry.aclose()
            await self.store.aclose()
            await self.model.aclose()
        finally:
            assert self._task_group is not None
            try:
                await self._task_group.__aexit__(None, None, None)
            finally:
                if self._lock is not None:
                    self._lock.release()

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._task_group is None or self._state not in (_State.RUNNING, _State.CLOSING):
            coroutine.close()
            raise ServerClosedError("The ChatServer is not running: use 'async with'.")
        # A child that raised would make the TaskGroup cancel the task that entered the
        # server (the application itself), so every coroutine spawned here logs its own
        # failures: the sweeper, the flusher, background ends and event handlers all do.
        task = self._task_group.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fsync_interval)
            try:
                await self.store.flush()
            except Exception:
                logger.exception("flushing dialogs to disk failed; retrying next interval")

    def _check_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise ServerClosedError(
                "The ChatServer is not running: enter it with 'async with' first."
                if self._state is _State.UNOPENED
                else "The ChatServer is shutting down."
                if self._state is _State.CLOSING
                else "The ChatServer has been closed."
            )

    # -- sessions --------------------------------------------------------------------

    async def start_user_session(self, user_id: str, session_id: str | None = None) -> SessionInfo:
        """Start ``user_id``'s session, or return the one already active.

        ``session_id`` names a new session (a fresh id is made when it is None); a session
        already active keeps its own id.
        """
        self._check_running()
        return await self._sessions.start(user_id, session_id)

    async def update_user_activity(self, user_id: str) -> bool:
        """Mark ``user_id`` as active now; False if they have no session."""
        return await self._sessions.touch(check_user_id(user_id))

    async def end_user_session(self, user_id: str, reason: EndReason = "manual") -> str | None:
        """End ``user_id``'s session; return the archive id, or None if nothing was archived.

        However many ends race for one session, it is archived once and ``session_ended``
        fires once; calls that overlap all get the same archive id, and a call made after
        the session ended gets None.
        """
        check_user_id(user_id)
        if reason not in END_REASONS:
            raise ValueError(f"reason must be one of {', '.join(sorted(END_REASONS))}")
        return await self._sessions.end(user_id, reason)

    async def get_user_session_info(self, user_id: str) -> SessionInfo | None:
        """A snapshot of ``user_id``'s active session, wherever it is, or None."""
        return await self._sessions.info(check_user_id(user_id))

    async def get_active_session_count(self) -> int:
        """Active sessions, on every instance."""
        return await self._sessions.count()

    async def list_sessions(self) -> list[tuple[SessionInfo, str]]:
        """Every active session of every instance, with the id of the instance owning it."""
        return await self._sessions.infos()

    @property
    def sessions(self) -> Mapping[str, SessionInfo]:
        """A read-only view of the sessions this instance owns, by user id (no I/O)."""
        return _SessionsView(self._sessions)

    @property
    def instance_id(self) -> str:
        """This instance's id among the instances sharing the registry."""
        return self.registry.instance_id

    def publish(self, user_id: str, frame: dict[str, Any], *, channels_only: bool = False) -> None:
        """Send ``frame`` to the user's connections, on this instance and every other.

        Here it reaches the ``user_frame`` handlers; elsewhere theirs. With
        ``channels_only``, only instances holding one of the user's channels get it.
        """
        self._sessions.publish(user_id, frame, channels_only=channels_only)

    def publish_elsewhere(self, user_id: str, frame: dict[str, Any]) -> None:
        """`publish` to the user's channels on other instances only (this one's own
        channels are the caller's to feed); a no-op for a single process."""
        self._sessions.publish(user_id, frame, channels_only=True, here=False)

    async def expire_idle_sessions(self) -> int:
        """Run the inactivity sweep now; return how many sessions it ended."""
        self._check_running()
        return await self._sessions.sweep()

    def connect(
        self, user_id: str, session_id: str | None = None, *, channel: bool = False
    ) -> AbstractAsyncContextManager[Connection]:
        """Hold one connection of ``user_id`` open: ``async with chat.connect(user):``.

        While any connection of a user is open, their session does not time out. When the
        last one closes, the session ends (``disconnect``, or ``error`` if the block raised
        or `Connection.fail` was called), unless a new connection opens within
        ``disconnect_grace`` seconds; with ``auto_archive_on_disconnect`` off, only the
        inactivity timeout ends it. A ``channel`` (an SSE stream) also receives what
        `publish` sends with ``channels_only``.
        """
        self._check_running()
        return self._sessions.connect(user_id, session_id, channel=channel)

    def on(self, event: str, handler: EventHandler) -> EventHandler:
        """Call ``handler`` on ``session_started``, ``session_ended`` or ``session_event``."""
        return self._events.on(event, handler)

    def off(self, event: str, handler: EventHandler) -> None:
        self._events.off(event, handler)

    # -- chat ------------------------------------------------------------------------

    def chat_with_history(
        self,
        user_id: str,
        text: str,
        *,
        json_output: bool = False,
        reasoning_enabled: bool = False,
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the model's reply to ``text``, with the user's dialog as context.

        Chunks are ``str`` for the answer; with ``reasoning_enabled``, a model that reasons
        also yields `Reasoning` chunks, which are stored apart from the answer.

        Starts a session if the user has none. The user's message is stored before the
        model runs; the reply is stored when the stream ends. A stream cancelled, closed
        early, or failed midway stores what was produced, marked interrupted. Two chats of
        one user run one after the other, in the order they were called.

        Raises:
            StorageError: the message could not be stored (nothing was sent to the model).
            ModelError: the model failed.
            ModelOutputError: ``json_output`` was asked for and the reply does not parse as
                JSON; the reply is stored with the reason in its ``error`` field.
        """
        self._check_running()
        return self._sessions.turns.chat(
            user_id, text, json_output=json_output, reasoning_enabled=reasoning_enabled
        )

    # -- dialogs ---------------------------------------------------------------------

    async def get_current_dialog(self, user_id: str) -> Dialog | None:
        """The user's current (unarchived) dialog, or None."""
        return await self.store.load_current(check_user_id(user_id))

    async def list_archives(self, user_id: str) -> list[ArchiveSummary]:
        """The user's archived dialogs, oldest first."""
        return await self.store.list_archives(check_user_id(user_id))

    async def get_archive(self, user_id: str, archive_id: str) -> Dialog:
        """One archived dialog; `DialogNotFound` if there is none with that id."""
        return await self.store.load_archive(check_user_id(user_id), archive_id)

    async def erase_user(self, user_id: str) -> tuple[str | None, bool, int]:
        """End the user's session (``manual``) and remove their current dialog and every
        archive, with no chat of theirs in between; returns (the archive id the end made,
        whether a session ended, how many archives were removed)."""
        self._check_running()
        return await self._sessions.erase(check_user_id(user_id))

    async def delete_archive(self, user_id: str, archive_id: str) -> None:
        """Delete one archived dialog; `DialogNotFound` if there is none with that id."""
        await self.store.delete_archive(check_user_id(user_id), archive_id)


class _SessionsView(Mapping[str, SessionInfo]):
    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    def __getitem__(self, user_id: str) -> SessionInfo:
        info = self._sessions.local_info(user_id)
        if info is None:
            raise KeyError(user_id)
        return info

    def __iter__(self) -> Iterator[str]:
        return iter([info.user_id for info in self._sessions.local_infos()])

    def __len__(self) -> int:
        return len(self._sessions)


def _enable_session_debug() -> None:
    session_logger = logging.getLogger("chatsession.sessions")
    session_logger.setLevel(logging.DEBUG)
    # A handler anywhere up the hierarchy (the server's, the application's) prints the
    # lines already: a second one here would print each of them twice.
    if not session_logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s session %(message)s"))
        session_logger.addHandler(handler)
