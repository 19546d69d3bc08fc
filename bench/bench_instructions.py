"""Server CPU work per WebSocket round trip, counted in instructions under callgrind.

Run ``python -m bench instructions``. Wall-clock rates on a shared machine move with its
load; instruction counts do not, so this is the figure to compare two versions of the
server by. Each server runs under ``valgrind --tool=callgrind`` as a child process on
127.0.0.1; after a warm-up the counters are zeroed, a fixed number of round trips is run
(ten connections, one message at a time each), and the counters are dumped. Kernel work
(socket and file system calls) is not counted, only the server's own instructions.

The servers are those of ``bench_server``: bare echo (one frame back), bare echo sending a
chat reply's two frames, the least a stored reply takes, and the chat server (echo model,
batched fsync). Needs valgrind; without it the benchmark says so and reports nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from bench._timing import Verdict
from bench.bench_server import HOST, _open, _round_trip, _server

CONNECTIONS = 10
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


def _callgrind_control(action: str, pid: int) -> None:
    subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True)


async def _drive(port: int, mode: str, trips: int, pid: int) -> None:
    path = mode if mode in ("frames", "minimal") else "ws"
    url = f"ws://{HOST}:{port}/{path}"
    sockets = [await _open(url, f"user{i}", mode == "chat") for i in range(CONNECTIONS)]
    until_done = mode != "bare"

    async def run(count: int) -> None:
        async def one(ws: ClientConnection) -> None:
            for _ in range(count):
                await _round_trip(ws, until_done)

        await asyncio.gather(*(one(ws) for ws in sockets))

    await run(20)  # warm-up: sessions started, code paths taken once
    await asyncio.to_thread(_callgrind_control, "--zero", pid)
    await run(trips // CONNECTIONS)
    await asyncio.to_thread(_callgrind_control, "--dump", pid)
    await asyncio.gather(*(ws.close() for ws in sockets))


def count(mode: str, trips: int) -> float:
    """Instructions the server runs per round trip in ``mode`` (bare, frames, minimal, chat)."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "callgrind.out"
        wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={output}")
        kind = "chat" if mode == "chat" else "bare"
        # Starting Python under valgrind is slow.
        with _server(kind, Path(tmp) / "data", wrapper=wrapper, start_timeout=300) as server:
            process, port = server
            asyncio.run(_drive(port, mode, trips, process.pid))
        dumps = list(Path(tmp).glob("callgrind.out.*"))
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for the {mode} server")
        match = _TOTAL.search(max(dumps, key=lambda path: path.stat().st_mtime).read_text())
        if match is None:
            raise RuntimeError("no instruction total in the callgrind dump")
        return int(match.group(1)) / trips


def main(argv: Sequence[str] | None = None) -> list[Verdict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trips", type=int, default=2_000, help="round trips counted")
    args = parser.parse_args([] if argv is None else argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions: valgrind is not installed; nothing measured")
        return []
    counts = {mode: count(mode, args.trips) for mode in ("bare", "frames", "minimal", "chat")}
    bare = counts["bare"]
    names = {
        "bare": "bare echo (one frame back)",
        "frames": "bare echo sending a chat reply's 2 frames",
        "minimal": "the least a stored reply takes (parse, 2 appends, 2 frames)",
        "chat": "chat (echo model, batched fsync)",
    }
    print(f"server instructions per WebSocket round trip ({args.trips:,} round trips):")
    for mode, instructions in counts.items():
        print(f"  {names[mode]}: {instructions:,.0f} ({instructions / bare:.2f}x bare echo)")
    return []


if __name__ == "__main__":
    main(sys.argv[1:])
