"""The console's archive API: ``GET /archives`` (newest first, paged, searchable) and export.

Opening and deleting one archive are the dialog API's ``GET``/``DELETE /dialogs/{id}``.
As there, ``?userId=`` names another user's archives, which only an admin may read.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from chatsession._exceptions import InvalidRequest
from chatsession.domain import Dialog
from chatsession.storage._yaml_format import dump_dialog
from chatsession.web._state import web_state
from chatsession.web.dialogs import ERRORS, dialog_json, owner, summary_json

__all__ = ["router"]

router = APIRouter(tags=["archives"])

MAX_PAGE = 200
_ARCHIVE_ID = re.compile(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}(-\d{1,6})?")
ExportFormat = Literal["yaml", "json", "markdown"]
_MEDIA = {"yaml": "application/yaml", "json": "application/json", "markdown": "text/markdown"}
_SUFFIX = {"yaml": "yaml", "json": "json", "markdown": "md"}


@router.get("/archives", responses=ERRORS)
async def list_archives(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="archives per page")] = 20,
    before: Annotated[str | None, Query(description="an archive id: the page after it")] = None,
    q: Annotated[str | None, Query(description="words every listed archive contains")] = None,
) -> Response:
    """The caller's archives, newest first, one page at a time; ``q`` searches their text.

    ``next`` is the ``before`` of the following page, or null on the last page.
    """
    user_id = owner(request)
    if before is not None and not _ARCHIVE_ID.fullmatch(before):
        raise InvalidRequest(f"before: {before!r} is not an archive id (2024-01-15-10-30-00)")
    chat = web_state(request).chat
    if q and q.strip():
        archives = await chat.store.search_archives(user_id, q)
    else:
        archives = await chat.list_archives(user_id)
    archives.reverse()
    start = 0
    if before is not None:
        start = next((i + 1 for i, a in enumerate(archives) if a.archive_id == before), -1)
        if start < 0:
            start = next(
                (i for i, a in enumerate(archives) if a.archive_id < before), len(archives)
            )
    page = archives[start : start + limit]
    more = start + limit < len(archives)
    return JSONResponse(
        {
            "userId": user_id,
            "total": len(archives),
            "archives": [summary_json(a) for a in page],
            "next": page[-1].archive_id if more and page else None,
        }
    )


@router.get("/archives/export", responses=ERRORS)
async def export_archives(
    request: Request,
    format: Annotated[ExportFormat, Query(description="yaml, json or markdown")] = "yaml",
    archive_id: Annotated[
        str | None, Query(alias="archiveId", description="one archive; else all")
    ] = None,
) -> Response:
    """One archive, or every archive of the caller, as a file to download."""
    user_id = owner(request)
    chat = web_state(request).chat
    everything = [] if archive_id else await chat.list_archives(user_id)
    ids = [archive_id] if archive_id else [a.archive_id for a in everything]
    dialogs = [(i, await chat.get_archive(user_id, i)) for i in ids]
    body = render(dialogs, format)
    name = f"{archive_id or 'archives'}.{_SUFFIX[format]}"
    return Response(
        body,
        media_type=_MEDIA[format],
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


def render(dialogs: list[tuple[str, Dialog]], format: str) -> str:
    if format == "yaml":
        return "".join(f"--- # {i}\n{dump_dialog(d)}" for i, d in dialogs)
    if format == "json":
        documents = [{"archiveId": i, **dialog_json(d)} for i, d in dialogs]
        return json.dumps(documents if len(documents) != 1 else documents[0], indent=2) + "\n"
    if format == "markdown":
        return "\n\n".join(_markdown(i, d) for i, d in dialogs) + "\n"
    raise InvalidRequest(f"unknown export format {format!r}: use yaml, json or markdown")


def _markdown(archive_id: str, dialog: Dialog) -> str:
    lines: list[Any] = [
        f"# {archive_id}",
        "",
        f"- user: {dialog.user_id}",
        f"- session: {dialog.session_id}",
        f"- started: {dialog.started_at.isoformat()}",
        f"- ended: {dialog.ended_at.isoformat() if dialog.ended_at else '-'}"
        f" ({dialog.end_reason or '-'})",
    ]
    for message in dialog.messages:
        note = " (interrupted)" if message.interrupted else ""
        lines += ["", f"## {message.role}, {message.timestamp.isoformat()}{note}", ""]
        lines.append(message.content)
    return "\n".join(lines)
