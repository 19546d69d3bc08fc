"""``GET /``: a small chat page over the WebSocket, for trying the server in a browser."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import HTMLResponse

__all__ = ["router"]

router = APIRouter()


@cache
def _page() -> str:
    return files("chatsession.web").joinpath("static/chat.html").read_text(encoding="utf-8")


@router.get("/")
async def chat_page() -> HTMLResponse:
    return HTMLResponse(_page())
