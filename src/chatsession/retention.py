"""Archive retention: delete archives older than ``ARCHIVE_RETENTION_DAYS``.

The store finds expired archives through its per-day journal, so a sweep costs what it
deletes, not what it keeps. Each deletion is logged; the caller counts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from chatsession._exceptions import ChatSessionError
from chatsession.domain import utc_now
from chatsession.storage.base import DialogStore

__all__ = ["expire_archives", "run_retention"]

logger = logging.getLogger("chatsession.retention")


async def expire_archives(store: DialogStore, days: float) -> list[tuple[str, str]]:
    """Delete every archive made more than ``days`` ago; return (user id, archive id) pairs."""
    expired = await store.expire_archives(utc_now() - timedelta(days=days))
    for user_id, archive_id in expired:
        logger.info(
            "retention: deleted archive %s of %r (older than %g days)", archive_id, user_id, days
        )
    return expired


async def run_retention(
    store: DialogStore,
    days: float,
    interval: float,
    counted: Callable[[int], None],
) -> None:
    """Expire archives every ``interval`` seconds until cancelled; ``counted(n)`` after each."""
    while True:
        try:
            counted(len(await expire_archives(store, days)))
        except (ChatSessionError, OSError) as exc:
            logger.error("retention sweep failed: %s", exc)
        await asyncio.sleep(interval)
