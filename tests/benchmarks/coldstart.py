"""Cold start: a new functions-framework process, from exec until it has answered its first
bootstrap event, against a process that only imports the client libraries the function needs.

The event is a Pub/Sub push body (what the emulator or Eventarc would POST) asking to ensure
the eight bundled tables of a dataset that already holds them: nine reads and a completion
event published to the Pub/Sub emulator, so the time is mostly the process's own.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.proxy import round_trip_depth

from .harness import REPO, Bench, Measured, count_requests

BASELINE_IMPORTS = "import google.cloud.bigquery, google.cloud.pubsub_v1, google.cloud.storage, cloudevents, functions_framework"
ANSWER_TIMEOUT = 120.0
REQUESTS_TOPIC = "bootstrap-requests"


def measure(bench: Bench, dataset: str, repetitions: int, concurrency: int | None) -> list[Measured]:
    """Rows: the function's cold start, `import main` alone, and the baseline imports (medians)."""
    runs = [_function_once(bench, dataset, concurrency) for _ in range(repetitions)]
    function = runs[sorted(range(len(runs)), key=lambda i: runs[i].seconds)[len(runs) // 2]]
    imports = _process_seconds("import main", repetitions)
    baseline = _process_seconds(BASELINE_IMPORTS, repetitions)
    base_row = Measured("cold start", "baseline: import the client libraries", baseline, 0.0, None)
    base_row.note = (
        "python -c 'import google.cloud.bigquery, ...pubsub_v1, ...storage, cloudevents, functions_framework'"
    )
    main_row = Measured("cold start", "python -c 'import main'", imports, 0.0, None, baseline=base_row)
    function.baseline = base_row
    return [function, main_row, base_row]


def _function_once(bench: Bench, dataset: str, concurrency: int | None) -> Measured:
    port = _free_port()
    runtime_dir = tempfile.mkdtemp(prefix="bench-run-")
    with bench.proxy() as proxy:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
        env.update(bench.function_env(proxy, dataset))
        env["PUBSUB_EMULATOR_HOST"] = bench.stack.env["PUBSUB_EMULATOR_HOST"]
        env["XDG_RUNTIME_DIR"] = runtime_dir  # gunicorn's control socket, one per process
        if concurrency is not None:
            env["BOOTSTRAP_CONCURRENCY"] = str(concurrency)
        command = [str(Path(sys.executable).parent / "functions-framework"), "--target", "bootstrap"]
        command += ["--signature-type", "cloudevent", "--source", str(REPO / "main.py")]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        log = open(bench.workdir / f"function-{port}.log", "wb")  # noqa: SIM115 (closed below)
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = _post_until_answered(port, bench.stack.config.project)
            seconds = time.perf_counter() - started
            rss = _tree_peak_rss_kib(process.pid)
        finally:
            _stop(process)
            log.close()
            with contextlib.suppress(OSError):
                os.rmdir(runtime_dir)
        records = proxy.requests()
        round_trips = round_trip_depth(proxy.timed())
    measured = Measured(
        "cold start",
        "functions-framework, first event",
        seconds,
        bench.latency,
        None,
        rss_mib=rss / 1024 if rss else None,
        status="answered" if status == 200 else f"HTTP {status}",
        round_trips=round_trips,
    )
    count_requests(records, measured)
    return measured


def _push_body(project: str) -> bytes:
    message_id = uuid.uuid4().hex
    body = {
        "subscription": f"projects/{project}/subscriptions/{REQUESTS_TOPIC}-push",
        "message": {
            "data": base64.b64encode(json.dumps({"request_id": f"cold-{message_id}"}).encode()).decode(),
            "attributes": {},
            "messageId": message_id,
            "publishTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        },
    }
    return json.dumps(body).encode()


def _post_until_answered(port: int, project: str) -> int:
    """POST the event as soon as the port accepts a connection; the answer's HTTP status."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    body = _push_body(project)
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT)
        try:
            conn.connect()
        except ConnectionRefusedError:
            conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"functions-framework did not listen on {port}") from None
            time.sleep(0.005)
            continue
        try:
            path = f"/projects/{project}/topics/{REQUESTS_TOPIC}"
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


def _process_seconds(code: str, repetitions: int) -> float:
    """Median wall time of `python -c code`, from exec to exit."""
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _tree_peak_rss_kib(pid: int) -> int:
    """The largest VmHWM among `pid` and its children (gunicorn serves from a forked worker)."""
    peak = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    return peak


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
