"""The history sent to a model: system prompt, oldest-first trimming, no reasoning."""

from __future__ import annotations

import pytest

from chatsession import Message, ModelContextLengthError
from chatsession.models._history import (
    JSON_INSTRUCTION,
    EstimatedTokens,
    fit_history,
    history_budget,
)


class WordTokens:
    """One token a word: easy to reason about in tests."""

    def count(self, text: str) -> int:
        return len(text.split())

    def keep_tail(self, text: str, tokens: int) -> str:
        return " ".join(text.split()[-tokens:])


def dialog(turns: int, words: int = 10) -> list[Message]:
    messages = []
    for turn in range(turns):
        messages.append(Message("user", " ".join([f"q{turn}"] * words)))
        messages.append(Message("assistant", " ".join([f"a{turn}"] * words), reasoning="hmm"))
    messages.append(Message("user", "last question"))
    return messages


def test_everything_is_sent_when_it_fits() -> None:
    """A short dialog goes whole, after the system prompt, as role/content pairs."""
    sent = fit_history(dialog(2), system_prompt="Be brief.", budget=1000, tokens=WordTokens())
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in sent[1:]] == ["user", "assistant"] * 2 + ["user"]
    assert sent[-1] == {"role": "user", "content": "last question"}


def test_reasoning_is_never_sent_back() -> None:
    """A stored reply's reasoning stays out of the request; only its content goes."""
    sent = fit_history(dialog(3), system_prompt="", budget=None, tokens=WordTokens())
    assert all(set(m) == {"role", "content"} for m in sent)
    assert not any("hmm" in m["content"] for m in sent)


def test_oldest_messages_are_left_out_first() -> None:
    """Past the budget, the oldest turns go and the newest stay, in order."""
    messages = dialog(20)
    sent = fit_history(messages, system_prompt="Be brief.", budget=100, tokens=WordTokens())
    assert sent[0]["role"] == "system"
    assert sent[-1]["content"] == "last question"
    assert sum(WordTokens().count(m["content"]) + 8 for m in sent) <= 100
    contents = [m.content for m in messages]
    kept = [m["content"] for m in sent[1:]]
    assert kept == contents[-len(kept) :]
    assert len(messages) == 41  # the dialog itself is untouched


def test_the_kept_history_starts_with_a_user_message() -> None:
    """Trimming never leaves a reply first: chat templates want a question before it."""
    for budget in range(40, 120, 3):
        sent = fit_history(dialog(10), system_prompt="", budget=budget, tokens=WordTokens())
        assert sent[0]["role"] == "user"


def test_a_single_overlong_message_keeps_its_end() -> None:
    """A new message longer than the window is cut to its end instead of failing."""
    long = Message("user", " ".join(f"w{i}" for i in range(500)) + " question?")
    sent = fit_history([long], system_prompt="", budget=50, tokens=WordTokens())
    assert sent[0]["content"].endswith("w499 question?")
    assert WordTokens().count(sent[0]["content"]) <= 50 - 8


def test_json_output_adds_an_instruction_to_the_system_prompt() -> None:
    """With json_output the system message asks for a JSON object."""
    sent = fit_history(
        dialog(0), system_prompt="Be brief.", budget=None, tokens=WordTokens(), json_output=True
    )
    assert sent[0] == {"role": "system", "content": f"Be brief.\n\n{JSON_INSTRUCTION}"}


def test_a_system_prompt_longer_than_the_window_is_a_clear_error() -> None:
    """A system prompt that cannot fit raises ModelContextLengthError naming the setting."""
    with pytest.raises(ModelContextLengthError, match="SYSTEM_PROMPT"):
        fit_history(dialog(1), system_prompt="x " * 200, budget=50, tokens=WordTokens())


def test_budget_keeps_room_for_the_reply() -> None:
    """The budget is the window less the reply; a reply filling the window is an error."""
    assert history_budget(4096, 512) < 4096 - 512
    with pytest.raises(ModelContextLengthError, match="MODEL_MAX_TOKENS"):
        history_budget(512, 600)


def test_the_estimate_over_counts_english() -> None:
    """Without a tokenizer, the estimate counts more tokens than English text holds."""
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert EstimatedTokens().count(text) >= len(text) / 4
    assert EstimatedTokens().count(EstimatedTokens().keep_tail(text, 10)) <= 10
