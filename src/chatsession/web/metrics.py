"""Prometheus metrics, in a registry of the app's own (several apps may share a process)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from chatsession._types import EndReason
from chatsession.domain import ArchiveSummary, Dialog, SessionEvent
from chatsession.storage.base import DialogStore

if TYPE_CHECKING:
    from chatsession.chatserver import ChatServer

__all__ = ["Metrics", "TimedStore"]


class Metrics:
    """Active sessions, sessions started and ended, archive time, messages, model latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.active_sessions = Gauge(
            "chatsession_active_sessions", "Sessions active now.", registry=self.registry
        )
        self.sessions_started = Counter(
            "chatsession_sessions_started", "Sessions started.", registry=self.registry
        )
        self.sessions_ended = Counter(
            "chatsession_sessions_ended",
            "Sessions ended, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.archive_seconds = Histogram(
            "chatsession_archive_duration_seconds",
            "Time to archive one dialog.",
            registry=self.registry,
        )
        self.messages = Counter(
            "chatsession_messages",
            "Chat messages received, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "chatsession_model_latency_seconds",
            "Time from a chat message to the end of its reply.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.first_chunk_seconds = Histogram(
            "chatsession_model_first_chunk_seconds",
            "Time from a chat message to the first chunk of its reply.",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

        # One child per label value, looked up once rather than on every message.
        self._messages_by_transport: dict[str, Counter] = {}

    def count_message(self, transport: str) -> None:
        counter = self._messages_by_transport.get(transport)
        if counter is None:
            counter = self._messages_by_transport[transport] = self.messages.labels(transport)
        counter.inc()

    def watch(self, chat: ChatServer) -> None:
        """Count ``chat``'s sessions as they start and end."""
        self.active_sessions.set_function(lambda: len(chat.sessions))
        chat.on("session_event", self._on_event)

    def _on_event(self, event: SessionEvent) -> None:
        if event.type == "session_started":
            self.sessions_started.inc()
        elif event.type == "session_ended":
            self.sessions_ended.labels(event.reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedStore:
    """A `DialogStore` that times each archival for the metrics; otherwise the store itself."""

    def __init__(self, store: DialogStore, metrics: Metrics) -> None:
        self.store = store
        self._seconds = metrics.archive_seconds
        # Every chat turn appends twice: the store's own method, not a wrapper around it.
        self.append = store.append

    async def load_current(self, user_id: str) -> Dialog | None:
        return await self.store.load_current(user_id)

    async def archive_current(
        self, user_id: str, *, ended_at: datetime, reason: EndReason
    ) -> str | None:
        started = time.perf_counter()
        try:
            return await self.store.archive_current(user_id, ended_at=ended_at, reason=reason)
        finally:
            self._seconds.observe(time.perf_counter() - started)

    async def list_archives(self, user_id: str) -> list[ArchiveSummary]:
        return await self.store.list_archives(user_id)

    async def load_archive(self, user_id: str, archive_id: str) -> Dialog:
        return await self.store.load_archive(user_id, archive_id)

    async def delete_archive(self, user_id: str, archive_id: str) -> None:
        await self.store.delete_archive(user_id, archive_id)

    async def users_with_current(self) -> list[str]:
        return await self.store.users_with_current()

    async def recover_current(self, user_id: str, *, ended_at: datetime) -> str | None:
        return await self.store.recover_current(user_id, ended_at=ended_at)

    async def flush(self) -> None:
        await self.store.flush()

    async def aclose(self) -> None:
        await self.store.aclose()
