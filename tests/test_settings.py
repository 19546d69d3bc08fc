"""Settings: the guide's variable names and units, and bad values named at start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chatsession import ConfigError, Settings


def test_defaults_match_the_guide() -> None:
    """Five minutes of inactivity, checked every 30 s, archive on disconnect."""
    settings = Settings()
    assert settings.session_timeout == 300
    assert settings.session_check_interval == 30
    assert settings.auto_archive_on_disconnect is True
    assert settings.data_dir == Path("data")
    assert settings.durability == "batch"


def test_environment_uses_milliseconds_for_the_guides_names() -> None:
    """SESSION_TIMEOUT and SESSION_CHECK_INTERVAL are in milliseconds."""
    settings = Settings.from_env(
        {
            "SESSION_TIMEOUT": "60000",
            "SESSION_CHECK_INTERVAL": "500",
            "AUTO_ARCHIVE_ON_DISCONNECT": "false",
            "DATA_DIR": "/tmp/x",
            "DISCONNECT_GRACE": "2.5",
            "DURABILITY": "ALWAYS",
            "DEBUG": "session:*",
        }
    )
    assert settings.session_timeout == 60
    assert settings.session_check_interval == 0.5
    assert settings.auto_archive_on_disconnect is False
    assert settings.data_dir == Path("/tmp/x")
    assert settings.disconnect_grace == 2.5
    assert settings.durability == "always"
    assert settings.session_debug


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SESSION_TIMEOUT", "5min", "SESSION_TIMEOUT='5min' is not accepted: expected a whole"),
        ("SESSION_TIMEOUT", "0", "greater than 0"),
        ("SESSION_CHECK_INTERVAL", "-1", "SESSION_CHECK_INTERVAL"),
        ("AUTO_ARCHIVE_ON_DISCONNECT", "maybe", "expected true or false"),
        ("DURABILITY", "sometimes", "expected one of always, batch, never"),
        ("DISCONNECT_GRACE", "soon", "DISCONNECT_GRACE='soon'"),
        ("DISCONNECT_GRACE", "nan", "finite number of seconds"),
        ("DATA_DIR", "memory://", "DATA_DIR='memory://' is not accepted: expected a directory"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(
    variable: str, value: str, expected: str
) -> None:
    """A bad value fails at start, naming the variable and what it accepts."""
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("*", r"\*")):
        Settings.from_env({variable: value})


def test_direct_construction_is_validated() -> None:
    """Settings(...) refuses nonsense too."""
    with pytest.raises(ConfigError, match="session_timeout"):
        Settings(session_timeout=0)
    with pytest.raises(ConfigError, match="durability"):
        Settings(durability="sometimes")  # type: ignore[arg-type]


def test_debug_patterns() -> None:
    """DEBUG follows the debug module's syntax: session:*, *, comma separated."""
    assert Settings(debug="http,session:*").session_debug
    assert Settings(debug="*").session_debug
    assert not Settings(debug="http:*").session_debug


def test_model_variables_are_read() -> None:
    """The model's variables reach Settings with their units."""
    settings = Settings.from_env(
        {
            "CHAT_MODEL": "openai:llama3.2",
            "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
            "OPENAI_API_KEY": "k",
            "SYSTEM_PROMPT": "Be brief.",
            "MODEL_PATH": "/models/x.gguf",
            "MODEL_THREADS": "4",
            "MODEL_CONTEXT": "8192",
            "MODEL_MAX_TOKENS": "256",
            "MODEL_TIMEOUT": "30",
            "MODEL_RETRIES": "0",
            "MODEL_QUEUE_TIMEOUT": "5",
        }
    )
    assert settings.chat_model == "openai:llama3.2"
    assert settings.openai_base_url == "http://127.0.0.1:11434/v1"
    assert settings.openai_api_key == "k"
    assert settings.system_prompt == "Be brief."
    assert settings.model_path == Path("/models/x.gguf")
    assert (settings.model_threads, settings.model_context) == (4, 8192)
    assert (settings.model_max_tokens, settings.model_retries) == (256, 0)
    assert (settings.model_timeout, settings.model_queue_timeout) == (30, 5)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODEL_THREADS", "0", "MODEL_THREADS='0' is not accepted: expected a whole number"),
        ("MODEL_CONTEXT", "big", "MODEL_CONTEXT='big' is not accepted"),
        ("MODEL_RETRIES", "-1", "MODEL_RETRIES"),
        ("MODEL_TIMEOUT", "0", "MODEL_TIMEOUT='0' is not accepted: expected a number of sec"),
    ],
)
def test_bad_model_values_name_the_variable(variable: str, value: str, expected: str) -> None:
    """A bad model setting fails at start, naming the variable."""
    with pytest.raises(ConfigError, match=expected):
        Settings.from_env({variable: value})


