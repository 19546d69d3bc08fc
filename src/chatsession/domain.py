"""Plain data: messages, dialogs, session snapshots and events. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from chatsession._types import EndReason, Role

__all__ = [
    "ArchiveSummary",
    "Chunk",
    "Dialog",
    "Message",
    "Reasoning",
    "SessionEvent",
    "SessionInfo",
    "utc_now",
]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A piece of the model's reasoning, streamed apart from the answer.

    A reply streams as `Chunk` values: ``str`` for the answer's text, `Reasoning` for the
    model's thinking (only when reasoning was asked for and the model offers it).
    """

    text: str


Chunk = str | Reasoning


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a dialog.

    Attributes:
        role: ``"user"``, ``"assistant"`` or ``"system"``.
        content: The text.
        timestamp: When the message was stored (UTC).
        interrupted: True for a reply whose stream was cancelled or failed midway; the
            content is what was produced before that.
        reasoning: The model's reasoning for this reply, kept apart from ``content`` and
            never sent back to the model.
        error: Why a whole reply is not what was asked for (such as JSON that does not
            parse), or None.
    """

    role: Role
    content: str
    timestamp: datetime = field(default_factory=utc_now)
    interrupted: bool = False
    reasoning: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Dialog:
    """A conversation: the current one of a session, or an archived one."""

    user_id: str
    session_id: str
    started_at: datetime
    messages: list[Message] = field(default_factory=list)
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    # The epoch (fencing token) of the owner that last took the dialog for writing; stores
    # keep it, a reader may ignore it.
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    """One line of a user's archive listing."""

    archive_id: str
    session_id: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    message_count: int
    first_words: str = ""  # the start of the first user message


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of one user's session."""

    user_id: str
    session_id: str
    started_at: datetime
    last_activity: datetime
    is_active: bool
    connections: int


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """What ``session_event`` handlers receive.

    ``type`` is one of ``session_started``, ``session_ended``, ``connection_opened``,
    ``connection_closed``, ``message_stored``.
    """

    type: str
    user_id: str
    session_id: str
    at: datetime = field(default_factory=utc_now)
    reason: EndReason | None = None
    archive_id: str | None = None

    def as_frame(self) -> dict[str, object]:
        """The event as a ``session_event`` frame, as connections receive it."""
        frame: dict[str, object] = {
            "type": "session_event",
            "event": self.type,
            "userId": self.user_id,
            "sessionId": self.session_id,
            "at": self.at.isoformat(),
        }
        if self.reason is not None:
            frame["reason"] = self.reason
        if self.archive_id is not None:
            frame["archiveId"] = self.archive_id
        return frame
