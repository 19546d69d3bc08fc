"""What other instances ask of this one: hand a session over, take one, adopt a dead
instance's sessions, or give everything up after being taken for dead.

Each answer holds the user's lock, like every other change to a session, so a turn that is
running here finishes (and is stored) before its session goes elsewhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chatsession._state import run_to_completion
from chatsession.registry.base import Adopted, Claim

if TYPE_CHECKING:
    from chatsession.sessions import SessionManager

__all__ = ["Peers"]

logger = logging.getLogger("chatsession.sessions")


class Peers:
    """The session manager's answers to the other instances (the registry's `Inbox`)."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    async def hand_over(self, user_id: str, to: str) -> None:
        """Another instance needs to write this user's dialog: let it, once done here.

        The lock is taken first come, first served, so the turns already waiting here run
        before the session goes, and the ones after them ask for it back.
        """
        m = self.manager
        async with m._locked(user_id):
            session = m._sessions.get(user_id)
            if session is not None:
                await m._hand_over_now(session, to)
            else:
                await m.registry.release(user_id, to)
        logger.debug("handed the session of %r over to %s", user_id, to)

    async def take(self, user_id: str) -> None:
        """A session was handed to this instance: own it here (it expires here now)."""
        m = self.manager
        async with m._locked(user_id):
            if user_id not in m._sessions and not m._closing:
                await m._own(user_id, None, create=False)

    async def adopt(self, adopted: list[Adopted]) -> None:
        """Sessions an instance that died left behind: finish, end or keep each."""
        m = self.manager
        me = m.registry.instance_id
        for item in adopted:
            user_id, session_id = item.record.user_id, item.record.session_id
            if item.record.owner == me:
                async with m._locked(user_id):
                    session = m._sessions.get(user_id)
                    if session is None:
                        session = m._install(Claim(item.record, moved=True))
                        await m._reload(session)
                    if item.ending and item.pending is not None:
                        await run_to_completion(m._close(session, item.pending, due=False))
                        continue
            if item.pending is not None and not item.ending:
                m._end_later(user_id, item.pending, session_id)

    async def lost(self) -> None:
        """This instance was taken for dead: what it owned may be owned elsewhere now."""
        m = self.manager
        for session in list(m._sessions.values()):
            m.store.forget(session.user_id)
            m._forget(session)
        logger.error("this instance was taken for dead; it no longer owns any session")
