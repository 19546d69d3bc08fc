"""Archiving every session at shutdown: the time it takes to leave ``async with ChatServer``.

Each repetition enters a server over a YAML store in a fresh temporary directory, has
``SESSIONS`` users chat once (two messages each, so each session has a dialog to archive;
``CONCURRENCY`` users at a time, as a server would see them), syncs the disk off the clock,
and times leaving the block: every session archived with reason ``shutdown``, then the
store flushed. Afterwards every archive must be on disk and
no ``current.yaml`` left. The baselines, measured in the same repetition: a tenth of the
sessions on disk (the cost should grow no faster than the count) and the memory store
(the session bookkeeping alone).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from bench._timing import (
    Series,
    Stopwatch,
    Verdict,
    check,
    format_seconds,
    print_table,
    print_title,
)
from chatsession import ChatServer, Settings
from chatsession._types import Durability
from chatsession.models import EchoModel
from chatsession.storage import DialogStore, MemoryDialogStore, YamlDialogStore

SESSIONS = 10_000
REPETITIONS = 3
CONCURRENCY = 100
TARGET_SECONDS = 10.0
# (store, durability, sessions, repetitions). Deleting 10,000 users' directories takes
# 5 to 25 s here, so only the default, batch, gets three; never gets one, and so does
# always, which also fsyncs every message while filling.
CASES: tuple[tuple[str, Durability, int, int], ...] = (
    ("yaml", "batch", SESSIONS, REPETITIONS),
    ("yaml", "batch", SESSIONS // 10, REPETITIONS),
    ("memory", "batch", SESSIONS, REPETITIONS),
    ("yaml", "never", SESSIONS, 1),
    ("yaml", "always", SESSIONS, 1),
)


def make_store(kind: str, directory: Path, durability: Durability) -> DialogStore:
    return MemoryDialogStore() if kind == "memory" else YamlDialogStore(directory, durability)


def label(kind: str, durability: Durability, sessions: int) -> str:
    return f"{kind}, {sessions:,}" if kind == "memory" else f"{kind} {durability}, {sessions:,}"


def count_files(directory: Path, pattern: str) -> int:
    return sum(1 for _ in directory.glob(pattern))


class Cleaner:
    """Deletes directories in a background thread; `settle` waits until it is done."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.pending: list[Future[None]] = []

    def delete(self, directory: Path) -> None:
        self.pending.append(self.executor.submit(shutil.rmtree, directory, True))

    def settle(self) -> None:
        wait(self.pending)
        self.pending.clear()


async def chat_once(chat: ChatServer, user_id: str) -> None:
    async for _ in chat.chat_with_history(user_id, "hello, and goodbye"):
        pass


async def fill_and_shut_down(
    kind: str, durability: Durability, sessions: int, root: Path, settle: Callable[[], None]
) -> float:
    """Seconds to leave a server holding ``sessions`` sessions with two messages each."""
    settings = Settings(data_dir=root, durability=durability, session_check_interval=3600)
    chat = ChatServer(settings, store=make_store(kind, root, durability), model=EchoModel())
    await chat.__aenter__()
    try:
        with Stopwatch() as filling:
            for first in range(0, sessions, CONCURRENCY):
                users = range(first, min(first + CONCURRENCY, sessions))
                await asyncio.gather(*(chat_once(chat, f"user-{n:05d}") for n in users))
        with Stopwatch() as settling:
            settle()
            os.sync()  # the messages are on disk already: only the shutdown's writes count
    finally:
        with Stopwatch() as watch:
            await chat.__aexit__(None, None, None)
    if kind == "yaml":
        archived = count_files(root, "users/*/dialogs/archived/*.yaml")
        current = count_files(root, "users/*/dialogs/current.yaml")
        if archived != sessions or current:
            raise RuntimeError(f"{archived} archives and {current} current dialogs left")
    print(
        f"  {label(kind, durability, sessions)}: filled in {format_seconds(filling.seconds)},"
        f" cleanup and sync waited {format_seconds(settling.seconds)},"
        f" shut down in {format_seconds(watch.seconds)}"
    )
    return watch.seconds


def main() -> list[Verdict]:
    print_title(
        "shutdown: leaving async with ChatServer, archiving every session",
        "each session holds 2 messages; filling the server and syncing the disk are untimed",
        f"cases interleaved in each repetition; median of up to {REPETITIONS}",
    )
    series = {case: Series(label(*case[:3])) for case in CASES}
    with ThreadPoolExecutor(max_workers=1) as executor:
        cleaner = Cleaner(executor)
        for repetition in range(REPETITIONS):
            for case in CASES:
                kind, durability, sessions, repetitions = case
                if repetition < repetitions:
                    root = Path(tempfile.mkdtemp(prefix="chatsession-bench-shutdown-"))
                    try:
                        run = fill_and_shut_down(kind, durability, sessions, root, cleaner.settle)
                        series[case].add(asyncio.run(run))
                    finally:
                        cleaner.delete(root)
        with Stopwatch() as cleaning:
            cleaner.settle()
    print(f"  (deleting the last directories took {format_seconds(cleaning.seconds)})")
    rows = [
        [
            s.label,
            format_seconds(s.median),
            format_seconds(s.median / case[2]),
            s.spread,
            f"{len(s.samples)}",
        ]
        for case, s in series.items()
    ]
    print_table(["store durability, sessions", "median", "per session", "spread", "reps"], rows)
    full, tenth = series[CASES[0]], series[CASES[1]]
    print(f"  {SESSIONS:,} / {SESSIONS // 10:,} sessions (batch): {full.median / tenth.median:.1f}")
    verdicts = []
    for case, samples in series.items():
        kind, durability, sessions, _ = case
        if kind == "yaml" and sessions == SESSIONS:
            what = f"yaml {durability}: {sessions:,} sessions"
            verdicts.append(check("shutdown", what, samples.median, TARGET_SECONDS, " s"))
    return verdicts


if __name__ == "__main__":
    main()
