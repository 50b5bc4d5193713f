"""The benchmark's harness: the BigQuery emulator (local-bigquery) behind the counting,
latency-adding, rate-limiting proxy, fake-gcs-server behind the same kind of proxy (same latency,
requests counted), and engine runs in worker processes, each run measured as one `Measured` row.

A worker process is a function instance (`Instance`): its first run is a cold instance's, the
next ones a warm instance's. Each instance gets proxies of its own (so rate-limit windows start
empty, like a user that was idle) and a dataset of its own, in front of one emulator per group
of scenarios (restarted empty between groups: local-bigquery's cost per request grows with the
tables it holds).

Over 400 lines: the stack, the instances and the measurement of a run belong together.
"""

from __future__ import annotations

import collections
import json
import os
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.stack import Stack, StackConfig
from function.ratelimit import API_REQUESTS_PER_SECOND, TABLE_INSERTS_PER_SECOND
from tests.support.proxy import BIGQUERY_RATE_LIMITS, READ_METHODS, Proxy, Recorded, round_trip_chain

REPO = Path(__file__).resolve().parents[2]
PROJECT = "bench-project"
INSERT_PATH = re.compile(r"/datasets/[^/]+/tables$")
WORKER_TIMEOUT = 600.0
# Between two runs of one instance: BigQuery's rate windows (1 s) empty again, as for a user
# that was idle, so that a warm run is not charged for the quota its predecessor used.
IDLE = 1.0


@dataclass
class Measured:
    """One measured run: what it cost, and how that compares with what physics allows."""

    scenario: str
    variant: str
    seconds: float
    latency: float
    min_depth: int | None  # round trips on the dependency chain; None: not an engine run
    # Round trips the run made one after another, from the proxies' records of each request's
    # arrival and answer (BigQuery's and Cloud Storage's together): `round_trip_depth`.
    round_trips: int | None = None
    chain: list[str] = field(default_factory=list)  # one such chain: "METHOD endpoint status"
    reads: int = 0
    writes: int = 0
    rejected: int = 0  # answered 403 rateLimitExceeded by the proxy
    inserts: int = 0  # tables.insert requests BigQuery admitted
    repeated_reads: int = 0  # successful reads of a resource already read in this run
    listings: int | None = None  # Cloud Storage listings (None: the schemas came from a folder)
    downloads: int | None = None  # Cloud Storage object downloads
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
        """Wall depth: wall time over the injected latency. The user's time, in round trips, and
        so it includes the emulator's own time per request (see `round_trips` for the round trips
        the run made one after another, whatever the emulator's speed)."""
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


def count_storage(records: list[Recorded], measured: Measured) -> None:
    """Fill in the listings and downloads, and add the storage requests to `by_endpoint`."""
    endpoints = collections.Counter(measured.by_endpoint)
    measured.listings = measured.downloads = 0
    for method, path, status in records:
        endpoints[f"{method} {endpoint(path)}{'' if status == 200 else f' {status}'}"] += 1
        if path.startswith("/download/"):
            measured.downloads += 1
        elif path.endswith("/o"):
            measured.listings += 1
    measured.by_endpoint = dict(sorted(endpoints.items()))


def endpoint(path: str) -> str:
    """The path with its names replaced: /bigquery/v2/projects/{p}/datasets/{d}/tables/{t},
    /download/storage/v1/b/{b}/o/{o}."""
    parts = path.split("/")
    for index in range(1, len(parts) - 1):
        if parts[index] in ("projects", "datasets", "tables", "jobs", "b", "o"):
            parts[index + 1] = "{" + parts[index][0] + "}"
    return "/".join(parts)


