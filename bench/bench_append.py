"""Storing one message: at dialog length 1,000 against 10, and against a whole-file rewrite.

Each repetition times one `YamlDialogStore.append` to each of several dialogs held at a
given length, interleaving the lengths, so both see the same machine. The naive approach
keeps the dialog in memory and, per message, dumps all of it with PyYAML (the same C dumper
the store uses) to a temporary file renamed over the old one, fsyncing first under
``always``; it never reads the file back, which favours it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench._timing import (
    Series,
    Stopwatch,
    Verdict,
    check,
    format_seconds,
    print_table,
    print_title,
)
from chatsession import Message
from chatsession._types import Durability, Role
from chatsession.storage import YamlDialogStore

SHORT, LONG, NAIVE_LENGTH = 10, 1_000, 200
DIALOGS = 20  # dialogs per length: one append each per repetition
REPETITIONS = 15
MODES: tuple[tuple[Durability, int], ...] = (("never", REPETITIONS), ("batch", REPETITIONS))
ALWAYS_REPETITIONS = 9  # each append waits for an fsync of a few ms
STARTED = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
TEXT = (
    "Could you summarise the main points of our discussion so far, and list the open "
    "questions we still have to settle before the review on Thursday?"
)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def message(index: int) -> Message:
    role: Role = "user" if index % 2 == 0 else "assistant"
    return Message(role, f"{TEXT} ({index})", timestamp=STARTED + timedelta(seconds=index))


class Dialogs:
    """``DIALOGS`` users whose current dialogs each hold ``length`` messages."""

    def __init__(self, store: YamlDialogStore, length: int) -> None:
        self.store = store
        self.users = [f"user-{length}-{n}" for n in range(DIALOGS)]
        self.length = length

    async def fill(self) -> None:
        for user_id in self.users:
            for index in range(self.length):
                await self.append(user_id, index)

    async def append(self, user_id: str, index: int) -> None:
        await self.store.append(user_id, "s-" + user_id, STARTED, message(index), first=not index)

    async def time_one_append_each(self) -> float:
        """The median time of one append to each dialog; each grows by one message."""
        times = Series("append")
        for user_id in self.users:
            with Stopwatch() as watch:
                await self.append(user_id, self.length)
            times.add(watch.seconds)
        self.length += 1
        return times.median


class NaiveDialog:
    """The dialog as one mapping, dumped whole to its file after every message."""

    def __init__(self, path: Path, length: int, durability: Durability) -> None:
        self.path = path
        self.durability = durability
        self.document: dict[str, Any] = {
            "user_id": "naive",
            "session_id": "s-naive",
            "started_at": STARTED.isoformat(),
            "messages": [],
        }
        for index in range(length - 1):
            self.document["messages"].append(self.record(index))
        self.append(length - 1)

    @staticmethod
    def record(index: int) -> dict[str, Any]:
        stored = message(index)
        when = stored.timestamp.isoformat()
        return {"role": stored.role, "content": stored.content, "timestamp": when}

    def append(self, index: int) -> None:
        self.document["messages"].append(self.record(index))
        text = yaml.dump(self.document, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        temporary = self.path.with_suffix(".new")
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
            if self.durability == "always":
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, self.path)

    def time_appends(self, count: int) -> float:
        times = Series("naive")
        for _ in range(count):
            index = len(self.document["messages"])
            with Stopwatch() as watch:
                self.append(index)
            times.add(watch.seconds)
        return times.median


async def measure(root: Path, durability: Durability, repetitions: int) -> list[Series]:
    # Filled without fsync, which under ``always`` would take minutes; then synced once.
    filler = YamlDialogStore(root / durability, "never")
    groups = [Dialogs(filler, length) for length in (SHORT, NAIVE_LENGTH, LONG)]
    for group in groups:
        await group.fill()
    os.sync()
    store = YamlDialogStore(root / durability, durability)
    for group in groups:
        group.store = store
    naive_dir = root / durability / "naive"
    naive_dir.mkdir()
    naive = NaiveDialog(naive_dir / "current.yaml", NAIVE_LENGTH, durability)
    series = [Series(f"ours at {group.length:,}") for group in groups]
    naive_series = Series(f"naive rewrite at {NAIVE_LENGTH}")
    naive_appends = 5 if durability == "always" else DIALOGS
    measured = list(zip(groups, series, strict=True))
    for repetition in range(repetitions):
        # Rotate which length goes first: under ``always`` the first fsyncs of a round can
        # wait for the journal to commit what the round before left behind.
        shift = repetition % len(measured)
        for group, samples in measured[shift:] + measured[:shift]:
            samples.add(await group.time_one_append_each())
        naive_series.add(naive.time_appends(naive_appends))
        await store.flush()  # what the server's flusher does between messages, off the clock
    await store.aclose()
    return [*series, naive_series]


def report(durability: Durability, series: list[Series]) -> list[Verdict]:
    short, middle, long, naive = series
    rows = [[s.label, format_seconds(s.median), s.spread, f"{len(s.samples)}"] for s in series]
    print(f"\n  durability={durability}: median time to store one message")
    print_table(["case", "median", "spread", "reps"], rows)
    growth = long.median / short.median
    speedup = naive.median / middle.median
    print(f"  ratio length {LONG:,} / length {SHORT}: {growth:.2f}")
    print(f"  naive rewrite / ours, both at length {NAIVE_LENGTH}: {speedup:.1f}x slower")
    return [check("append", f"{durability}: length {LONG:,} / {SHORT}", growth, 1.5)]


def main() -> list[Verdict]:
    print_title(
        "append: storing one message with YamlDialogStore.append",
        f"{DIALOGS} dialogs per length, one append each per repetition; medians of medians",
        "batch: its fsync runs in flush(), off the clock, as the server's flusher does",
    )
    modes: list[tuple[Durability, int]] = [*MODES, ("always", ALWAYS_REPETITIONS)]
    verdicts: list[Verdict] = []
    root = Path(tempfile.mkdtemp(prefix="chatsession-bench-append-"))
    try:
        for durability, repetitions in modes:
            series = asyncio.run(measure(root, durability, repetitions))
            verdicts.extend(report(durability, series))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return verdicts


if __name__ == "__main__":
    main()
