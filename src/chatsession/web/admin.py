"""The admins' API: end anyone's session, and the last hour's session statistics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from chatsession._exceptions import PermissionDenied
from chatsession.web._state import identify, web_state
from chatsession.web.dialogs import ERRORS

__all__ = ["router"]

router = APIRouter(tags=["admin"])


def _require_admin(request: Request) -> None:
    if not identify(request).admin:
        raise PermissionDenied("this needs admin rights")


@router.delete("/sessions/{user_id}", responses=ERRORS)
async def end_users_session(request: Request, user_id: str) -> Response:
    """End a user's session now (reason ``manual``); admins only."""
    _require_admin(request)
    chat = web_state(request).chat
    active = await chat.get_user_session_info(user_id) is not None
    archive_id = await chat.end_user_session(user_id, "manual")
    return JSONResponse({"userId": user_id, "ended": active, "archiveId": archive_id})


@router.get("/admin/stats", responses=ERRORS)
async def stats(request: Request) -> Response:
    """Per minute over the last hour: sessions started, ended by reason, archive latency.

    Drawn from this server's own metrics; admins only.
    """
    _require_admin(request)
    web = web_state(request)
    minutes = [
        {
            "at": minute.start,
            "started": minute.started,
            "ended": dict(minute.ended),
            "archives": minute.archives,
            "archiveMeanSeconds": minute.archive_seconds / minute.archives
            if minute.archives
            else None,
            "archiveMaxSeconds": minute.archive_max if minute.archives else None,
        }
        for minute in web.metrics.recent.last_hour()
    ]
    return JSONResponse({"activeSessions": len(web.chat.sessions), "minutes": minutes})
