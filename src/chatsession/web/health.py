"""``GET /health`` (the guide's body, for the whole cluster) and ``GET /metrics``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from chatsession._exceptions import RegistryUnavailable
from chatsession.web._state import web_state

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    """``status``, the cluster's ``activeSessions``, ``uptime``; this ``instance`` and
    ``redis`` ("ok", "unavailable", or "off" for a single process). 503 while shutting down
    or while Redis cannot be reached."""
    web = web_state(request)
    chat = web.chat
    registry = chat.registry.status()
    body: dict[str, Any] = {"status": "healthy", "activeSessions": None}
    status = 200
    try:
        body["activeSessions"] = await chat.get_active_session_count()
    except RegistryUnavailable:
        body["status"], status = "degraded", 503
    if registry["backend"] == "redis" and not registry["reachable"]:
        body["status"], status = "degraded", 503
    if web.drain.closing:
        body["status"], status = "shutting_down", 503
    body["uptime"] = round(time.monotonic() - web.started, 3)
    body["instance"] = {
        "id": chat.instance_id,
        "activeSessions": len(chat.sessions),
        "connections": web.drain.open_connections,
    }
    if registry["backend"] == "redis":
        body["redis"] = "ok" if status != 503 or registry["reachable"] else "unavailable"
        if not registry["reachable"]:
            body["redis"] = "unavailable"
            body["redisError"] = registry["reason"]
    else:
        body["redis"] = "off"
    headers = {"retry-after": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(web_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
