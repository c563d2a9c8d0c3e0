"""Logging: secrets from the settings (and token-shaped strings) never reach the output."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from bot.logging_setup import REDACTED, Redactor, configure_logging
from rag_core.config import Settings

DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456"
SECRETS = {
    "discord_token": DISCORD,
    "milvus_token": "root:milvus-password-42",
    "hf_token": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "llm_api_key": "sk-local-vllm-key",
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """configure_logging on a string stream; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    settings = Settings(_env_file=None, **SECRETS)  # type: ignore[call-arg, arg-type]
    configure_logging("DEBUG", settings, stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.captureWarnings(False)


def test_secret_values_are_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("bot.test")
    log.info("logging in with %s", DISCORD)
    log.warning("milvus token=%s password=%s", SECRETS["milvus_token"], "milvus-password-42")
    log.error("hub said 401 for token %r", SECRETS["hf_token"])
    log.info("POST /v1/completions Authorization: Bearer %s", SECRETS["llm_api_key"])
    text = captured.getvalue()
    assert text.count(REDACTED) >= 5
    for value in (*SECRETS.values(), "milvus-password-42"):
        assert value not in text
    lines = text.strip().splitlines()
    assert len(lines) == 4 and all(" bot.test: " in line for line in lines)  # one line each


def test_tracebacks_and_unknown_tokens_are_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("discord.client")
    try:
        raise RuntimeError(f"cannot connect to http://user:{SECRETS['llm_api_key']}@gpu1/v1")
    except RuntimeError:
        log.exception("request failed")
    # A token pasted by a user, not one of ours: still redacted by its shape.
    stranger = "OTg3NjU0MzIxMDk4NzY1NDMyMQ.XyZ123.zyxwvutsrqponmlkjihgfedcba987654"
    log.warning("question: is %s my token?", stranger)
    text = captured.getvalue()
    assert "Traceback" in text and "RuntimeError" in text
    assert SECRETS["llm_api_key"] not in text and stranger not in text


def test_redactor_keeps_ordinary_text() -> None:
    redact = Redactor(["secret-value", "ab"])  # too short to be a secret: ignored
    assert redact("the secret-value is here, abba") == f"the {REDACTED} is here, abba"
    assert redact("HNSW parameters: M=16, efConstruction=200") == (
        "HNSW parameters: M=16, efConstruction=200"
    )
