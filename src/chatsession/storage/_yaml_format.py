"""The YAML of a dialog file, written so that appending never rewrites it.

A dialog file is one YAML mapping a person can read::

    user_id: alice
    session_id: 3f9c...
    started_at: '2024-01-15T10:25:00.120000+00:00'
    epoch: 1705314300120                              # the owner's fencing token
    messages:
    - role: user
      content: hi
      timestamp: '2024-01-15T10:25:01.500000+00:00'
    - role: assistant
      content: hello
      timestamp: '2024-01-15T10:25:02.000000+00:00'
    ended_at: '2024-01-15T10:30:00.000000+00:00'     # archives only
    end_reason: timeout                               # archives only

``messages`` is the last key while the dialog is current, so a new message is appended as
one more ``- `` record at the end of the file, and archiving appends the ``ended_at`` and
``end_reason`` lines. Every record ends with its ``timestamp`` line and a newline, which is
what lets a reader tell a record torn by a crash from a whole one: a torn last record lacks
its final newline or its timestamp, and is dropped with a warning.

``epoch`` is the fencing token of the instance that last took the dialog for writing (see
`DialogStore`): a new owner rewrites the file under it, so a former owner's descriptor is
left on a file with no name, and a former owner that opens it afresh finds a newer epoch.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import yaml

from chatsession._exceptions import CorruptDialogError
from chatsession._types import END_REASONS, EndReason, Role
from chatsession.domain import Dialog, Message

logger = logging.getLogger("chatsession.storage")

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_ROLES = frozenset(("system", "user", "assistant"))
_RECORD_START = re.compile(r"^-", re.MULTILINE)
_TOP_LEVEL_LINE = re.compile(r"^[^\s-]", re.MULTILINE)  # after the records: the trailer
# What a YAML loader raises besides YAMLError on input it cannot take (an impossible date
# such as 2024-13-01 is a ValueError; absurd nesting is a RecursionError).
_LOAD_ERRORS = (yaml.YAMLError, ValueError, TypeError, RecursionError)


class _Dumper(_BaseDumper):  # type: ignore[misc,valid-type]  # the C dumper is untyped
    pass


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # Multi-line text reads best as a literal block; the emitter falls back to a quoted
    # style by itself when the text cannot be a block (trailing spaces, special characters).
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(data: Any) -> str:
    text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return text


def _message_mapping(message: Message) -> dict[str, Any]:
    mapping: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.reasoning is not None:
        mapping["reasoning"] = message.reasoning
    if message.interrupted:
        mapping["interrupted"] = True
    if message.error is not None:
        mapping["error"] = message.error
    mapping["timestamp"] = message.timestamp.isoformat()  # last: it marks a whole record
    return mapping


def dump_header(
    user_id: str, session_id: str, started_at: datetime, epoch: int | None = None
) -> str:
    header = {"user_id": user_id, "session_id": session_id, "started_at": started_at.isoformat()}
    owner = "" if epoch is None else f"epoch: {int(epoch)}\n"
    return _dump(header) + owner + "messages:\n"


def dump_message(message: Message) -> str:
    """One ``- `` record. Messages are written on every turn, so the common case — short
    single-line ASCII text — is written directly; anything else goes through PyYAML."""
    content = message.content
    timestamp = message.timestamp
    if (
        message.role in _ROLES
        and message.reasoning is None
        and message.error is None
        and not message.interrupted
        and isinstance(content, str)
        and type(timestamp) is datetime  # a subclass might write itself another way
    ):
        # What _dump_record writes for such a message, without building its mapping.
        if _PLAIN.fullmatch(content) and content.lower() not in _NOT_PLAIN:
            scalar = content
        elif content.isascii() and content.isprintable():  # as _PRINTABLE_ASCII
            scalar = "'" + content.replace("'", "''") + "'"
        else:
            return _dump_record(message)
        stamp = _isoformat(timestamp)
        return f"- role: {message.role}\n  content: {scalar}\n  timestamp: '{stamp}'\n"
    return _dump_record(message)


def _dump_record(message: Message) -> str:
    """`dump_message` for any message, through PyYAML unless every value is simple."""
    mapping = _message_mapping(message)
    lines = []
    for key, value in mapping.items():
        scalar = "true" if value is True else _simple_scalar(value)
        if scalar is None:
            return _dump([mapping])
        lines.append(f"{key}: {scalar}\n")
    return "- " + "  ".join(lines)


# Text YAML reads back as the same string when written plain: a letter first, no
# characters that YAML gives a meaning to, no trailing space, and not a YAML 1.1 boolean
# or null word.
_PLAIN = re.compile(
    r"[A-Za-z][A-Za-z0-9 ,.!?()/_+=;$%^*'\"-]*[A-Za-z0-9,.!?()/_+=;$%^*'\"-]|[A-Za-z]"
)
_NOT_PLAIN = frozenset(("yes", "no", "y", "n", "true", "false", "on", "off", "null"))
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def _simple_scalar(value: object) -> str | None:
    """``value`` as a one-line YAML scalar, or None when PyYAML should write it."""
    if not isinstance(value, str):
        return None
    if _PLAIN.fullmatch(value) and value.lower() not in _NOT_PLAIN:
        return value
    if _PRINTABLE_ASCII.fullmatch(value):
        return "'" + value.replace("'", "''") + "'"  # single quotes escape only themselves
    return None


# The last UTC minute formatted, as (year, month, day, hour, minute) and its
# "2024-01-15T10:25:" text: messages come in time order, so most share it. One tuple,
# replaced whole, so a thread reading it never sees a key with another minute's text.
_last_minute: tuple[tuple[int, int, int, int, int], str] = ((0, 0, 0, 0, 0), "")


def _isoformat(timestamp: datetime) -> str:
    """``timestamp.isoformat()``, faster for a UTC time with microseconds."""
    microsecond = timestamp.microsecond
    if timestamp.tzinfo is not UTC or not microsecond:
        return timestamp.isoformat()  # without microseconds it has no fraction either
    global _last_minute
    minute = (timestamp.year, timestamp.month, timestamp.day, timestamp.hour, timestamp.minute)
    key, prefix = _last_minute
    if minute != key:
        prefix = timestamp.isoformat()[:17]
        _last_minute = minute, prefix
    # %-formatting: here about half the time of the same f-string.
    return "%s%02d.%06d+00:00" % (prefix, timestamp.second, microsecond)  # noqa: UP031


def dump_trailer(ended_at: datetime, reason: EndReason) -> str:
    return f"ended_at: '{ended_at.isoformat()}'\nend_reason: {reason}\n"


def dump_dialog(dialog: Dialog) -> str:
    parts = [dump_header(dialog.user_id, dialog.session_id, dialog.started_at, dialog.epoch)]
    parts.extend(dump_message(message) for message in dialog.messages)
    if dialog.ended_at is not None and dialog.end_reason is not None:
        parts.append(dump_trailer(dialog.ended_at, dialog.end_reason))
    return "".join(parts)


def parse_dialog(text: str, path: Path) -> Dialog:
    """Read a dialog file's text; a torn last record is dropped with a warning.

    Raises:
        CorruptDialogError: the file is not a dialog (naming ``path``).
    """
    return parse_dialog_checked(text, path)[0]


def parse_dialog_checked(text: str, path: Path) -> tuple[Dialog, bool]:
    """`parse_dialog`, and whether the text is whole: False when a crash left something to
    cut off (a torn record or trailer, a zero-filled tail) before anything is appended."""
    stripped = text.rstrip("\x00")  # a crash may leave a zero-filled tail behind the last write
    whole = len(stripped) == len(text)
    text = stripped
    try:
        document = yaml.load(text, Loader=_Loader)  # the safe C loader
    except _LOAD_ERRORS:
        document = None
    if isinstance(document, dict) and text.endswith("\n"):
        records = document.get("messages")
        if isinstance(records, list) and records and not _is_whole(records):
            _warn_torn(path)
            records.pop()
            whole = False
        return _dialog_from_mapping(document, path), whole
    return _parse_record_by_record(text, path), False


def _is_whole(records: list[Any]) -> bool:
    last = records[-1]
    return isinstance(last, dict) and "timestamp" in last


def _warn_torn(path: Path) -> None:
    logger.warning("%s: dropped a torn last message, left by an interrupted write", path)


def _parse_record_by_record(text: str, path: Path) -> Dialog:
    """The slow path, for a file whose tail was torn: parse header and records apart."""
    starts = [match.start() for match in _RECORD_START.finditer(text)]
    header_end = starts[0] if starts else len(text)
    header = _load_mapping(text[:header_end], path)
    records: list[str] = []
    trailer = ""
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(text)
        chunk = text[start:end]
        trailer_at = _TOP_LEVEL_LINE.search(chunk)
        if trailer_at is not None:
            chunk, trailer = chunk[: trailer_at.start()], chunk[trailer_at.start() :]
        records.append(chunk)
    messages: list[Any] = []
    for index, chunk in enumerate(records):
        is_last = index == len(records) - 1 and not trailer
        try:
            parsed = yaml.load(chunk, Loader=_Loader)
            whole = chunk.endswith("\n") and isinstance(parsed, list) and _is_whole(parsed)
        except _LOAD_ERRORS:
            whole = False
        if whole:
            messages.extend(parsed)
        elif is_last:
            _warn_torn(path)
        else:
            raise CorruptDialogError(path, f"message {index + 1} is not a readable message")
    header["messages"] = messages
    if trailer:
        ending = _whole_trailer(trailer)
        if ending is None:
            logger.warning("%s: dropped a torn end-of-session record", path)
        else:
            header.update(ending)
    return _dialog_from_mapping(header, path)


def _whole_trailer(text: str) -> dict[str, Any] | None:
    """The ``ended_at``/``end_reason`` lines, or None if a crash tore them."""
    if not text.endswith("\n"):
        return None
    try:
        document = yaml.load(text, Loader=_Loader)
    except _LOAD_ERRORS:
        return None
    if not isinstance(document, dict) or document.get("end_reason") not in END_REASONS:
        return None
    return document


def _load_mapping(text: str, path: Path) -> dict[str, Any]:
    try:
        document = yaml.load(text, Loader=_Loader)
    except _LOAD_ERRORS as exc:
        raise CorruptDialogError(path, f"not valid YAML ({_first_line(exc)})") from exc
    if not isinstance(document, dict):
        raise CorruptDialogError(path, "expected a YAML mapping with user_id and messages")
    return document


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _dialog_from_mapping(document: dict[str, Any], path: Path) -> Dialog:
    try:
        user_id = _text(document, "user_id")
        session_id = _text(document, "session_id")
        started_at = _time(document["started_at"])
        raw_messages = document.get("messages") or []
        if not isinstance(raw_messages, list):
            raise ValueError("messages must be a list")
        messages = [_message(raw) for raw in raw_messages]
        ended_at = _time(document["ended_at"]) if document.get("ended_at") else None
        reason = document.get("end_reason")
        if reason is not None and reason not in END_REASONS:
            raise ValueError(f"unknown end_reason {reason!r}")
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CorruptDialogError(path, detail) from exc
    if ended_at is not None and reason is None:
        reason = "recovered"
    epoch = document.get("epoch")
    return Dialog(
        user_id=user_id,
        session_id=session_id,
        started_at=started_at,
        messages=messages,
        ended_at=ended_at,
        end_reason=cast(EndReason | None, reason),
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
    )


def _text(document: dict[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str | int):
        raise ValueError(f"{key} must be text")
    return str(value)


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"expected an ISO 8601 time, got {value!r}")


def _message(raw: Any) -> Message:
    if not isinstance(raw, dict):
        raise ValueError("each message must be a mapping with role, content and timestamp")
    role = raw["role"]
    if role not in _ROLES:
        raise ValueError(f"unknown message role {role!r}")
    content = raw["content"]
    if content is None:
        content = ""
    elif not isinstance(content, str):
        content = str(content)
    reasoning = raw.get("reasoning")
    error = raw.get("error")
    return Message(
        role=cast(Role, role),
        content=content,
        timestamp=_time(raw["timestamp"]),
        interrupted=bool(raw.get("interrupted", False)),
        reasoning=None if reasoning is None else str(reasoning),
        error=None if error is None else str(error),
    )
