"""CHAT_MODEL picks the model: auto, local, openai:<model>, echo; bad specs are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatsession import ConfigError, ModelAuthenticationError, ModelNotFoundError, Settings
from chatsession.models import EchoModel, load_model
from chatsession.models.local import LocalModel, bundled_weights
from chatsession.models.openai import OpenAIModel


async def test_auto_is_the_local_model_when_it_is_installed() -> None:
    """The default, auto, serves the bundled SmolLM2 when the local extra is installed."""
    model = load_model("auto", Settings())
    try:
        assert isinstance(model, LocalModel)
        assert model.path == bundled_weights()
        assert model.name == "local:SmolLM2-135M-Instruct.Q4_1"
    finally:
        await model.aclose()


def test_auto_falls_back_to_echo_without_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without llama-cpp-python, auto answers with the echo model instead of failing."""
    import chatsession.models.local as local

    monkeypatch.setattr(local, "local_model_available", lambda path=None: False)
    assert isinstance(load_model("auto", Settings()), EchoModel)


def test_default_setting_is_auto() -> None:
    """CHAT_MODEL defaults to auto."""
    assert Settings().chat_model == "auto"


async def test_local_threads_and_context_come_from_settings() -> None:
    """MODEL_THREADS and MODEL_CONTEXT reach the local model; unset, every core and 4096."""
    model = load_model("local", Settings(model_threads=1, model_context=1024))
    default = load_model("local", Settings())
    try:
        assert isinstance(model, LocalModel)
        assert isinstance(default, LocalModel)
        assert (model.threads, model.context_window) == (1, 1024)
        assert default.threads >= 1
        assert default.context_window == 4096
    finally:
        await model.aclose()
        await default.aclose()


def test_model_path_that_is_no_file_is_named(tmp_path: Path) -> None:
    """MODEL_PATH naming a missing file fails at start, naming the path."""
    with pytest.raises(ModelNotFoundError, match=r"MODEL_PATH='.*missing\.gguf' is not a file"):
        load_model("local", Settings(model_path=tmp_path / "missing.gguf"))


async def test_openai_spec_configures_the_endpoint() -> None:
    """openai:<model> takes the base URL, key and limits from settings."""
    settings = Settings(
        openai_base_url="http://127.0.0.1:9/v1", openai_api_key="k", model_max_tokens=99
    )
    model = load_model("openai:my-model", settings)
    try:
        assert isinstance(model, OpenAIModel)
        assert (model.model, model.base_url, model.max_tokens) == (
            "my-model",
            "http://127.0.0.1:9/v1",
            99,
        )
    finally:
        await model.aclose()


def test_openai_without_a_key_says_which_variable_to_set() -> None:
    """OpenAI's own API with no key fails at start, naming OPENAI_API_KEY."""
    with pytest.raises(ModelAuthenticationError, match="set OPENAI_API_KEY"):
        load_model("openai:gpt-4o-mini", Settings())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gpt", "not a model chatsession knows"),
        ("local?x=1", "takes no options"),
        ("echo?speed=2", "unknown option 'speed'"),
        ("openai:", "needs a model name"),
    ],
)
def test_bad_specs_are_named(spec: str, expected: str) -> None:
    """A spec chatsession cannot serve fails at start with what it accepts."""
    with pytest.raises(ConfigError, match=expected):
        load_model(spec, Settings(openai_api_key="k"))


def test_api_key_is_kept_out_of_the_settings_repr() -> None:
    """The API key does not leak into logs through repr(settings)."""
    assert "sekrit" not in repr(Settings(openai_api_key="sekrit"))
