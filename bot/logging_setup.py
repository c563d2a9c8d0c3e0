"""Logging: one line per record, and no secret ever written out.

`configure_logging(level, settings)` replaces the root handlers with one stderr handler whose
filter redacts, from the message, its arguments, the traceback and the stack: the values of
every secret setting (Discord token, Milvus token, HF token, LLM API key, a password in
MILVUS_URI), plus anything shaped like a Discord bot token or a Hugging Face token, so a token
pasted into a question or echoed in an exception cannot reach the logs either.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from rag_core.config import Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REDACTED = "[redacted]"
# Values this short are not real secrets, and replacing them everywhere would garble logs.
_MIN_SECRET_LEN = 4
_PATTERNS = (
    # Discord bot token: base64(user id) . timestamp . HMAC
    r"[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}",
    r"\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face user access token
    r"(?i:(?<=authorization: bot )|(?<=authorization: bearer ))[^\s'\"]+",
)


def secrets_from(settings: Settings) -> list[str]:
    """The secret values held by `settings` (empty ones left out)."""
    values = [
        settings.discord_token.get_secret_value(),
        settings.milvus_token.get_secret_value(),
        settings.hf_token.get_secret_value(),
        settings.llm_api_key.get_secret_value(),
    ]
    token = settings.milvus_token.get_secret_value()
    if ":" in token:  # user:password: the password alone is secret too
        values.append(token.split(":", 1)[1])
    password = urlsplit(settings.milvus_uri).password if "://" in settings.milvus_uri else None
    if password:
        values.append(password)
    return [v for v in values if v]


class Redactor:
    """Replaces known secret values and token-shaped strings with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._pattern: re.Pattern[str] = re.compile("$^")
        self.secrets: list[str] = []
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Redact these values too (kept with those given before)."""
        known = {*self.secrets, *(s for s in secrets if len(s) >= _MIN_SECRET_LEN)}
        # Longest first: a secret containing another is replaced whole.
        self.secrets = sorted(known, key=len, reverse=True)
        parts = [re.escape(s) for s in self.secrets] + list(_PATTERNS)
        self._pattern = re.compile("|".join(f"(?:{p})" for p in parts))

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no formatter can print a secret it holds."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we can show, redacted
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = self.redactor(message), None
        if record.exc_info and not record.exc_text:
            # Format the traceback now (exception messages can hold URLs with tokens); the
            # formatter reuses exc_text instead of formatting exc_info again.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


def configure_logging(
    level: str | int = "INFO",
    settings: Settings | None = None,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> RedactingFilter:
    """One stderr handler on the root logger, one line per record, secrets redacted.

    Returns the filter (add it to any other handler you create; `filter.redactor.update()`
    learns more secrets). Also routes `warnings` through logging and lets vLLM log through the
    root logger instead of its own handler, so its records are redacted too.
    """
    if isinstance(level, str):
        level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    redactor = Redactor([*(secrets_from(settings) if settings else ()), *secrets])
    redacting = RedactingFilter(redactor)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(redacting)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    # Read by vLLM at import: without it vLLM installs its own handler, past our filter.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    return redacting
