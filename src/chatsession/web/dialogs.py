"""The dialog API (``/dialogs``...) and the admins' ``GET /sessions``.

A caller reads their own dialogs; ``?userId=`` names another user's, which only an admin
may read (403 otherwise).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from chatsession._exceptions import PermissionDenied
from chatsession.domain import ArchiveSummary, Dialog, Message, SessionInfo
from chatsession.web._state import identify, web_state

__all__ = ["ERRORS", "dialog_json", "owner", "router", "session_json", "summary_json"]

router = APIRouter(tags=["dialogs"])


class ErrorBody(BaseModel):
    """Every error of the API: a sentence saying what went wrong."""

    error: str


# The errors a caller of the dialog and console API may get, for the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no identity, or a token that does not verify"},
    403: {"model": ErrorBody, "description": "another user's data, or not an admin"},
    404: {"model": ErrorBody, "description": "no such archive"},
}


def owner(request: Request) -> str:
    identity = identify(request)
    wanted = request.query_params.get("userId")
    if wanted is None or wanted == identity.user_id:
        return identity.user_id
    if not identity.admin:
        raise PermissionDenied("these dialogs belong to another user")
    return wanted


@router.get("/dialogs", responses=ERRORS)
async def list_dialogs(request: Request) -> Response:
    """The caller's archives, oldest first (the console pages them with ``/archives``)."""
    user_id = owner(request)
    archives = await web_state(request).chat.list_archives(user_id)
    return JSONResponse({"userId": user_id, "archives": [summary_json(a) for a in archives]})


@router.get("/dialogs/current", responses=ERRORS)
async def current_dialog(request: Request) -> Response:
    """The caller's current dialog, or null."""
    user_id = owner(request)
    dialog = await web_state(request).chat.get_current_dialog(user_id)
    return JSONResponse({"userId": user_id, "dialog": dialog_json(dialog) if dialog else None})


@router.get("/dialogs/{archive_id}", responses=ERRORS)
async def get_dialog(request: Request, archive_id: str) -> Response:
    """One archived dialog, read-only."""
    user_id = owner(request)
    dialog = await web_state(request).chat.get_archive(user_id, archive_id)
    return JSONResponse({"userId": user_id, "archiveId": archive_id, "dialog": dialog_json(dialog)})


@router.delete("/dialogs/{archive_id}", responses=ERRORS)
async def delete_dialog(request: Request, archive_id: str) -> Response:
    """Delete one archive."""
    user_id = owner(request)
    await web_state(request).chat.delete_archive(user_id, archive_id)
    return Response(status_code=204)


@router.get("/sessions", responses=ERRORS)
async def list_sessions(request: Request) -> Response:
    """Every active session (the guide's "monitor session states"); admins only."""
    if not identify(request).admin:
        raise PermissionDenied("listing sessions needs admin rights")
    sessions = await web_state(request).chat.list_sessions()
    return JSONResponse(
        {"count": len(sessions), "sessions": [session_json(s, owner) for s, owner in sessions]}
    )


def summary_json(archive: ArchiveSummary) -> dict[str, Any]:
    return {
        "archiveId": archive.archive_id,
        "sessionId": archive.session_id,
        "startedAt": archive.started_at.isoformat(),
        "endedAt": archive.ended_at.isoformat() if archive.ended_at else None,
        "endReason": archive.end_reason,
        "messageCount": archive.message_count,
        "firstWords": archive.first_words,
    }


def dialog_json(dialog: Dialog) -> dict[str, Any]:
    return {
        "userId": dialog.user_id,
        "sessionId": dialog.session_id,
        "startedAt": dialog.started_at.isoformat(),
        "endedAt": dialog.ended_at.isoformat() if dialog.ended_at else None,
        "endReason": dialog.end_reason,
        "messages": [_message(m) for m in dialog.messages],
    }


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": message.role,
        "content": message.content,
        "timestamp": message.timestamp.isoformat(),
    }
    if message.interrupted:
        out["interrupted"] = True
    if message.reasoning is not None:
        out["reasoning"] = message.reasoning
    if message.error is not None:
        out["error"] = message.error
    return out


def session_json(info: SessionInfo, instance: str | None = None) -> dict[str, Any]:
    return {
        "instance": instance,
        "userId": info.user_id,
        "sessionId": info.session_id,
        "startedAt": info.started_at.isoformat(),
        "lastActivity": info.last_activity.isoformat(),
        "isActive": info.is_active,
        "connections": info.connections,
    }
