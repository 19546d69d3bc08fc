"""Does the embedded model babble? llama.cpp's sampling defaults against chatsession's.

``python -m bench babble`` asks SmolLM2-135M (the ``local`` extra) a fixed set of everyday
questions twice, alternating, with the same seed per question:

- **before**: llama-cpp-python's own sampling defaults (temperature 0.2, top-p 0.95, no
  repeat penalty) and the old reply limit of 512 tokens;
- **after**: what `Settings` gives the local model by default.

For each side it reports how many replies **hit the token limit** (llama.cpp's
``finish_reason`` is ``length``) and how many **repeat themselves**: a reply repeats itself
when some run of four words (lower-cased, punctuation dropped) occurs three times or more
in it, the shape of "I love music. I love music. I love music." Also the median reply
length in tokens and the median time per reply. Counts, not timings, are the point:
timings on a shared machine are only indicative.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench._timing import machine_note, print_table, print_title
from chatsession import Settings
from chatsession.models import load_model
from chatsession.models.local import LocalModel

PROMPTS = [
    "Hi! How are you today?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book?",
    "What do you like about music?",
    "How can I sleep better?",
    "Tell me a fun fact about cats.",
    "What is a good way to start running?",
    "I'm bored. What could I do this afternoon?",
    "How do I make a cup of tea?",
    "What's the weather like on Mars?",
    "Give me a tip for saving money.",
    "Why do leaves change colour in autumn?",
    "What is your favourite season and why?",
    "How do I say thank you in Spanish?",
    "Write a short poem about the sea.",
    "What are some healthy snacks?",
    "How can I be more productive at work?",
    "Explain what a computer does, simply.",
    "What should I pack for a weekend trip?",
    "Tell me a joke.",
    "How do plants grow?",
    "What is a good gift for a friend who likes gardening?",
    "How do I keep my houseplants alive?",
    "What's the difference between a cold and the flu?",
]

# llama-cpp-python's defaults for create_chat_completion, with the old reply limit.
BEFORE = {"temperature": 0.2, "top_p": 0.95, "repeat_penalty": 1.0, "max_tokens": 512}

_WORD = re.compile(r"[a-z0-9']+")


def repeats_itself(text: str, run: int = 4, times: int = 3) -> bool:
    """Whether some ``run`` consecutive words occur ``times`` times or more in ``text``."""
    words = _WORD.findall(text.lower())
    runs = Counter(tuple(words[i : i + run]) for i in range(len(words) - run + 1))
    return any(count >= times for count in runs.values())


@dataclass
class Reply:
    text: str
    tokens: int
    hit_limit: bool
    seconds: float


def ask(llama: Any, prompt: str, seed: int, options: dict[str, Any]) -> Reply:
    started = time.perf_counter()
    result = llama.create_chat_completion(
        [{"role": "user", "content": prompt}], seed=seed, **options
    )
    seconds = time.perf_counter() - started
    choice = result["choices"][0]
    return Reply(
        text=choice["message"]["content"] or "",
        tokens=int(result["usage"]["completion_tokens"]),
        hit_limit=choice["finish_reason"] == "length",
        seconds=seconds,
    )


def summary(name: str, options: dict[str, Any], replies: Sequence[Reply]) -> list[str]:
    return [
        name,
        ", ".join(f"{key} {value:g}" for key, value in options.items()),
        f"{sum(r.hit_limit for r in replies)}/{len(replies)}",
        f"{sum(repeats_itself(r.text) for r in replies)}/{len(replies)}",
        f"{statistics.median(r.tokens for r in replies):.0f}",
        f"{statistics.median(r.seconds for r in replies):.1f} s",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench babble")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many to ask")
    parser.add_argument("--show", action="store_true", help="print every reply")
    args = parser.parse_args([] if argv is None else argv)

    model = load_model("local", Settings())
    assert isinstance(model, LocalModel)
    after: dict[str, Any] = {**model.sampling, "max_tokens": model.max_tokens}
    llama = model._load()  # the same weights and context chatsession serves with
    print_title("babble: SmolLM2-135M, llama.cpp's sampling defaults vs chatsession's")
    print(machine_note())
    replies: dict[str, list[Reply]] = {"before": [], "after": []}
    for seed, prompt in enumerate(PROMPTS[: args.prompts]):
        for side, options in (("before", BEFORE), ("after", after)):
            reply = ask(llama, prompt, seed, options)
            replies[side].append(reply)
            if args.show:
                flags = ("LIMIT " if reply.hit_limit else "") + (
                    "REPEATS " if repeats_itself(reply.text) else ""
                )
                print(f"--- {side} {flags}{prompt}\n{reply.text.strip()}\n")
    print_table(
        ["side", "sampling", "hit the limit", "repeat themselves", "median tokens", "median time"],
        [summary("before", BEFORE, replies["before"]), summary("after", after, replies["after"])],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
