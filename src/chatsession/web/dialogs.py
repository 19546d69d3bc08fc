"""The dialog API (``/dialogs``...) and the admins' ``GET /sessions``.

A caller reads their own dialogs; ``?userId=`` names another user's, which only an admin
may read (403 otherwise).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from chatsession._exceptions import PermissionDenied
from chatsession.domain import ArchiveSummary, Dialog, Message, SessionInfo
from chatsession.web._state import identify, web_state

__all__ = ["router"]

router = APIRouter()


def _owner(request: Request) -> str:
    identity = identify(request)
    wanted = request.query_params.get("userId")
    if wanted is None or wanted == identity.user_id:
        return identity.user_id
    if not identity.admin:
        raise PermissionDenied("these dialogs belong to another user")
    return wanted


@router.get("/dialogs")
async def list_dialogs(request: Request) -> Response:
    user_id = _owner(request)
    archives = await web_state(request).chat.list_archives(user_id)
    return JSONResponse({"userId": user_id, "archives": [_summary(a) for a in archives]})


@router.get("/dialogs/current")
async def current_dialog(request: Request) -> Response:
    user_id = _owner(request)
    dialog = await web_state(request).chat.get_current_dialog(user_id)
    return JSONResponse({"userId": user_id, "dialog": _dialog(dialog) if dialog else None})


@router.get("/dialogs/{archive_id}")
async def get_dialog(request: Request, archive_id: str) -> Response:
    user_id = _owner(request)
    dialog = await web_state(request).chat.get_archive(user_id, archive_id)
    return JSONResponse({"userId": user_id, "archiveId": archive_id, "dialog": _dialog(dialog)})


@router.delete("/dialogs/{archive_id}")
async def delete_dialog(request: Request, archive_id: str) -> Response:
    user_id = _owner(request)
    await web_state(request).chat.delete_archive(user_id, archive_id)
    return Response(status_code=204)


@router.get("/sessions")
async def list_sessions(request: Request) -> Response:
    """Every active session (the guide's "monitor session states"); admins only."""
    if not identify(request).admin:
        raise PermissionDenied("listing sessions needs admin rights")
    sessions = await web_state(request).chat.list_sessions()
    return JSONResponse(
        {"count": len(sessions), "sessions": [_session(s, owner) for s, owner in sessions]}
    )


def _summary(archive: ArchiveSummary) -> dict[str, Any]:
    return {
        "archiveId": archive.archive_id,
        "sessionId": archive.session_id,
        "startedAt": archive.started_at.isoformat(),
        "endedAt": archive.ended_at.isoformat() if archive.ended_at else None,
        "endReason": archive.end_reason,
        "messageCount": archive.message_count,
    }


def _dialog(dialog: Dialog) -> dict[str, Any]:
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


def _session(info: SessionInfo, instance: str) -> dict[str, Any]:
    return {
        "instance": instance,
        "userId": info.user_id,
        "sessionId": info.session_id,
        "startedAt": info.started_at.isoformat(),
        "lastActivity": info.last_activity.isoformat(),
        "isActive": info.is_active,
        "connections": info.connections,
    }
