"""Archive listing and search for one user with 10,000 archives of 20 messages each.

Two ways, measured in the same run and interleaved in each repetition:

- *parse every file*: what listing did before the index: read and parse every archive's
  YAML, then take the newest page (and, for search, look for the word in every message).
- *index*: `YamlDialogStore.list_archives` / `search_archives`, which read the per-user
  JSON Lines index beside the archives (reconciled with the directory listing each time).

The first page is 20 archives, newest first, as ``GET /archives`` serves it. The searched
word occurs in one archive out of a hundred.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
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
from chatsession.domain import ArchiveSummary, Dialog, Message
from chatsession.storage import YamlDialogStore
from chatsession.storage import _yaml_format as fmt
from chatsession.storage.files import _archive_order, _load

ARCHIVES = 10_000
MESSAGES = 20
PAGE = 20
WORD = "zebra"  # in one archive out of EVERY
EVERY = 100
REPETITIONS_INDEX = 11
REPETITIONS_PARSE = 3  # each takes seconds; the spread shows whether three are enough
USER = "bench-user"


def populate(store: YamlDialogStore) -> None:
    """Write the archives directly as the store would have archived them."""
    archived = store.dialogs_dir(USER) / "archived"
    archived.mkdir(parents=True)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for n in range(ARCHIVES):
        began = start + timedelta(minutes=10 * n)
        messages = [
            Message(
                "user" if i % 2 == 0 else "assistant",
                f"message {i} of dialog {n}: some ordinary words about the weather today"
                + (f" and a {WORD}" if n % EVERY == 0 and i == 7 else ""),
                began + timedelta(seconds=i),
            )
            for i in range(MESSAGES)
        ]
        ended = began + timedelta(minutes=5)
        dialog = Dialog(USER, f"session-{n}", began, messages, ended, "timeout")
        name = ended.strftime("%Y-%m-%d-%H-%M-%S") + ".yaml"
        (archived / name).write_text(fmt.dump_dialog(dialog), encoding="utf-8")


def parse_every_file(directory: Path, word: str | None) -> list[ArchiveSummary]:
    """The listing before the index: parse each archive (and search its text)."""
    names = sorted((n for n in os.listdir(directory) if n.endswith(".yaml")), key=_archive_order)
    found: list[ArchiveSummary] = []
    for name in names:
        dialog = _load(directory / name)
        if word is not None and not any(word in m.content.lower() for m in dialog.messages):
            continue
        found.append(
            ArchiveSummary(
                name.removesuffix(".yaml"),
                dialog.session_id,
                dialog.started_at,
                dialog.ended_at,
                dialog.end_reason,
                len(dialog.messages),
            )
        )
    return found[::-1][:PAGE]


async def index_page(store: YamlDialogStore, word: str | None) -> list[ArchiveSummary]:
    if word is None:
        archives = await store.list_archives(USER)
    else:
        archives = await store.search_archives(USER, word)
    return archives[::-1][:PAGE]


async def measure(root: Path) -> dict[str, Series]:
    store = YamlDialogStore(root)
    with Stopwatch() as watch:
        populate(store)
    print(
        f"  wrote {ARCHIVES:,} archives of {MESSAGES} messages in {format_seconds(watch.seconds)}"
    )
    with Stopwatch() as watch:
        await store.list_archives(USER)
    print(f"  built the index from the files in {format_seconds(watch.seconds)} (once)")
    directory = store.dialogs_dir(USER) / "archived"
    series = {
        key: Series(key)
        for key in (
            "first page, index",
            "first page, parse every file",
            "search, index",
            "search, parse every file",
        )
    }
    for repetition in range(REPETITIONS_INDEX):
        for word, label in ((None, "first page"), (WORD, "search")):
            with Stopwatch() as watch:
                indexed = await index_page(store, word)
            series[f"{label}, index"].add(watch.seconds)
            if repetition < REPETITIONS_PARSE:
                with Stopwatch() as watch:
                    parsed = await asyncio.to_thread(parse_every_file, directory, word)
                series[f"{label}, parse every file"].add(watch.seconds)
                if [a.archive_id for a in parsed] != [a.archive_id for a in indexed]:
                    raise RuntimeError(f"{label}: the index and the files disagree")
    return series


def main() -> list[Verdict]:
    print_title(
        "archives: first page and one-word search, index against parsing every file",
        f"one user, {ARCHIVES:,} archives of {MESSAGES} messages; page of {PAGE}, newest first",
        f"medians of {REPETITIONS_INDEX} (index) and {REPETITIONS_PARSE} (parse) repetitions,"
        " interleaved",
    )
    root = Path(tempfile.mkdtemp(prefix="chatsession-bench-archives-"))
    try:
        series = asyncio.run(measure(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(
        ["case", "median", "spread"],
        [[s.label, format_seconds(s.median), s.spread] for s in series.values()],
    )
    verdicts = []
    for label in ("first page", "search"):
        index = series[f"{label}, index"].median
        parse = series[f"{label}, parse every file"].median
        print(f"  {label}: the index is {parse / index:.0f}x faster than parsing every file")
    page_ratio = series["first page, index"].median / series["first page, parse every file"].median
    verdicts.append(check("archives", "first page: index / parse every file", page_ratio, 1 / 20))
    return verdicts


if __name__ == "__main__":
    main()
