"""kill -9 at random moments: every file loads, and no acknowledged message is lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatsession import ChatServer, Settings
from chatsession.storage.files import YamlDialogStore

WORKER = Path(__file__).with_name("crash_worker.py")
USERS = ("alice", "bob", "../carol")


def _run_and_kill(data: Path, durability: str, seconds: float) -> list[tuple[int, str]]:
    """Start the worker, let it chat for ``seconds``, SIGKILL it; return what it acked."""
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(data), durability],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    try:
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(seconds)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        output, _ = worker.communicate(timeout=10)
    acked = []
    for line in output.splitlines():
        if line.startswith("ack "):
            _, number, user = line.split(" ", 2)
            acked.append((int(number), user))
    return acked


async def _stored_texts(data: Path, user: str) -> list[str]:
    store = YamlDialogStore(data)
    texts: list[str] = []
    for summary in await store.list_archives(user):
        dialog = await store.load_archive(user, summary.archive_id)
        texts += [m.content for m in dialog.messages if m.role == "user"]
    return texts


@pytest.mark.timeout(120)
@pytest.mark.parametrize("durability", ["never", "batch", "always"])
async def test_kill_9_loses_no_acknowledged_message(durability: str, tmp_path: Path) -> None:
    """After kill -9 and a restart, each acked message is in exactly one archive."""
    rng = random.Random(durability)
    for run in range(4):
        data = tmp_path / f"run{run}"
        acked = await asyncio.to_thread(_run_and_kill, data, durability, rng.uniform(0.2, 0.6))
        assert acked, "the worker acknowledged nothing before it was killed"
        async with ChatServer(Settings(chat_model="echo", data_dir=data)) as chat:
            for user in USERS:
                assert await chat.get_current_dialog(user) is None  # recovered at start
        for user in USERS:
            stored = await _stored_texts(data, user)
            assert len(stored) == len(set(stored)), f"{user}: a message is stored twice"
            prefixes = {text.split(" ", 1)[0] for text in stored}
            for number, acked_user in acked:
                if acked_user == user:
                    assert f"{user}-message-{number}" in prefixes, f"lost {user} #{number}"
