"""What every benchmark shares: a stopwatch, medians, ratios, target checks and tables.

The machine is shared and noisy, so a benchmark never compares against a number measured
elsewhere: it measures its baseline in the same run, interleaved with the case it compares,
and reports medians of several repetitions together with their spread.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

__all__ = [
    "Series",
    "Stopwatch",
    "Verdict",
    "check",
    "format_bytes",
    "format_seconds",
    "machine_note",
    "print_table",
    "print_title",
]


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.seconds``; a monotonic clock."""

    __slots__ = ("_started", "seconds")

    def __init__(self) -> None:
        self._started = 0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter_ns()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.seconds = (time.perf_counter_ns() - self._started) / 1e9


@dataclass
class Series:
    """Samples of one measured quantity, one per repetition."""

    label: str
    samples: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.samples.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> str:
        """How far the samples stray from the median: ``-3%/+12%`` (min, max)."""
        middle = self.median
        if not middle or len(self.samples) < 2:
            return "-"
        low = (min(self.samples) / middle - 1) * 100
        high = (max(self.samples) / middle - 1) * 100
        return f"{low:+.0f}%/{high:+.0f}%"


@dataclass(frozen=True)
class Verdict:
    """Whether one target holds; `check` prints it, the runner sums them up at the end."""

    benchmark: str
    what: str
    value: float
    target: float
    unit: str

    @property
    def holds(self) -> bool:
        return self.value <= self.target

    def __str__(self) -> str:
        state = "holds" if self.holds else "MISSED"
        return (
            f"{self.benchmark}: {self.what} = {self.value:.3g}{self.unit}"
            f" (target <= {self.target:g}{self.unit}): {state}"
        )


def check(benchmark: str, what: str, value: float, target: float, unit: str = "") -> Verdict:
    """Compare ``value`` with an upper bound ``target`` and print the outcome."""
    verdict = Verdict(benchmark, what, value, target, unit)
    print(f"  target: {verdict}")
    return verdict


def format_seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def format_bytes(value: float) -> str:
    if abs(value) >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    if abs(value) >= 1 << 10:
        return f"{value / (1 << 10):.2f} KiB"
    return f"{value:.0f} B"


def machine_note() -> str:
    """CPUs and load right now, to read the figures against."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def print_title(title: str, *notes: str) -> None:
    print(f"\n== {title} ==")
    for note in (*notes, machine_note()):
        print(f"  {note}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table, first column left-aligned and the rest right-aligned."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])]
        parts.extend(cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True))
        return "  " + "  ".join(parts)

    print(line(headers))
    print("  " + "  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))
