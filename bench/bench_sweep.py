"""The expiry sweep: 100,000 live sessions against 1,000, with the same number expiring.

Every server is filled through the public API (``start_user_session``). In each repetition
``EXPIRING`` new users chat once (two messages each, so ending them archives a dialog) and
are left alone for ``TIMEOUT`` seconds; every other user is then touched with
``update_user_activity``, and only ``expire_idle_sessions()`` is timed. It must end exactly
the ``EXPIRING`` sessions, or the benchmark fails. The servers of both sizes are measured
in turn within each repetition, over the memory store and over the YAML store.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from contextlib import AsyncExitStack
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
from chatsession.models import EchoModel
from chatsession.storage import DialogStore, MemoryDialogStore, YamlDialogStore

SMALL, LARGE = 1_000, 100_000
EXPIRING = 100
TIMEOUT = 0.5  # seconds; touching 100,000 users must take less than this
REPETITIONS = 11


class Population:
    """One running server with ``size`` live sessions, ``EXPIRING`` of them expired per round."""

    def __init__(self, chat: ChatServer, size: int, store_kind: str) -> None:
        self.chat = chat
        self.size = size
        self.live = [f"user-{n}" for n in range(size - EXPIRING)]
        self.sweeps = Series(f"{store_kind}, {size:,} sessions")
        self.round = 0

    async def fill(self) -> None:
        for user_id in self.live:
            await self.chat.start_user_session(user_id)

    async def start_expiring(self) -> None:
        self.round += 1
        for n in range(EXPIRING):
            user_id = f"idle-{self.round}-{n}"
            await self.chat.start_user_session(user_id)
            async for _ in self.chat.chat_with_history(user_id, "hello, is anyone there?"):
                pass

    async def time_sweep(self) -> None:
        for user_id in self.live:
            await self.chat.update_user_activity(user_id)
        with Stopwatch() as watch:
            ended = await self.chat.expire_idle_sessions()
        if ended != EXPIRING:
            raise RuntimeError(
                f"the sweep ended {ended} sessions, not {EXPIRING}: touching {self.size:,} "
                f"sessions took longer than the {TIMEOUT} s timeout; raise TIMEOUT"
            )
        self.sweeps.add(watch.seconds)


def make_store(kind: str, directory: Path) -> DialogStore:
    return MemoryDialogStore() if kind == "memory" else YamlDialogStore(directory, "batch")


async def measure(root: Path) -> list[Population]:
    settings = Settings(data_dir=root, session_timeout=TIMEOUT, session_check_interval=3600)
    populations: list[Population] = []
    async with AsyncExitStack() as stack:
        for kind in ("memory", "yaml"):
            for size in (SMALL, LARGE):
                store = make_store(kind, root / f"{kind}-{size}")
                server = ChatServer(settings, store=store, model=EchoModel())
                chat = await stack.enter_async_context(server)
                population = Population(chat, size, kind)
                with Stopwatch() as watch:
                    await population.fill()
                print(f"  started {size:,} sessions ({kind}) in {format_seconds(watch.seconds)}")
                populations.append(population)
        for repetition in range(REPETITIONS):
            for population in populations:
                await population.start_expiring()
            await asyncio.sleep(TIMEOUT * 1.1)  # the margin covers the clock's granularity
            # Alternate the order, so neither size always runs on a warmer cache.
            order = populations if repetition % 2 == 0 else populations[::-1]
            for population in order:
                await population.time_sweep()
        print("  (leaving the servers: archiving every session, not timed)")
    return populations


def main() -> list[Verdict]:
    print_title(
        "sweep: one expire_idle_sessions() call",
        f"{EXPIRING} sessions expired (each with 2 messages), the rest touched just before",
        f"median of {REPETITIONS} repetitions; sizes interleaved in each repetition",
    )
    root = Path(tempfile.mkdtemp(prefix="chatsession-bench-sweep-"))
    try:
        populations = asyncio.run(measure(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [[p.sweeps.label, format_seconds(p.sweeps.median), p.sweeps.spread] for p in populations]
    print_table(["store, live sessions", "median sweep", "spread"], rows)
    verdicts: list[Verdict] = []
    for small, large in zip(populations[::2], populations[1::2], strict=True):
        kind = small.sweeps.label.split(",")[0]
        ratio = large.sweeps.median / small.sweeps.median
        print(f"  {kind}: {LARGE:,} / {SMALL:,} sessions = {ratio:.2f}")
        verdicts.append(check("sweep", f"{kind}: {LARGE:,} / {SMALL:,} sessions", ratio, 2.0))
    return verdicts


if __name__ == "__main__":
    main()
