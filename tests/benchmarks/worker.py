"""One engine run in a process of its own: `python -m tests.benchmarks.worker SPEC_JSON`.

A separate process so that its peak RSS is the function's own (the proxy and the harness live
elsewhere), and so that every run starts with a cold client, like a new function instance.
It imports `main` first, so the process holds everything the deployed function loads.

SPEC_JSON: {"env": {...}, "request": {...}, "rate_limited": bool}. The environment names
the schema folder (SCHEMA_SOURCE), the proxy (BIGQUERY_EMULATOR_HOST), the dataset and the
concurrency. Prints one JSON line: seconds (the run itself, imports and schema parsing
excluded), status, actions, vm_hwm_kib.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def peak_rss_kib() -> int:
    """VmHWM, the kernel's high-water mark of this process's resident set."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    os.environ.update(spec["env"])
    if not spec.get("rate_limited", True):  # the client-side limiter off: 403s retried
        os.environ.update(BOOTSTRAP_API_RATE="0", BOOTSTRAP_INSERT_RATE="0")
    import main  # noqa: F401  (the function's whole import set, as deployed)
    from function import runner
    from function.config import Settings
    from function.request import request_from_fields

    settings = Settings.from_env()
    declared = runner.load_declared(settings)
    request = request_from_fields(spec.get("request", {}), "bench")
    started = time.perf_counter()
    try:
        result = runner.run(request, settings, declared)
    except Exception as exc:  # what would reach the function's caller (a transient error raised)
        return {
            "seconds": time.perf_counter() - started,
            "status": "raised",
            "dataset_action": None,
            "actions": {},
            "errors": [f"{type(exc).__name__}: {exc}"],
            "vm_hwm_kib": peak_rss_kib(),
        }
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "status": result.status,
        "dataset_action": result.dataset_action,
        "actions": result.counts(),
        "errors": [t.error for t in result.tables if t.error][:3],
        "vm_hwm_kib": peak_rss_kib(),
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
