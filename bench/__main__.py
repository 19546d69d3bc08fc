"""Run the benchmarks: ``python -m bench`` runs them all, ``python -m bench append sweep`` some.

A benchmark is any ``bench/bench_NAME.py`` module that defines ``main()``; it is run as
``NAME``. ``main()`` may be a coroutine function, and may return a list of `Verdict`
values, which are summed up at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench._timing import Verdict, format_seconds, machine_note

PREFIX = "bench_"


def available() -> list[str]:
    """The benchmark names, from the ``bench_*.py`` modules beside this file."""
    directory = str(Path(__file__).parent)
    return sorted(
        module.name.removeprefix(PREFIX)
        for module in pkgutil.iter_modules([directory])
        if module.name.startswith(PREFIX)
    )


def run(name: str) -> list[Verdict]:
    """Import ``bench_NAME`` and call its ``main()``; return the verdicts it reports."""
    module = importlib.import_module(f"bench.{PREFIX}{name}")
    main = getattr(module, "main", None)
    if not callable(main):
        print(f"\n{PREFIX}{name}.py defines no main(): skipped")
        return []
    result = main()
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    if isinstance(result, list):
        return [verdict for verdict in result if isinstance(verdict, Verdict)]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(names)}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    arguments = parser.parse_args(argv)
    if arguments.list:
        print("\n".join(names))
        return 0
    chosen = [name.removeprefix(PREFIX) for name in arguments.names] or names
    unknown = [name for name in chosen if name not in names]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; there are {', '.join(names)}")

    print(f"chatsession benchmarks on {machine_note()}; Python {sys.version.split()[0]}")
    verdicts: list[Verdict] = []
    failed: list[str] = []
    for name in chosen:
        started = time.perf_counter()
        try:
            verdicts.extend(run(name))
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"  ({name} took {format_seconds(time.perf_counter() - started)})")

    print("\n== summary ==")
    if not verdicts and not failed:
        print("  no targets were checked")
    for verdict in verdicts:
        print(f"  {verdict}")
    for name in failed:
        print(f"  {name}: FAILED (see the traceback above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
