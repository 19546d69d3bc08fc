"""Run a piece of work against the events that make it pointless; the first to end wins."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["race"]

T = TypeVar("T")


async def race(
    work: Coroutine[Any, Any, T], *stops: Coroutine[Any, Any, object] | asyncio.Future[Any]
) -> tuple[bool, T | None]:
    """Run ``work`` and every ``stop`` together; whichever ends first cancels the others.

    A stop may be a coroutine or a future (cheaper: no task of its own); a future given
    as a stop is left alone when the race ends, since others may be waiting on it.

    Returns ``(True, result)`` when ``work`` finished first (its exception, if any, is
    raised), or ``(False, None)`` when a stop (a client gone, a shutdown) ended first.
    Every task started here is awaited before returning, so nothing outlives the call.
    """
    work_task = asyncio.ensure_future(work)
    futures = [stop for stop in stops if isinstance(stop, asyncio.Future)]
    stop_tasks = [asyncio.ensure_future(s) for s in stops if not isinstance(s, asyncio.Future)]
    try:
        done, _ = await asyncio.wait(
            [work_task, *stop_tasks, *futures], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        # One finished, or the caller was cancelled: either way the others stop here.
        for task in (work_task, *stop_tasks):
            if not task.done():
                task.cancel()
        await asyncio.gather(work_task, *stop_tasks, return_exceptions=True)
    if work_task in done:
        return True, work_task.result()
    return False, None