class Bench:
    """An emulator stack (bigquery and storage, and pubsub when a scenario publishes completion
    events) for one run of the benchmark, as a context manager; or, given `stack`, one that is
    already running (the harness's test uses the test session's, and its `storage` stack)."""

    def __init__(
        self,
        workdir: Path,
        latency: float,
        *,
        pubsub: bool = False,
        stack: Stack | None = None,
        storage: Stack | None = None,
    ) -> None:
        self.workdir = workdir
        self.latency = latency
        self._owned = stack is None
        components = {"bigquery", "storage", "pubsub"} if pubsub else {"bigquery", "storage"}
        self.stack = stack or Stack(
            StackConfig(project=PROJECT, components=frozenset(components), workdir=workdir / "stack")
        )
        self.storage = storage or self.stack
        self._workers = 0

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

    @property
    def publishes(self) -> bool:
        """Whether the stack has Pub/Sub, where an upload event's completion event goes."""
        return "PUBSUB_EMULATOR_HOST" in self.stack.env

    @property
    def bucket(self) -> str:
        return self.storage.config.schema_bucket

    def proxy(self, *, latency: float | None = None) -> Proxy:
        """A new proxy: the configured latency, BigQuery's rate limits, fresh windows."""
        return Proxy(
            self.upstream,
            latency=self.latency if latency is None else latency,
            rate_limits=BIGQUERY_RATE_LIMITS,
        )

    def storage_proxy(self) -> Proxy:
        """A new proxy in front of fake-gcs-server: the same latency, requests counted (Cloud
        Storage's own limits are far above what a run sends)."""
        return Proxy(self.storage.env["STORAGE_EMULATOR_HOST"], latency=self.latency, rewrite_urls=True)

    @staticmethod
    def dataset(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:8]}"

    def upload(self, prefix: str, files: dict[str, bytes]) -> dict[str, int]:
        """Write `files` under `prefix` of the schema bucket, straight to the emulator; the
        generation of each."""
        client = self.storage.storage_client()
        try:
            bucket = client.bucket(self.bucket)
            generations = {}
            for name, data in files.items():
                blob = bucket.blob(prefix + name)
                blob.upload_from_string(data)
                generations[name] = blob.generation
            return generations
        finally:
            client.close()

    def drop_dataset(self, dataset: str) -> None:
        """Delete the dataset and its tables, straight in the emulator (not a measured request)."""
        client = self.stack.bigquery_client()
        try:
            client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        finally:
            client.close()

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

    def instance(
        self,
        *,
        schemas: str,
        dataset: str,
        concurrency: int | None = None,
        rate_limited: bool = True,
        downloads: int | None = None,
    ) -> Instance:
        """A new function instance reading `schemas` (a folder, or gs://BUCKET/PREFIX/)."""
        self._workers += 1
        return Instance(
            self,
            schemas=schemas,
            dataset=dataset,
            concurrency=concurrency,
            rate_limited=rate_limited,
            downloads=downloads,
            log=self.workdir / f"worker-{self._workers}.log",
        )

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
        """One engine run on a new instance, measured through fresh proxies."""
        with self.instance(
            schemas=str(schemas), dataset=dataset, concurrency=concurrency, rate_limited=rate_limited
        ) as instance:
            return instance.run(scenario, variant, min_depth=min_depth, request=request, expected=expected)


class Instance:
    """A function instance: a worker process (tests.benchmarks.worker) that serves one run after
    another through its own proxies, cold on its first run and warm after it. A context manager."""

    def __init__(
        self,
        bench: Bench,
        *,
        schemas: str,
        dataset: str,
        concurrency: int | None,
        rate_limited: bool,
        downloads: int | None,
        log: Path,
    ) -> None:
        self.bench = bench
        self._bigquery = bench.proxy()
        self._storage = bench.storage_proxy() if schemas.startswith("gs://") else None
        self._env = {"SCHEMA_SOURCE": schemas}
        if concurrency is not None:
            self._env["BOOTSTRAP_CONCURRENCY"] = str(concurrency)
        if bench.publishes:
            self._env["PUBSUB_EMULATOR_HOST"] = bench.stack.env["PUBSUB_EMULATOR_HOST"]
            self._env["COMPLETION_TOPIC"] = bench.stack.config.completion_topic
        self._dataset = dataset
        self._options = {"rate_limited": rate_limited, "downloads": downloads}
        self._log_path = log
        self._process: subprocess.Popen[str] | None = None
        self._runs = 0

    def __enter__(self) -> Instance:
        env = dict(self._env)
        for proxy in self._proxies():
            proxy.start()
        if self._storage is not None:
            env["STORAGE_EMULATOR_HOST"] = self._storage.url
        spec = {"env": self.bench.function_env(self._bigquery, self._dataset, **env), **self._options}
        inherited = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.benchmarks.worker", json.dumps(spec)],
                cwd=REPO,
                env=inherited,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=WORKER_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for proxy in self._proxies():
            proxy.stop()

    def run(
        self,
        scenario: str,
        variant: str,
        *,
        min_depth: int,
        request: dict[str, Any] | None = None,
        upload: dict[str, Any] | None = None,
        expected: str | None = None,
    ) -> Measured:
        """One run (a bootstrap request, or with `upload` a storage event) and what it cost."""
        if self._runs:
            time.sleep(IDLE)
        self._runs += 1
        for proxy in self._proxies():
            proxy.reset()
        out = self._ask({"upload": upload} if upload else {"request": request or {}})
        measured = Measured(
            scenario,
            variant,
            seconds=out["seconds"],
            latency=self.bench.latency,
            min_depth=min_depth,
            rss_mib=out["vm_hwm_kib"] / 1024,
            status=out["status"],
            actions=out["actions"],
            errors=out["errors"],
            expected=expected,
        )
        count_requests(self._bigquery.requests(), measured)
        if self._storage is not None:
            count_storage(self._storage.requests(), measured)
        chain = round_trip_chain(t for proxy in self._proxies() for t in proxy.timed())
        measured.round_trips = len(chain)
        measured.chain = [f"{r.method} {endpoint(r.path)} {r.status}" for r in chain]
        return measured

    def _proxies(self) -> Iterator[Proxy]:
        yield self._bigquery
        if self._storage is not None:
            yield self._storage

    def _ask(self, run: dict[str, Any]) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(run) + "\n")
            process.stdin.flush()
            answered, _, _ = select.select([process.stdout], [], [], WORKER_TIMEOUT)
            line = process.stdout.readline() if answered else ""
        except BrokenPipeError:
            line = ""
        if not line:
            process.kill()
            process.wait()
            tail = self._log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"benchmark worker failed ({process.returncode}):\n{tail}")
        return json.loads(line)
