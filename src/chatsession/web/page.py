"""``GET /``: the console; ``GET /docs``: the API reference, both working offline.

Every script and style ships in the package (``web/static``), so the console works with
no network: no CDN, no build step.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from chatsession._exceptions import DialogNotFound

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
}


@cache
def _static(name: str) -> str:
    return files("chatsession.web").joinpath(f"static/{name}").read_text(encoding="utf-8")


@router.get("/")
async def console_page() -> HTMLResponse:
    return HTMLResponse(_static("console.html"))


@router.get("/docs")
async def docs_page() -> HTMLResponse:
    return HTMLResponse(_static("docs.html"))


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise DialogNotFound(f"no such file: {name!r}")
    return Response(_static(name), media_type=media_type)
