"""API keys come only from the environment; this keeps their values out of logs and error messages.

Judges read keys from environment variables at each request (``rspo.preference.llm``,
``rspo.evaluation.alpaca_judges``) and never store, log or write them; the config may not hold
one (``rspo.preflight.check_no_secrets``). As a second line of defence, ``rspo`` steps install
:func:`install` at start: every log record, every error line and an uncaught exception's
traceback have the value of each secret-looking environment variable replaced by ``***`` (a
server that echoes the key back in an error body, as OpenAI's does, cannot put it in a log).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping

#: environment variable NAMES that hold secrets (OPENAI_API_KEY, RSPO_JUDGE_API_KEY, HF_TOKEN, ...)
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.IGNORECASE)
MIN_LENGTH = 8  # shorter values ("EMPTY", "1") are placeholders, and replacing them would garble text
MASK = "***"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (comma-separated lists split), longest first."""
    environ = os.environ if environ is None else environ
    values = set()
    for name, value in environ.items():
        if SECRET_NAME.search(name):
            values.update(v.strip() for v in [value, *value.split(",")] if len(v.strip()) >= MIN_LENGTH)
    return sorted(values, key=len, reverse=True)


def redact(text: str, values: list[str] | None = None) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for value in secret_values() if values is None else values:
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Formats a record's message (and traceback) and replaces secret values in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = secret_values()
        if values:
            record.msg, record.args = redact(record.getMessage(), values), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, values)
        return True


def install() -> None:
    """Redact secrets in every handler of the root logger and in uncaught exceptions' tracebacks."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())

    def hook(kind, value, tb):
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))

    sys.excepthook = hook
