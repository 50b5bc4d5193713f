"""Structured logs: one JSON object per line on stdout, with the `severity` and `message` Cloud
Logging maps to the entry; every other field lands in `jsonPayload`."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any

_lock = threading.Lock()
MAX_MESSAGE = 16_000  # characters of `message`
MAX_LINE = 200_000  # bytes of a whole line: Cloud Logging keeps at most 256 KB of an entry
MAX_FIELD = 8_000  # characters of one field's JSON, kept when the whole line is too long


def log(severity: str, message: str, **fields: Any) -> None:
    entry = {
        "severity": severity,
        "message": clip(message, MAX_MESSAGE),
        "time": datetime.now(UTC).isoformat(),
    }
    line = json.dumps({**entry, **fields}, default=str, separators=(",", ":"))
    if len(line.encode()) > MAX_LINE:  # a field grew: keep the small ones (the request id...)
        large = sorted(k for k, v in fields.items() if len(json.dumps(v, default=str)) > MAX_FIELD)
        kept = {k: v for k, v in fields.items() if k not in large}
        line = json.dumps({**entry, **kept, "fields_left_out": large}, default=str, separators=(",", ":"))
    with _lock:  # one whole line per entry, even from worker threads
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"
