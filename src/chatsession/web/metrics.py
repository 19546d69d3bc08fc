"""Prometheus metrics, in a registry of the app's own (several apps may share a process)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from chatsession._types import EndReason
from chatsession.domain import ArchiveSummary, Dialog, SessionEvent
from chatsession.storage.base import DialogStore

if TYPE_CHECKING:
    from chatsession.chatserver import ChatServer

__all__ = ["Metrics", "Minute", "MinuteSeries", "TimedStore"]


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
        # Counted on every chat message, so kept as plain numbers on the event loop (one
        # thread, no locks) and read out at scrape time.
        self.messages = _CountsByLabel(
            "chatsession_messages", "Chat messages received, by transport.", "transport"
        )
        self.model_seconds = _LoopHistogram(
            "chatsession_model_latency_seconds",
            "Time from a chat message to the end of its reply.",
            (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.first_chunk_seconds = _LoopHistogram(
            "chatsession_model_first_chunk_seconds",
            "Time from a chat message to the first chunk of its reply.",
            (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.archives_expired = Counter(
            "chatsession_archives_expired",
            "Archives deleted by retention (ARCHIVE_RETENTION_DAYS).",
            registry=self.registry,
        )
        for collector in (self.messages, self.model_seconds, self.first_chunk_seconds):
            self.registry.register(collector)
        self.recent = MinuteSeries()

    def watch(self, chat: ChatServer) -> None:
        """Count ``chat``'s sessions as they start and end."""
        self.active_sessions.set_function(lambda: len(chat.sessions))
        chat.on("session_event", self._on_event)

    def _on_event(self, event: SessionEvent) -> None:
        if event.type == "session_started":
            self.sessions_started.inc()
            self.recent.now().started += 1
        elif event.type == "session_ended":
            reason = event.reason or "unknown"
            self.sessions_ended.labels(reason).inc()
            ended = self.recent.now().ended
            ended[reason] = ended.get(reason, 0) + 1

    def observe_archive(self, seconds: float) -> None:
        self.archive_seconds.observe(seconds)
        minute = self.recent.now()
        minute.archives += 1
        minute.archive_seconds += seconds
        minute.archive_max = max(minute.archive_max, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(slots=True)
class Minute:
    """What happened in one minute (UTC), for the admin view's charts."""

    start: int  # seconds since the epoch, a multiple of 60
    started: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    archives: int = 0
    archive_seconds: float = 0.0
    archive_max: float = 0.0


class MinuteSeries:
    """A ring of the last ``minutes`` minutes: memory stays fixed however long it runs."""

    def __init__(self, minutes: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self._clock = clock
        self._ring: deque[Minute] = deque(maxlen=minutes)

    def now(self) -> Minute:
        start = int(self._clock()) // 60 * 60
        if not self._ring or self._ring[-1].start != start:
            self._ring.append(Minute(start))
        return self._ring[-1]

    def last_hour(self) -> list[Minute]:
        """One entry per minute, oldest first, ending with the current minute (gaps filled)."""
        end = int(self._clock()) // 60 * 60
        by_start = {m.start: m for m in self._ring}
        return [
            by_start.get(start, Minute(start))
            for start in range(end - 60 * (self.minutes - 1), end + 1, 60)
        ]


class _CountsByLabel(Collector):
    """A counter with one label, for the event loop's thread only."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self.counts: dict[str, int] = {}

    def inc(self, value: str) -> None:
        self.counts[value] = self.counts.get(value, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, count in list(self.counts.items()):
            family.add_metric([value], count)
        yield family


class _LoopHistogram(Collector):
    """A histogram for the event loop's thread only: an observation is a few additions."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )


class TimedStore:
    """A `DialogStore` that times each archival for the metrics; otherwise the store itself."""

    def __init__(self, store: DialogStore, metrics: Metrics) -> None:
        self.store = store
        self._observe = metrics.observe_archive
        # Every chat turn appends twice: the store's own method, not a wrapper around it.
        self.append = store.append

    async def open_for_writing(self, user_id: str, *, epoch: int) -> Dialog | None:
        return await self.store.open_for_writing(user_id, epoch=epoch)

    async def load_current(self, user_id: str) -> Dialog | None:
        return await self.store.load_current(user_id)

    async def archive_current(
        self, user_id: str, *, ended_at: datetime, reason: EndReason, epoch: int | None = None
    ) -> str | None:
        started = time.perf_counter()
        try:
            return await self.store.archive_current(
                user_id, ended_at=ended_at, reason=reason, epoch=epoch
            )
        finally:
            self._observe(time.perf_counter() - started)

    async def list_archives(self, user_id: str) -> list[ArchiveSummary]:
        return await self.store.list_archives(user_id)

    async def search_archives(self, user_id: str, query: str) -> list[ArchiveSummary]:
        return await self.store.search_archives(user_id, query)

    async def purge_user(self, user_id: str, *, epoch: int | None = None) -> int:
        return await self.store.purge_user(user_id, epoch=epoch)

    async def expire_archives(self, before: datetime) -> list[tuple[str, str]]:
        return await self.store.expire_archives(before)

    async def load_archive(self, user_id: str, archive_id: str) -> Dialog:
        return await self.store.load_archive(user_id, archive_id)

    async def delete_archive(self, user_id: str, archive_id: str) -> None:
        await self.store.delete_archive(user_id, archive_id)

    async def users_with_current(self) -> list[str]:
        return await self.store.users_with_current()

    async def recover_current(self, user_id: str, *, ended_at: datetime) -> str | None:
        return await self.store.recover_current(user_id, ended_at=ended_at)

    def forget(self, user_id: str) -> None:
        self.store.forget(user_id)

    async def flush(self) -> None:
        await self.store.flush()

    async def aclose(self) -> None:
        await self.store.aclose()
