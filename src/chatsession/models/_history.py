"""The conversation sent to a model: the system prompt, then the newest messages that fit.

The stored dialog is never changed here: this builds the request only. Messages are left
out oldest first until the rest fits the model's context window, less the room kept for
the reply, so a long dialog never makes a chat fail. Reasoning is never sent back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chatsession._exceptions import ModelContextLengthError
from chatsession.domain import Message

__all__ = [
    "JSON_INSTRUCTION",
    "EstimatedTokens",
    "PromptMessage",
    "TokenCounter",
    "fit_history",
    "history_budget",
]

PromptMessage = dict[str, str]

# What a chat template adds around each message (role markers, separators), counted
# generously: ChatML spends 4-5 tokens, Llama 3 about 5.
MESSAGE_OVERHEAD = 8
# Kept free beyond the reply: the template's opening and the assistant's header.
SAFETY_MARGIN = 16

JSON_INSTRUCTION = "Reply with one JSON object and nothing else."


class TokenCounter(Protocol):
    """Counts tokens the way a model does, and shortens a text to a number of tokens."""

    def count(self, text: str) -> int: ...

    def keep_tail(self, text: str, tokens: int) -> str: ...


class EstimatedTokens:
    """A conservative count for a model whose tokenizer is not at hand.

    One token per three bytes of UTF-8: English averages about four characters a token,
    so this over-counts it by a third; scripts of three-byte characters come out at one
    token a character.
    """

    BYTES_PER_TOKEN = 3

    def count(self, text: str) -> int:
        return -(-len(text.encode("utf-8")) // self.BYTES_PER_TOKEN)

    def keep_tail(self, text: str, tokens: int) -> str:
        encoded = text.encode("utf-8")
        return encoded[-tokens * self.BYTES_PER_TOKEN :].decode("utf-8", errors="ignore")


def history_budget(context_window: int, max_tokens: int) -> int:
    """Tokens the prompt may use in ``context_window`` while keeping room for the reply.

    Raises:
        ModelContextLengthError: the reply alone would fill the window.
    """
    budget = context_window - max_tokens - SAFETY_MARGIN
    if budget < MESSAGE_OVERHEAD * 2:
        raise ModelContextLengthError(
            f"a reply of up to {max_tokens} tokens (MODEL_MAX_TOKENS) leaves no room for the "
            f"conversation in the model's {context_window}-token context window: lower "
            "MODEL_MAX_TOKENS, or raise MODEL_CONTEXT if the model allows more"
        )
    return budget


def fit_history(
    messages: Sequence[Message],
    *,
    system_prompt: str,
    budget: int | None,
    tokens: TokenCounter,
    json_output: bool = False,
) -> list[PromptMessage]:
    """The messages to send: the system prompt, then the newest messages that fit.

    Args:
        messages: The dialog, oldest first, ending with the user's new message.
        system_prompt: Sent first when not empty.
        budget: Tokens the prompt may use (see `history_budget`); None sends everything.
        tokens: Counts tokens as the model does.
        json_output: Add an instruction to answer with a JSON object.

    Raises:
        ModelContextLengthError: the system prompt alone does not fit.
    """
    parts = [system_prompt, JSON_INSTRUCTION if json_output else ""]
    system = "\n\n".join(part for part in parts if part)
    prompt: list[PromptMessage] = [{"role": "system", "content": system}] if system else []
    if budget is None:
        return prompt + [{"role": m.role, "content": m.content} for m in messages]
    remaining = budget - (tokens.count(system) + MESSAGE_OVERHEAD if system else 0)
    if remaining <= MESSAGE_OVERHEAD:
        raise ModelContextLengthError(
            f"the system prompt takes more than the {budget} tokens the model's context "
            "window leaves for the conversation: shorten SYSTEM_PROMPT or raise MODEL_CONTEXT"
        )
    kept: list[PromptMessage] = []
    for message in reversed(messages):
        cost = tokens.count(message.content) + MESSAGE_OVERHEAD
        if cost > remaining:
            break
        kept.append({"role": message.role, "content": message.content})
        remaining -= cost
    if not kept and messages:
        # The newest message alone is too long: send its end, where a question usually is.
        newest = messages[-1]
        kept.append(
            {
                "role": newest.role,
                "content": tokens.keep_tail(newest.content, remaining - MESSAGE_OVERHEAD),
            }
        )
    kept.reverse()
    # Chat templates that insist on user/assistant turns reject a reply with no question.
    while len(kept) > 1 and kept[0]["role"] == "assistant":
        kept.pop(0)
    return prompt + kept
