"""Structured logs: one JSON object per line on stdout, as Cloud Logging reads them.

`severity` and `message` are the fields Cloud Logging maps to the entry's severity and text;
every other field lands in `jsonPayload`, where it can be filtered on.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any

_lock = threading.Lock()


def log(severity: str, message: str, **fields: Any) -> None:
    entry = {"severity": severity, "message": message, "time": datetime.now(UTC).isoformat(), **fields}
    line = json.dumps(entry, default=str, separators=(",", ":"))
    with _lock:  # one whole line per entry, even from worker threads
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)
