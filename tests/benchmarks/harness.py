"""The benchmark's harness: the BigQuery emulator (local-bigquery) behind the counting,
latency-adding, rate-limiting proxy, and engine runs in worker processes, each measured as one
`Measured` row.

Every run gets a proxy of its own (so rate-limit windows start empty, like a user that was
idle) and a dataset of its own, in front of one emulator per group of scenarios (restarted empty
between groups: local-bigquery's cost per request grows with the tables it holds).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.stack import Stack, StackConfig
from function.ratelimit import API_REQUESTS_PER_SECOND, TABLE_INSERTS_PER_SECOND
from tests.support.proxy import BIGQUERY_RATE_LIMITS, READ_METHODS, Proxy, Recorded

REPO = Path(__file__).resolve().parents[2]
PROJECT = "bench-project"
INSERT_PATH = re.compile(r"/datasets/[^/]+/tables$")
WORKER_TIMEOUT = 600.0


@dataclass
class Measured:
    """One measured run: what it cost, and how that compares with what physics allows."""

    scenario: str
    variant: str
    seconds: float
    latency: float
    min_depth: int | None  # round trips on the dependency chain; None: not an engine run
    reads: int = 0
    writes: int = 0
    rejected: int = 0  # answered 403 rateLimitExceeded by the proxy
    inserts: int = 0  # tables.insert requests BigQuery admitted
    repeated_reads: int = 0  # successful reads of a resource already read in this run
    rss_mib: float | None = None
    status: str = ""
    actions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    by_endpoint: dict[str, int] = field(default_factory=dict)
    baseline: Measured | None = None  # what `ratio` compares with
    expected: str | None = None  # the action every table should report (engine runs)
    note: str = ""

    @property
    def requests(self) -> int:
        return self.reads + self.writes

    @property
    def depth(self) -> float | None:
        """Critical-path depth as measured: wall time over the injected latency."""
        return self.seconds / self.latency if self.latency > 0 else None

    @property
    def limit(self) -> float | None:
        """The physical limit: the longer of the dependency chain's round trips and the time
        the quotas need to admit the run's requests (all of them at 100/s, inserts at 10/s)."""
        if self.min_depth is None:
            return None
        admitted = self.requests - self.rejected
        return max(
            self.min_depth * self.latency,
            admitted / API_REQUESTS_PER_SECOND,
            self.inserts / TABLE_INSERTS_PER_SECOND,
        )

    @property
    def over_limit(self) -> float | None:
        limit = self.limit
        return self.seconds / limit if limit else None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.seconds:
            return None
        return self.seconds / self.baseline.seconds


def count_requests(records: list[Recorded], measured: Measured) -> None:
    """Fill in reads, writes, rate-limit rejections, admitted inserts and repeated reads."""
    seen: collections.Counter[str] = collections.Counter()
    endpoints: collections.Counter[str] = collections.Counter()
    for method, path, status in records:
        endpoints[f"{method} {endpoint(path)}{' 403' if status == 403 else ''}"] += 1
        if method in READ_METHODS:
            measured.reads += 1
            if status in (200, 404):
                seen[path] += 1
        else:
            measured.writes += 1
            if method == "POST" and INSERT_PATH.search(path) and status != 403:
                measured.inserts += 1
        if status == 403:
            measured.rejected += 1
    measured.repeated_reads = sum(n - 1 for n in seen.values() if n > 1)
    measured.by_endpoint = dict(sorted(endpoints.items()))


def endpoint(path: str) -> str:
    """The path with its names replaced: /bigquery/v2/projects/{p}/datasets/{d}/tables/{t}."""
    parts = path.split("/")
    for index in range(1, len(parts) - 1):
        if parts[index] in ("projects", "datasets", "tables", "jobs"):
            parts[index + 1] = "{" + parts[index][0] + "}"
    return "/".join(parts)


class Bench:
    """An emulator stack (bigquery, and pubsub when the cold start is measured) for one run of
    the benchmark, as a context manager; or, given `stack`, one that is already running (the
    harness's test uses the test session's)."""

    def __init__(
        self, workdir: Path, latency: float, *, pubsub: bool = False, stack: Stack | None = None
    ) -> None:
        self.workdir = workdir
        self.latency = latency
        self._owned = stack is None
        components = {"bigquery", "pubsub"} if pubsub else {"bigquery"}
        self.stack = stack or Stack(
            StackConfig(project=PROJECT, components=frozenset(components), workdir=workdir / "stack")
        )

    def __enter__(self) -> Bench:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._owned:
            self.stack.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._owned:
            self.stack.stop()

    def empty_emulator(self) -> None:
        """Restart the emulator empty (only one this bench started), so that the next group of
        scenarios does not pay for the tables of the previous ones."""
        if self._owned:
            self.stack.restart("bigquery")

    @property
    def upstream(self) -> str:
        return self.stack.env["BIGQUERY_EMULATOR_HOST"]

    def proxy(self, *, latency: float | None = None) -> Proxy:
        """A new proxy: the configured latency, BigQuery's rate limits, fresh windows."""
        return Proxy(
            self.upstream,
            latency=self.latency if latency is None else latency,
            rate_limits=BIGQUERY_RATE_LIMITS,
        )

    @staticmethod
    def dataset(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:8]}"

    def function_env(self, proxy: Proxy, dataset: str, **extra: str) -> dict[str, str]:
        """The function's environment for a run against `proxy`."""
        env = {
            "GOOGLE_CLOUD_PROJECT": self.stack.config.project,
            "BOOTSTRAP_DATASET": dataset,
            "BIGQUERY_EMULATOR_HOST": proxy.url,
            "BOOTSTRAP_RETRY_DEADLINE": "120",
        }
        env.update(extra)
        return env

    def run_engine(
        self,
        scenario: str,
        variant: str,
        *,
        schemas: Path,
        dataset: str,
        min_depth: int,
        concurrency: int | None = None,
        rate_limited: bool = True,
        request: dict[str, Any] | None = None,
        expected: str | None = None,
    ) -> Measured:
        """One engine run in a worker process, measured through a fresh proxy."""
        extra = {"SCHEMA_SOURCE": str(schemas)}
        if concurrency is not None:
            extra["BOOTSTRAP_CONCURRENCY"] = str(concurrency)
        with self.proxy() as proxy:
            spec = {
                "env": self.function_env(proxy, dataset, **extra),
                "request": request or {},
                "rate_limited": rate_limited,
            }
            out = run_worker(spec)
            records = proxy.requests()
        measured = Measured(
            scenario,
            variant,
            seconds=out["seconds"],
            latency=self.latency,
            min_depth=min_depth,
            rss_mib=out["vm_hwm_kib"] / 1024,
            status=out["status"],
            actions=out["actions"],
            errors=out["errors"],
            expected=expected,
        )
        count_requests(records, measured)
        return measured


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run tests.benchmarks.worker with `spec`; its JSON answer."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.worker", json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])
