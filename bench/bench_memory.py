"""Memory per idle session: started through the public API, no messages.

Each measurement runs in a fresh interpreter, so that memory freed by earlier benchmarks
cannot hide the growth: it enters a `ChatServer` over the memory store, starts ``count``
sessions with ``start_user_session`` and divides the growth by ``count``. Two ways:
``tracemalloc`` (the Python heap the sessions hold, user id strings included) and the
process's resident set (which adds the allocator's own overhead and slack). Sizes of
10,000 and 100,000 show whether the cost is per session.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench._timing import Series, Verdict, check, format_bytes, print_table, print_title
from chatsession import ChatServer, Settings
from chatsession.models import EchoModel
from chatsession.storage import MemoryDialogStore

SIZES = (10_000, 100_000)
# tracemalloc counts the same bytes every time, and is slow: once is enough.
REPETITIONS = {"tracemalloc": 1, "rss": 3}
TOP_SITES = 6


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def short_name(filename: str) -> str:
    """``chatsession/sessions.py`` rather than the whole path."""
    return "/".join(Path(filename).parts[-2:])


async def grow(count: int, method: str) -> tuple[float, list[str]]:
    """Bytes per session after starting ``count`` sessions, and where they went."""
    settings = Settings(session_check_interval=3600)
    async with ChatServer(settings, store=MemoryDialogStore(), model=EchoModel()) as chat:
        if method == "tracemalloc":
            tracemalloc.start()
        gc.collect()
        before = tracemalloc.take_snapshot() if method == "tracemalloc" else None
        used_before = tracemalloc.get_traced_memory()[0] if before else resident_bytes()
        for n in range(count):
            await chat.start_user_session(f"user-{n:07d}")
        gc.collect()
        if before is None:
            return (resident_bytes() - used_before) / count, []
        used = tracemalloc.get_traced_memory()[0] - used_before
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        sites = [
            f"{format_bytes(stat.size_diff / count)} at {short_name(stat.traceback[0].filename)}"
            f":{stat.traceback[0].lineno}"
            for stat in after.compare_to(before, "lineno")[:TOP_SITES]
        ]
        return used / count, sites


def measure_in_child(count: int, method: str) -> tuple[float, list[str]]:
    return asyncio.run(grow(count, method))


def main() -> list[Verdict]:
    print_title(
        "memory: bytes per idle session (started, no messages), memory store",
        "each measurement in a fresh process; RSS: median of "
        f"{REPETITIONS['rss']}, tracemalloc (deterministic): once",
    )
    series: dict[tuple[str, int], Series] = {}
    sites: list[str] = []
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn, max_tasks_per_child=1) as pool:
        jobs = {
            (method, count, repetition): pool.submit(measure_in_child, count, method)
            for method, repetitions in REPETITIONS.items()
            for repetition in range(repetitions)
            for count in SIZES
        }
        for (method, count, _), job in jobs.items():
            per_session, top = job.result()
            series.setdefault((method, count), Series(f"{method}, {count:,}")).add(per_session)
            if method == "tracemalloc" and count == max(SIZES) and not sites:
                sites = top
    rows = [[s.label, format_bytes(s.median), f"{s.median:.0f}", s.spread] for s in series.values()]
    print_table(["method, sessions", "per session", "bytes", "spread"], rows)
    print(f"  where the Python heap grew, per session, at {max(SIZES):,} sessions:")
    for site in sites:
        print(f"    {site}")
    verdicts = []
    for method in REPETITIONS:
        per_session = series[(method, max(SIZES))].median
        what = f"{method}: per idle session at {max(SIZES):,}"
        verdicts.append(check("memory", what, per_session / 1024, 2.0, " KiB"))
    return verdicts


if __name__ == "__main__":
    main()
