"""User ids to directory names, so that no id can name a path outside ``DATA_DIR``.

An id made only of letters, digits and ``_ . @ + -`` that does not start with ``.`` or
``-`` names its directory as it is (``alice``, ``bob@example.com``). Any other id is
encoded, reversibly: ``~`` followed by the lower-case base32 of its UTF-8 bytes, so
``../etc`` becomes ``~fyxc6zlumm`` and ``auth0|42`` becomes ``~mf2xi2bqpq2de``. ``~``
never starts a plain name, so the two forms cannot collide.

Refused with `InvalidUserId`: the empty id, ids longer than 128 UTF-8 bytes, and ids
holding control characters (NUL, newlines and the like).
"""

from __future__ import annotations

import base64
import re

from chatsession._exceptions import InvalidUserId

MAX_USER_ID_BYTES = 128
_PLAIN = re.compile(r"[A-Za-z0-9_@+][A-Za-z0-9_.@+-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if chatsession can store it, else raise `InvalidUserId`."""
    if not isinstance(user_id, str):
        raise InvalidUserId(f"a user id must be a string, got {type(user_id).__name__}")
    if not user_id:
        raise InvalidUserId("a user id must not be empty")
    try:
        encoded = user_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUserId("a user id must be valid Unicode text") from None
    if len(encoded) > MAX_USER_ID_BYTES:
        raise InvalidUserId(f"a user id must be at most {MAX_USER_ID_BYTES} bytes long")
    if _CONTROL.search(user_id):
        raise InvalidUserId("a user id must not contain control characters")
    return user_id


def directory_name(user_id: str) -> str:
    """The directory name for a valid user id: the id itself, or its ``~`` encoding."""
    if _PLAIN.fullmatch(check_user_id(user_id)):
        return user_id
    encoded = base64.b32encode(user_id.encode("utf-8"))
    return "~" + encoded.decode("ascii").rstrip("=").lower()


def user_id_from_directory(name: str) -> str | None:
    """The user id a directory name stands for, or None for a name chatsession never makes."""
    if _PLAIN.fullmatch(name):
        return name
    if not name.startswith("~"):
        return None
    body = name[1:].upper()
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8)).decode("utf-8")
    except ValueError:
        return None
