"""The shell-script approach the function replaces: a loop of `bq mk -f` calls, one process per
resource, run by bash against the same proxy and emulator.

The Cloud SDK's `bq` works offline against the emulator: a dummy access token, any account,
`--api` pointing at the proxy (so its requests are counted too) and the discovery document
that ships with the SDK (`platform/bq/discovery_next/bigquery.json`). `mk -f` sends an insert
for every resource, answered 409 when it exists (and then never changes it: the loop cannot
add a column to an existing table).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.proxy import round_trip_depth

from .harness import Bench, Measured, count_requests

DISCOVERY = Path("platform/bq/discovery_next/bigquery.json")


class BqUnavailable(RuntimeError):
    """`bq` cannot be run against the emulator here; the message says why."""


def sdk_root() -> Path:
    gcloud = shutil.which("gcloud")
    bq = shutil.which("bq")
    if not gcloud or not bq:
        raise BqUnavailable("the Cloud SDK's gcloud and bq are not on PATH")
    out = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"],
        capture_output=True,
        text=True,
        check=False,
    )
    root = Path(out.stdout.strip())
    if out.returncode != 0 or not (root / DISCOVERY).is_file():
        raise BqUnavailable(f"no bundled BigQuery discovery document under {root or 'the SDK'}")
    return root


def script(schemas: Path, project: str, dataset: str, api: str, discovery: Path) -> str:
    """The loop as a shell script: the dataset, then one `bq mk -f --table` per schema file."""
    manifest: dict[str, Any] = yaml.safe_load((schemas / "bootstrap.yaml").read_text()) or {}
    bq = f"bq --api={api} --project_id={project} --discovery_file={discovery} --quiet --headless"
    ds = manifest.get("dataset") or {}
    lines = ["#!/bin/bash", "set -euo pipefail", f"BQ={shlex.quote(bq)}"]
    args = ["mk", "-f", "--dataset", "--location=US"]
    args += [f"--description={ds.get('description', '')}"]
    args += [f"--label={k}:{v}" for k, v in (ds.get("labels") or {}).items()]
    lines.append("$BQ " + shlex.join([*args, f"{project}:{dataset}"]) + " >/dev/null")
    tables = manifest.get("tables") or {}
    for path in sorted(schemas.glob("*.json")):
        entry = tables.get(path.stem) or {}
        args = ["mk", "-f", "--table"]
        if entry.get("description"):
            args.append(f"--description={entry['description']}")
        args += [f"--label={k}:{v}" for k, v in (entry.get("labels") or {}).items()]
        partitioning = entry.get("time_partitioning")
        if partitioning:
            args.append(f"--time_partitioning_type={partitioning.get('type', 'DAY')}")
            if partitioning.get("field"):
                args.append(f"--time_partitioning_field={partitioning['field']}")
            if partitioning.get("expiration_days"):
                args.append(f"--time_partitioning_expiration={int(partitioning['expiration_days'] * 86400)}")
        if entry.get("clustering"):
            args.append(f"--clustering_fields={','.join(entry['clustering'])}")
        if entry.get("require_partition_filter"):
            args.append("--require_partition_filter")
        lines.append(
            "$BQ " + shlex.join([*args, f"{project}:{dataset}.{path.stem}", str(path)]) + " >/dev/null"
        )
    return "\n".join(lines) + "\n"


def run_loop(bench: Bench, scenario: str, schemas: Path, dataset: str, root: Path) -> Measured:
    """Run the loop once through a fresh proxy; its wall time and requests."""
    home = bench.workdir / "bq"
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    token = home / "token"
    token.write_text("dummy-token")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    env.update(
        {
            "CLOUDSDK_CONFIG": str(config),
            "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
            "CLOUDSDK_CORE_ACCOUNT": "bench@example.com",
        }
    )
    with bench.proxy() as proxy:
        path = home / f"{dataset}.sh"
        path.write_text(script(schemas, bench.stack.config.project, dataset, proxy.url, root / DISCOVERY))
        started = time.perf_counter()
        done = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        records = proxy.requests()
        round_trips = round_trip_depth(proxy.timed())
    measured = Measured(
        scenario, "bq mk -f loop (shell script)", seconds, bench.latency, None, round_trips=round_trips
    )
    measured.status = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-300:]}"
    count_requests(records, measured)
    return measured
