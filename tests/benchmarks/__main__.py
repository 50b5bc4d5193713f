"""`python -m tests.benchmarks` (`make bench`): the engine's cost in BigQuery round trips.

The BigQuery emulator (local-bigquery) runs behind a local proxy that adds a latency to every
request (default 200 ms, the order of a real BigQuery metadata call), counts requests, and
answers 403 rateLimitExceeded above BigQuery's per-user rates. Each scenario runs in the default
configuration and in the sequential baseline (concurrency 1, one table after another), in the
same run. Prints one table; see the README's Performance section for how to read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from function.config import Settings
from function.ratelimit import BIGQUERY_RATES, MARGIN

from . import bqloop, chart, coldstart, report, scenarios, tables
from .harness import REPO, Bench, Measured

SCENARIOS = ("bundled", "generated", "no-limiter", "bucket", "cold-start", "bq")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added to every request (0.2)")
    parser.add_argument("--tables", type=int, default=200, help="generated tables (200)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="BOOTSTRAP_CONCURRENCY of the measured variant (default: the function's default)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only these scenarios (repeatable): bundled (8 tables), generated (--tables), "
        "no-limiter (generated, client-side rate limiter off), bucket (the 8 tables and, without "
        "--quick, the generated ones from a bucket, cold and warm), cold-start, bq (bq mk -f loop)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="30 generated tables, the bucket scenarios on the 8 tables only, one repetition, fewer variants",
    )
    parser.add_argument("--repetitions", type=int, default=5, help="cold-start repetitions (median)")
    parser.add_argument(
        "--bq-generated", action="store_true", help="also run the bq loop on the generated tables"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--chart", type=Path, help="also write an SVG chart of wall time against the physical limit"
    )
    parser.add_argument("--verbose", action="store_true", help="requests by method and path, per row")
    args = parser.parse_args(argv)
    if args.quick:
        args.tables = min(args.tables, 30)
        args.repetitions = 1
    return args


def run(args: argparse.Namespace, workdir: Path) -> list[Measured]:
    chosen = set(args.only or SCENARIOS)
    if args.quick and not args.only:
        chosen.discard("no-limiter")
    measured_variant = scenarios.default(args.concurrency)
    rows: list[Measured] = []
    # Pub/Sub for the completion events: the cold start's, and the bucket's upload events.
    with Bench(workdir, args.latency, pubsub=bool({"cold-start", "bucket"} & chosen)) as bench:
        bundled = tables.bundled(workdir / "bundled")
        if "bundled" in chosen:
            _say(f"8 bundled tables: {measured_variant.name} and sequential")
            rows += scenarios.series(
                bench, "8 bundled tables", bundled, [measured_variant, scenarios.SEQUENTIAL]
            )
        if {"generated", "no-limiter"} & chosen:
            bench.empty_emulator()
            folder, added = scenarios.generated_folders(workdir, args.tables)
            variants = [measured_variant] if "generated" in chosen else []
            if "generated" in chosen:
                variants.append(scenarios.SEQUENTIAL)
            if "no-limiter" in chosen:
                variants.append(scenarios.no_limiter(args.concurrency))
            _say(f"{args.tables} generated tables: {', '.join(v.name for v in variants)}")
            label = f"{args.tables} generated tables"
            rows += scenarios.series(bench, label, folder, variants, added_column=added)
        if "bucket" in chosen:
            sets = [("8 tables from a bucket", bundled)]
            if not args.quick:
                sets.append(
                    (
                        f"{args.tables} tables from a bucket",
                        scenarios.generated_folders(workdir, args.tables)[0],
                    )
                )
            for label, folder in sets:
                _say(f"{label}: {measured_variant.name} and sequential, cold and warm instances")
                bench.empty_emulator()
                rows += scenarios.bucket_series(
                    bench, label, folder, [measured_variant, scenarios.SEQUENTIAL]
                )
        if "cold-start" in chosen:
            _say("cold start")
            bench.empty_emulator()
            dataset = bench.dataset("cold")
            bench.run_engine(
                "prepare", "-", schemas=bundled, dataset=dataset, min_depth=scenarios.FRESH_DEPTH
            )
            rows += coldstart.measure(bench, dataset, args.repetitions, args.concurrency)
        if "bq" in chosen:
            rows += _bq(bench, args, workdir, bundled, rows)
    return rows


def _bq(
    bench: Bench, args: argparse.Namespace, workdir: Path, bundled: Path, rows: list[Measured]
) -> list[Measured]:
    try:
        root = bqloop.sdk_root()
    except bqloop.BqUnavailable as exc:
        _say(f"bq loop skipped: {exc}")
        return []
    sets = [("8 bundled tables", bundled)]
    if args.bq_generated:
        sets.append((f"{args.tables} generated tables", scenarios.generated_folders(workdir, args.tables)[0]))
    out = []
    for label, folder in sets:
        _say(f"bq mk -f loop, {label}")
        bench.empty_emulator()
        dataset = bench.dataset("bq")
        steps = [("fresh", True), ("nothing to do", not args.quick)]
        for step, wanted in steps:
            if not wanted:
                continue
            row = bqloop.run_loop(bench, f"{step}, {label}", folder, dataset, root)
            # Compared with the function's run of the same scenario, when it was measured.
            measured = scenarios.default(args.concurrency).name
            row.baseline = next(
                (r for r in rows if (r.scenario, r.variant) == (row.scenario, measured)), None
            )
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    (REPO / ".bench").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=REPO / ".bench"))
    started = time.monotonic()
    try:
        rows = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(_header(args, time.monotonic() - started))
    print()
    print(report.table(rows))
    if args.verbose:
        for row in rows:
            print(f"\n{row.scenario} / {row.variant}:")
            for endpoint, count in row.by_endpoint.items():
                print(f"  {count:5d}  {endpoint}")
            if row.chain:
                print(f"  round trips one after another: {' -> '.join(row.chain)}")
    measured = scenarios.default(args.concurrency).name
    print("\nTargets:")
    for target in report.targets(rows, args.tables, measured):
        print(f"- {target}")
    problems = report.outcome_problems(rows)
    for problem in problems:
        print(f"- [WRONG OUTCOME] {problem}")
    if args.json:
        args.json.write_text(json.dumps([_jsonable(r) for r in rows], indent=1))
    if args.chart:
        title = f"{measured}: wall time and physical limit, {args.latency * 1000:.0f} ms per request"
        chart.write(args.chart, rows, measured, title)
    return 1 if problems else 0


def _header(args: argparse.Namespace, elapsed: float) -> str:
    concurrency = args.concurrency or Settings(project="p").concurrency
    rates = ", ".join(f"{r.name} {r.requests}/{r.window:g}s" for r in BIGQUERY_RATES)
    return (
        f"latency {args.latency * 1000:.0f} ms per request; BigQuery rate limits enforced by the proxy "
        f"(403 rateLimitExceeded); client-side limiter {rates}, margin {MARGIN * 1000:.0f} ms; "
        f"BOOTSTRAP_CONCURRENCY {concurrency}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; benchmark took {elapsed:.0f} s.\n"
        "wall depth = wall / latency: the user's time, the emulator's own time per request included. "
        "round trips = the longest chain of requests (BigQuery's and Cloud Storage's) each sent after "
        "the previous one was answered, from the proxies' records: the function's ordering, whatever "
        'the emulator\'s speed; the "round trips" targets are judged on it, both shown. Not counted: '
        "an upload event's Pub/Sub publish (not behind a proxy). "
        "limit = max(minimal depth x latency, admitted requests / 100 per s, "
        "admitted tables.insert / 10 per s). vs baseline: the sequential run of the same scenario "
        "(cold start: a process that only imports the client libraries; bq loop: the function's run)."
    )


def _jsonable(row: Measured) -> dict[str, object]:
    data = asdict(row)
    data["baseline"] = row.baseline.variant if row.baseline else None
    data.update(depth=row.depth, limit=row.limit, over_limit=row.over_limit, ratio=row.ratio)
    return data


def _say(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
