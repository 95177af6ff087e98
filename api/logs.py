"""Logging for the service: every line with its UTC time and level, as text or as JSON.

| variable            | default | meaning                                                           |
|---------------------|---------|-------------------------------------------------------------------|
| ``QUOTA_LOG_FORMAT``| text    | ``text``: ``2026-01-15T12:00:00.123Z WARNING quota.api: ...``;     |
|                     |         | ``json``: one object a line, ``{"ts", "level", "logger", "msg"}`` |
|                     |         | (and ``exc`` with a traceback), for a log shipper                 |
| ``QUOTA_LOG_LEVEL`` | INFO    | DEBUG, INFO, WARNING, ERROR                                       |

Used by ``gunicorn.conf.py`` (``logconfig_dict``: the app's loggers and gunicorn's own error and
access logs get the same format) and by ``quota serve``. Without it, a warning logged by the app
under gunicorn reached stderr through Python's last-resort handler: no time, no level, no logger.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import time
from collections.abc import Mapping
from typing import Any

from quota import ConfigError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UtcFormatter(logging.Formatter):
    """``%(asctime)s`` as ``2026-01-15T12:00:00.123Z``: UTC, milliseconds, sortable."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(UtcFormatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, and ``exc`` when there is a
    traceback. Never anything from ``record.args`` beyond the formatted message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_settings(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(format, level)`` from QUOTA_LOG_FORMAT and QUOTA_LOG_LEVEL; ConfigError when wrong."""
    env = os.environ if env is None else env
    fmt = (env.get("QUOTA_LOG_FORMAT") or "text").strip().lower()
    if fmt not in ("text", "json"):
        raise ConfigError(f"QUOTA_LOG_FORMAT must be text or json, got {fmt!r}")
    level = (env.get("QUOTA_LOG_LEVEL") or "INFO").strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"QUOTA_LOG_LEVEL must be one of {', '.join(LEVELS)}, got {level!r}")
    return fmt, level


def logging_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: one stderr handler for the root logger and for
    gunicorn's error and access loggers."""
    fmt, level = log_settings(env)
    formatter = (
        {"()": f"{__name__}.JsonFormatter"}
        if fmt == "json"
        else {"()": f"{__name__}.UtcFormatter", "format": TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "quota", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"quota": formatter},
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }


def configure_logging(env: Mapping[str, str] | None = None) -> None:
    logging.config.dictConfig(logging_config(env))
