"""The `SessionRegistry` contract: what every instance of a cluster agrees on about sessions.

The session manager keeps the sessions it *owns*: their dialogs, their locks, their
timers. The registry holds what all instances share: which users have a session, who owns
it (the one instance that may write its dialog), its connections on every instance, its
last activity, the per-user limits, and where to deliver a user's frames. Two backends
follow the contract: `LocalRegistry`, the single process (no other instance exists), and
`RedisRegistry`, several processes on several machines.

Ownership is a lease with an epoch: an instance writes a user's dialog only while it owns
the session; taking a session from another instance bumps the epoch, and the previous owner
gives it up first (a handover) or is dead (its heartbeat expired, and it stopped writing
before that happened). The epoch is a fencing token: it only grows for a user, across
sessions and restarts (it is at least the registry's clock in milliseconds), every write
of the dialog carries it, and the store refuses one older than it has seen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from chatsession._types import EndReason

__all__ = [
    "Adopted",
    "Claim",
    "EndCheck",
    "Inbox",
    "Record",
    "Route",
    "SessionRegistry",
]


@dataclass(frozen=True, slots=True)
class Route:
    """The other instances where a user has connections, and SSE channels among them."""

    connections: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()


NO_ROUTE = Route()


@dataclass(frozen=True, slots=True)
class Record:
    """One user's session as the whole cluster sees it."""

    user_id: str
    session_id: str
    started_at: datetime
    last_activity: datetime
    connections: int
    owner: str
    route: Route = NO_ROUTE
    epoch: int = 0  # the owner's fencing token; grows at every change of owner


@dataclass(frozen=True, slots=True)
class Claim:
    """This instance now owns the session.

    ``created``: the session is new. ``moved``: another instance wrote its dialog before
    (load it again before appending).
    """

    record: Record
    created: bool = False
    moved: bool = False


@dataclass(frozen=True, slots=True)
class EndCheck:
    """Whether an end may go ahead; if not, why (``gone``, ``connected``, ``active``)."""

    ok: bool
    why: str = ""
    last_activity: datetime | None = None


@dataclass(frozen=True, slots=True)
class Adopted:
    """A session an instance that died leaves behind: taken over by this instance, or
    (``record.owner`` is another instance) one whose last connections were on the dead one.

    ``pending`` is the end it was going through (``ending``), or the reason to end it with
    once the disconnect grace has passed; None when it simply goes on (an HTTP session, or
    one with connections elsewhere).
    """

    record: Record
    pending: EndReason | None = None
    ending: bool = False


@dataclass(slots=True)
class Inbox:
    """What the registry calls on this instance when another instance asks something of it.

    ``release(user_id, to)``: hand the user's session over to instance ``to``.
    ``take(user_id)``: another instance handed the user's session to this one.
    ``deliver(user_id, frame)``: a frame for the user's connections here.
    ``adopt(sessions)``: sessions this instance took over from a dead one.
    ``lost()``: this instance was taken for dead; everything it owned may be owned
    elsewhere now.
    """

    release: Callable[[str, str], Awaitable[None]]
    take: Callable[[str], Awaitable[None]]
    deliver: Callable[[str, dict[str, Any]], None]
    adopt: Callable[[list[Adopted]], Awaitable[None]]
    lost: Callable[[], Awaitable[None]]
    extra: dict[str, Any] = field(default_factory=dict)


class SessionRegistry(Protocol):
    """Sessions as every instance sees them; see the module docstring.

    Every method may raise `RegistryUnavailable` when the shared state cannot be reached,
    and nothing else but the errors it names.
    """

    instance_id: str
    shared: bool  # False: this process is the only instance

    async def open(self, inbox: Inbox) -> None:
        """Join the cluster (never fails for an unreachable backend: it retries)."""

    async def aclose(self) -> None:
        """Leave the cluster. Idempotent."""

    async def find(self, user_id: str) -> Record | None:
        """The user's session, or None."""

    async def ensure(self, user_id: str, session_id: str | None) -> tuple[Record, bool]:
        """The user's session, started (owned here) if there is none; True if started."""

    async def claim(self, user_id: str, session_id: str | None, *, create: bool) -> Claim | None:
        """Own the user's session: start it (with ``create``), take it from a dead owner, or
        have a live owner hand it over. None: the user has no session (and not ``create``).
        """

    async def release(self, user_id: str, to: str = "") -> None:
        """Stop owning the user's session; it goes on, owned by instance ``to`` (told so),
        or by whichever instance claims it next."""

    async def touch(self, user_id: str) -> bool:
        """Mark the user's session active now, wherever it is owned; False if it has none."""

    async def begin_turn(self, user_id: str, rate_limit: int) -> Route:
        """Count one chat message against ``rate_limit`` a minute (0: none) and mark the
        session active; `TooManyRequests` if over the limit, `OwnershipLost` if another
        instance owns the session now."""

    async def begin_end(
        self, user_id: str, reason: EndReason, *, idle_for: float | None, unconnected: bool
    ) -> EndCheck:
        """Start ending an owned session if it is still due: with ``unconnected``, only if
        no connection is open on another instance (nor here, unless ``reason`` is
        ``shutdown``); with ``idle_for``, only if idle that long. Until `finish_end` (or
        `abort_end`), others wait to start a new one."""

    async def finish_end(self, user_id: str) -> Route:
        """The session has ended (its dialog archived): forget it."""

    async def abort_end(self, user_id: str) -> None:
        """The end failed (archiving failed): the session goes on."""

    async def connect(
        self, user_id: str, session_id: str | None, *, limit: int, channel: bool
    ) -> tuple[Record, bool]:
        """Count one connection here (a ``channel`` also gets the user's frames), starting
        the session if there is none (True if started); `TooManyRequests` past ``limit``
        open at once across the cluster (0: none)."""

    async def disconnect(self, user_id: str, *, channel: bool, failed: bool) -> Record | None:
        """One connection here closed; the session after it (None if it has ended)."""

    async def count(self) -> int:
        """Active sessions in the whole cluster."""

    async def records(self) -> list[Record]:
        """Every active session in the cluster."""

    def deliver(self, instances: tuple[str, ...], user_id: str, frame: dict[str, Any]) -> None:
        """Send ``frame`` to the user's connections on ``instances`` (in the background)."""

    def check_writable(self, user_id: str, epoch: int) -> None:
        """Raise unless this instance may write the user's dialog at ``epoch`` right now:
        `FencedOff` if it no longer owns the user at that epoch (handed over, taken for
        dead, taken over), `RegistryUnavailable` if it could not renew its lease in time
        (others may be about to take its sessions). No I/O: called before every write."""

    def status(self) -> dict[str, Any]:
        """What an operator needs to know of the registry (for ``/health``)."""
