"""A function instance in a process of its own: `python -m tests.benchmarks.worker SETUP_JSON`.

A separate process so that its peak RSS is the function's own (the proxies and the harness live
elsewhere), and so that its first run starts with cold clients, like a new function instance;
the runs after it are a warm instance's. It imports `main` first, so the process holds
everything the deployed function loads.

SETUP_JSON: {"env": {...}, "rate_limited": bool, "downloads": int | null}. The environment names
the schema source (SCHEMA_SOURCE), the proxies (*_EMULATOR_HOST), the dataset and the
concurrency; `downloads` bounds the objects downloaded at once (the sequential baseline's 1).
Then one run per line on stdin, until it closes: {"request": {...}} (a bootstrap request) or
{"upload": {"bucket", "name", "generation"}} (a storage object.finalized event through the
function's handler). One JSON line answers each: seconds, status, actions, errors, vm_hwm_kib.

Seconds: from a folder, the run itself (schema parsing excluded); from a bucket, the whole
`runner.converge`, listing and downloads included; for an upload, the handler from the event
to its completion event published. Anything else the function prints goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import IO, Any


def peak_rss_kib() -> int:
    """VmHWM, the kernel's high-water mark of this process's resident set."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def setup(spec: dict[str, Any]) -> None:
    os.environ.update(spec["env"])
    if not spec.get("rate_limited", True):  # the client-side limiter off: 403s retried
        os.environ.update(BOOTSTRAP_API_RATE="0", BOOTSTRAP_INSERT_RATE="0")
    import main  # noqa: F401  (the function's whole import set, as deployed)
    from function import sources

    if spec.get("downloads"):
        sources.DOWNLOADS = spec["downloads"]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of the instance; what it did and how long it took."""
    if "upload" in spec:
        return _upload(spec["upload"])
    from function import runner
    from function.config import Settings
    from function.request import request_from_fields

    settings = Settings.from_env()
    request = request_from_fields(spec.get("request", {}), "bench")
    from_bucket = settings.schema_source.startswith("gs://")
    declared = None if from_bucket else runner.load_declared(settings)
    started = time.perf_counter()
    try:
        if declared is None:
            done = runner.converge(request, settings)
            result = done.result  # type: ignore[union-attr]  (no upload: never superseded)
        else:
            result = runner.run(request, settings, declared)
    except Exception as exc:  # what would reach the function's caller (a transient error raised)
        return _answer(started, "raised", {}, [f"{type(exc).__name__}: {exc}"])
    errors = [t.error for t in result.tables if t.error]
    return _answer(started, result.status, result.counts(), errors)


def _upload(upload: dict[str, Any]) -> dict[str, Any]:
    """The object.finalized event through `handler.handle`, timed to its completion event."""
    from cloudevents.http import CloudEvent

    from function import completion, handler

    published: list[dict[str, Any]] = []
    send = completion.publish

    def publish(settings: Any, event: Any) -> str:
        published.append(event.get_data())
        return send(settings, event)

    completion.publish = publish
    event = CloudEvent(
        {
            "type": "google.cloud.storage.object.v1.finalized",
            "source": f"//storage.googleapis.com/projects/_/buckets/{upload['bucket']}",
            "id": uuid.uuid4().hex,
            "time": datetime.now(UTC).isoformat(),
        },
        {key: str(value) for key, value in upload.items()},
    )
    started = time.perf_counter()
    try:
        handler.handle(event)
    except Exception as exc:
        return _answer(started, "raised", {}, [f"{type(exc).__name__}: {exc}"])
    finally:
        completion.publish = send
    if not published:
        return _answer(started, "no completion event", {}, [])
    data = published[0]
    actions: dict[str, int] = {}
    for table in data["tables"]:
        actions[table["action"]] = actions.get(table["action"], 0) + 1
    errors = [t["error"] for t in data["tables"] if t["error"]] + ([data["error"]] if data["error"] else [])
    return _answer(started, data["status"], actions, errors)


def _answer(started: float, status: str, actions: dict[str, int], errors: list[str]) -> dict[str, Any]:
    return {
        "seconds": time.perf_counter() - started,
        "status": status,
        "actions": actions,
        "errors": errors[:3],
        "vm_hwm_kib": peak_rss_kib(),
    }


def serve(answers: IO[str]) -> None:
    setup(json.loads(sys.argv[1]))
    for line in sys.stdin:
        answers.write(json.dumps(run(json.loads(line))) + "\n")
        answers.flush()


if __name__ == "__main__":
    # The answers keep stdout; the function's own log lines go to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    serve(protocol)
