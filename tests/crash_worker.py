"""A process that chats and archives without pause until it is killed (see test_crash).

Usage: ``python crash_worker.py DATA_DIR DURABILITY``. After each chat's reply has been
stored it prints ``ack <text>``; after each archive, ``archived <id>``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from chatsession import ChatServer, Settings


async def main(data_dir: Path, durability: str) -> None:
    settings = Settings(chat_model="echo", data_dir=data_dir, durability=durability)  # type: ignore[arg-type]
    async with ChatServer(settings) as chat:
        print("ready", flush=True)
        number = 0
        while True:
            for user in ("alice", "bob", "../carol"):
                text = f"{user}-message-{number} " + "word " * (number % 7) + "\nline two"
                async for _ in chat.chat_with_history(user, text):
                    pass
                print(f"ack {number} {user}", flush=True)
            if number % 5 == 4:
                archive_id = await chat.end_user_session("alice")
                print(f"archived {archive_id}", flush=True)
            number += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
