"""Races, run hundreds of times with random timing: exactly one archive per session.

Each round lets a user's triggers collide — connections closing normally or with an error,
chats in flight, explicit ends, expiry sweeps — and then checks the invariants:

- every session that started ended exactly once (one ``session_ended`` each);
- every message sent is stored exactly once, whole, across the archives, and a user's
  message is always followed by its reply in the same dialog.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from chatsession import (
    ChatServer,
    ChatSessionError,
    DialogStore,
    ServerClosedError,
    SessionEvent,
    Settings,
)
from chatsession.models import EchoModel
from tests.conftest import ServerFactory

ROUNDS = 200
USERS = 4


async def _pause(rng: random.Random) -> None:
    await asyncio.sleep(rng.choice((0, 0, 0.0001, 0.0005, 0.001, 0.002)))


async def _chat(chat: ChatServer, user: str, text: str, rng: random.Random) -> None:
    await _pause(rng)
    try:
        async for _ in chat.chat_with_history(user, text):
            pass
    except ChatSessionError:
        pass


async def _connection(chat: ChatServer, user: str, rng: random.Random, fail: bool) -> None:
    await _pause(rng)
    try:
        async with chat.connect(user) as connection:
            await _pause(rng)
            if fail:
                connection.fail()
    except ChatSessionError:
        pass


async def _round(chat: ChatServer, user: str, number: int, rng: random.Random) -> list[str]:
    texts = [f"{user}-r{number}-m{i}" for i in range(rng.randint(1, 3))]
    triggers = [_chat(chat, user, text, rng) for text in texts]
    triggers += [_connection(chat, user, rng, fail=rng.random() < 0.5) for _ in range(2)]
    triggers.append(_end(chat, user, rng))
    triggers.append(_end(chat, user, rng))
    triggers.append(_sweep(chat, rng))
    rng.shuffle(triggers)
    await asyncio.gather(*triggers)
    return texts


async def _end(chat: ChatServer, user: str, rng: random.Random) -> None:
    await _pause(rng)
    await chat.end_user_session(user)


async def _sweep(chat: ChatServer, rng: random.Random) -> None:
    await _pause(rng)
    await chat.expire_idle_sessions()


@pytest.mark.timeout(120)
async def test_colliding_end_triggers_archive_each_session_once(
    server: ServerFactory, tmp_path: Path
) -> None:
    """Close, error, timeout, explicit end and shutdown racing: one archive, one event."""
    rng = random.Random(20261125)
    started: Counter[str] = Counter()
    ended: Counter[str] = Counter()
    archive_ids: list[str | None] = []
    sent: dict[str, list[str]] = {}

    def on_event(event: SessionEvent) -> None:
        if event.type == "session_started":
            started[event.session_id] += 1
        elif event.type == "session_ended":
            ended[event.session_id] += 1
            archive_ids.append(event.archive_id)

    model = EchoModel(delay=0.0002)
    async with server(model=model, session_timeout=0.001, disconnect_grace=0) as chat:
        chat.on("session_event", on_event)

        async def user_rounds(user: str) -> None:
            sent[user] = []
            for number in range(ROUNDS // USERS):
                sent[user] += await _round(chat, user, number, rng)

        await asyncio.gather(*(user_rounds(f"u{n}") for n in range(USERS)))
        archives = {user: await _all_messages(chat, user) for user in sent}

    assert started, "no session started"
    assert started == ended, "a session ended twice or never"
    assert set(started.values()) == {1}
    for user, texts in sent.items():
        stored = archives[user]
        user_messages = [content for role, content in stored if role == "user"]
        assert sorted(user_messages) == sorted(texts), f"{user}: lost or duplicated"
        for index, (role, content) in enumerate(stored):
            if role == "user":
                assert stored[index + 1] == ("assistant", f"echo: {content}")


async def _all_messages(chat: ChatServer, user: str) -> list[tuple[str, str]]:
    messages: list[tuple[str, str]] = []
    for summary in await chat.list_archives(user):
        dialog = await chat.get_archive(user, summary.archive_id)
        messages += [(m.role, m.content) for m in dialog.messages]
    current = await chat.get_current_dialog(user)
    if current is not None:
        messages += [(m.role, m.content) for m in current.messages]
    return messages


@pytest.mark.timeout(120)
async def test_message_racing_its_archive_lands_in_exactly_one_dialog(
    server: ServerFactory,
) -> None:
    """A chat sent as the session ends is whole in the archive or in the next dialog."""
    rng = random.Random(7)
    async with server(model=EchoModel(delay=0.0001)) as chat:
        for number in range(300):
            user = f"racer{number % 3}"
            text = f"message-{number}"
            await _chat(chat, user, "first", rng)
            before = {summary.archive_id for summary in await chat.list_archives(user)}
            await asyncio.gather(
                _end(chat, user, rng), _chat(chat, user, text, rng), _end(chat, user, rng)
            )
            homes = []
            for summary in await chat.list_archives(user):
                if summary.archive_id in before:
                    continue
                dialog = await chat.get_archive(user, summary.archive_id)
                if any(m.content == text for m in dialog.messages):
                    homes.append(summary.archive_id)
            current = await chat.get_current_dialog(user)
            if current is not None and any(m.content == text for m in current.messages):
                homes.append("current")
            assert len(homes) == 1, f"{text} stored in {homes}"


@pytest.mark.timeout(120)
async def test_concurrent_explicit_ends_all_get_the_same_archive(server: ServerFactory) -> None:
    """Many end_user_session calls at once: one archive id, returned to the first caller."""
    async with server() as chat:
        for number in range(200):
            user = f"user{number}"
            async for _ in chat.chat_with_history(user, "hi"):
                pass
            results = await asyncio.gather(*(chat.end_user_session(user) for _ in range(5)))
            assert results[0] is not None
            assert [r for r in results[1:] if r is not None] in ([], [results[0]] * 4)
            assert len(await chat.list_archives(user)) == 1


@pytest.mark.timeout(120)
async def test_shutdown_racing_chats_and_closes_loses_nothing(
    server: ServerFactory, make_store: Callable[..., DialogStore], tmp_path: Path
) -> None:
    """Leaving the server while chats stream and connections close: all stored, once."""
    for attempt in range(30):
        rng = random.Random(attempt)
        data = tmp_path / f"run{attempt}"
        accepted: list[str] = []

        async def chat_once(
            chat: ChatServer, user: str, text: str, rng: random.Random = rng
        ) -> None:
            await _pause(rng)
            try:
                async for _ in chat.chat_with_history(user, text):
                    pass
            except ServerClosedError:
                return
            except asyncio.CancelledError:
                pass  # cancelled past the grace period: the partial reply is stored
            accepted.append(text)  # noqa: B023  # awaited within this iteration

        store = make_store(Settings(data_dir=data))
        async with server(model=EchoModel(delay=0.0005), data_dir=data, store=store) as chat:
            tasks = [asyncio.create_task(chat_once(chat, f"s{n}", f"text-{n}")) for n in range(10)]
            tasks += [
                asyncio.create_task(_connection(chat, f"s{n}", rng, fail=False)) for n in range(10)
            ]
            await _pause(rng)
        await asyncio.gather(*tasks)
        assert await store.users_with_current() == []  # the store the server closed
        for text in accepted:
            user = "s" + text.removeprefix("text-")
            summaries = await store.list_archives(user)
            found = [
                s.archive_id
                for s in summaries
                if any(
                    m.content == text
                    for m in (await store.load_archive(user, s.archive_id)).messages
                )
            ]
            assert len(found) == 1, f"{text}: {found}"
