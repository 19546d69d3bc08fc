"""The caller's own session and data: ``GET``/``DELETE /session``, ``DELETE /users/{id}``."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from chatsession._exceptions import PermissionDenied
from chatsession.domain import SessionInfo
from chatsession.web._state import identify, web_state
from chatsession.web.dialogs import ERRORS, session_json

__all__ = ["router", "session_view"]

logger = logging.getLogger("chatsession.web")

router = APIRouter(tags=["console"])


def session_view(info: SessionInfo, timeout: float) -> dict[str, Any]:
    """A session as the console shows it, with when it times out if left idle.

    A session held by a connection does not time out, so ``expiresAt`` is null then.
    """
    view = session_json(info)
    view["timeoutSeconds"] = timeout
    expires = info.last_activity + timedelta(seconds=timeout)
    view["expiresAt"] = None if info.connections else expires.isoformat()
    return view


@router.get("/session", responses=ERRORS)
async def get_session(request: Request) -> Response:
    """The caller's active session, or null."""
    identity = identify(request)
    web = web_state(request)
    info = await web.chat.get_user_session_info(identity.user_id)
    view = session_view(info, web.settings.session_timeout) if info else None
    return JSONResponse({"userId": identity.user_id, "session": view})


@router.delete("/session", responses=ERRORS)
async def end_session(request: Request) -> Response:
    """End the caller's session now (reason ``manual``); answers the archive id, if any."""
    identity = identify(request)
    chat = web_state(request).chat
    info = await chat.get_user_session_info(identity.user_id)
    archive_id = await chat.end_user_session(identity.user_id, "manual")
    return JSONResponse(
        {"userId": identity.user_id, "ended": info is not None, "archiveId": archive_id}
    )


@router.delete("/users/{user_id}", responses=ERRORS)
async def erase_user(request: Request, user_id: str) -> Response:
    """Erase a user: end their session, remove the current dialog and every archive.

    A user may erase themselves; an admin may erase anyone.
    """
    identity = identify(request)
    if user_id != identity.user_id and not identity.admin:
        raise PermissionDenied("only an admin may erase another user")
    # Ending archives the current dialog, so the purge removes it with the rest.
    archived, ended, removed = await web_state(request).chat.erase_user(user_id)
    logger.info("erased user %r: %d archives removed", user_id, removed)
    return JSONResponse(
        {
            "userId": user_id,
            "sessionEnded": ended,
            "currentDialogRemoved": archived is not None,
            "archivesRemoved": removed,
        }
    )