def test_server_settings_read_their_variables() -> None:
    """HOST, PORT, JWT, CORS and limit variables reach the server settings."""
    settings = Settings.from_env(
        {
            "HOST": "0.0.0.0",
            "PORT": "9000",
            "JWT_SECRET": "x" * 32,
            "JWT_AUDIENCE": "chat",
            "CORS_ORIGINS": "https://a.example, https://b.example",
            "RATE_LIMIT": "0",
            "MAX_CONNECTIONS_PER_USER": "3",
            "HEARTBEAT_INTERVAL": "0.5",
            "TRUSTED_PROXY": "yes",
        }
    )
    assert (settings.host, settings.port, settings.auth_mode) == ("0.0.0.0", 9000, "jwt")
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert (settings.rate_limit, settings.max_connections_per_user) == (0, 3)
    assert settings.heartbeat_interval == 0.5
    assert settings.trusted_proxy is True
    assert Settings().auth_mode == "dev"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"PORT": "http"}, "PORT='http' is not accepted: expected a port number"),
        ({"PORT": "70000"}, "between 0 and 65535"),
        ({"JWT_SECRET": "a", "JWT_PUBLIC_KEY": "b"}, "not both"),
        ({"MAX_MESSAGE_BYTES": "0"}, "max_message_bytes must be 1 or more"),
        ({"WS_PING_INTERVAL": "0"}, "WS_PING_INTERVAL"),
    ],
)
def test_bad_server_settings_are_named(environ: dict[str, str], expected: str) -> None:
    """A bad server setting fails at start with a message naming it."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Settings.from_env(environ)


def test_empty_variables_mean_the_default() -> None:
    """VAR= (set but empty, as compose files do) is the same as unset."""
    settings = Settings.from_env({"AUTO_ARCHIVE_ON_DISCONNECT": "", "CHAT_MODEL": " "})
    assert settings.auto_archive_on_disconnect is True
    assert settings.chat_model == "auto"


@pytest.mark.parametrize("variable", ["SESSION_TIMEOUT", "SESSION_CHECK_INTERVAL"])
def test_milliseconds_under_a_second_are_taken_with_a_warning(
    variable: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SESSION_TIMEOUT=300 (someone thinking in seconds) is 0.3 s, and the log says so."""
    with caplog.at_level("WARNING", "chatsession.settings"):
        settings = Settings.from_env({variable: "300"})
    assert getattr(settings, variable.lower()) == 0.3
    assert f"{variable}=300 means 300 milliseconds" in caplog.text
    assert "for 300 seconds write 300000" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", "chatsession.settings"):
        Settings.from_env({variable: "1000"})
    assert caplog.text == ""


def test_every_variable_has_help_with_a_default() -> None:
    """Each variable has a meaning (with its unit) and a default for serve --help."""
    from chatsession.settings import environment_variables, setting_help

    for variable in environment_variables():
        described = setting_help(variable)
        assert described is not None, variable
        assert all(described), variable


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MODEL_TEMPERATURE", "-1"), ("MODEL_TOP_P", "0"), ("MODEL_REPEAT_PENALTY", "x")],
)
def test_sampling_settings_refuse_values_out_of_range(variable: str, value: str) -> None:
    """The local model's sampling settings name themselves when out of range."""
    with pytest.raises(ConfigError, match=variable.lower() + "|" + variable):
        Settings.from_env({variable: value})
