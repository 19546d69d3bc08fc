"""``GET /health`` (the guide's body) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from chatsession.web._state import web_state

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    web = web_state(request)
    closing = web.drain.closing
    return JSONResponse(
        {
            "status": "shutting_down" if closing else "healthy",
            "activeSessions": await web.chat.get_active_session_count(),
            "uptime": round(time.monotonic() - web.started, 3),
        },
        status_code=503 if closing else 200,
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(web_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
