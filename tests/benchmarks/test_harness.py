"""The benchmark's harness on a tiny scenario, so that `make bench` cannot rot: it counts what the
engine sends, in each variant, and its report sees the outcomes. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks import bqloop, report, scenarios, tables
from tests.benchmarks.harness import Bench, Measured, endpoint

pytestmark = pytest.mark.emulators

TABLES = 3
# Enough latency that requests the function sends together overlap in the proxies' records
# whatever the machine's scheduling, so the round trips counted are the function's ordering.
LATENCY = 0.1
DATASETS = "/bigquery/v2/projects/{p}/datasets"
TABLE = DATASETS + "/{d}/tables/{t}"


def test_harness_counts_the_requests_of_each_scenario(bigquery_stack, tmp_path):
    bench = Bench(tmp_path, latency=LATENCY, stack=bigquery_stack)
    folder, added = scenarios.generated_folders(tmp_path, TABLES)
    variants = [scenarios.default(None), scenarios.SEQUENTIAL]

    with bench:
        rows = scenarios.series(bench, f"{TABLES} generated tables", folder, variants, added_column=added)

    by = {(r.scenario.split(",")[0], r.variant): r for r in rows}
    assert len(by) == 6
    fresh, noop, patched = (by[(step, "default")] for step in ("fresh", "nothing to do", "one column added"))
    assert fresh.actions == {"created": TABLES}
    assert fresh.by_endpoint[f"POST {DATASETS}"] == 1
    assert fresh.by_endpoint[f"POST {DATASETS}/{{d}}/tables"] == fresh.inserts == TABLES
    assert fresh.writes == 1 + TABLES
    assert fresh.reads <= 1 + TABLES  # the dataset, and the tables read before it was known missing
    assert noop.actions == {"unchanged": TABLES}
    assert (noop.reads, noop.writes) == (1 + TABLES, 0)
    assert noop.by_endpoint == {f"GET {DATASETS}/{{d}}": 1, f"GET {TABLE}": TABLES}
    assert patched.actions == {"updated": TABLES}
    assert patched.by_endpoint == {
        f"GET {DATASETS}/{{d}}": 1,
        f"GET {TABLE}": TABLES,
        f"PATCH {TABLE}": TABLES,
    }
    # Round trips one after another: the dependency chain's, no more (the dataset read with the
    # tables; fresh: then create it, then the tables; one column added: then the patches).
    assert (fresh.round_trips, noop.round_trips, patched.round_trips) == (3, 1, 2)
    assert [r.chain for r in (noop, patched)] == [
        [f"GET {DATASETS}/{{d}} 200"],
        [f"GET {DATASETS}/{{d}} 200", f"PATCH {TABLE} 200"],
    ]
    for row in rows:
        assert row.rejected == row.repeated_reads == 0
        assert row.rss_mib is not None and row.rss_mib > 0
        assert row.limit is not None and row.depth is not None
        sequential = row.variant == scenarios.SEQUENTIAL.name
        assert (row.baseline is None) == sequential
        if not sequential:
            assert row.baseline.scenario == row.scenario
    assert report.outcome_problems(rows) == []
    assert report.table(rows).count("\n") == len(rows) + 1
    noop_target = report.targets(rows, TABLES, "default")[0]
    assert noop_target.met, noop_target


def test_depth_targets_are_judged_on_the_round_trips_and_show_the_wall_depth_too():
    def row(instance: str, seconds: float, round_trips: int) -> Measured:
        return Measured(
            f"nothing to do, {instance} instance, 8 {report.BUCKET}",
            "default",
            seconds,
            latency=0.2,
            min_depth=1,
            round_trips=round_trips,
        )

    # The emulator's own time makes the cold run 3.2 latencies long; it made 2 round trips.
    rows = [row("cold", 0.64, 2), row("warm", 0.2, 2)]

    cold, warm = (t for t in report.targets(rows, 8, "default") if "nothing to do, 8" in t.text)

    assert cold.met is True and "2 round trips one after another (wall depth 3.2)" in cold.detail
    assert warm.met is False and "2 round trips one after another (wall depth 1.0)" in warm.detail
    assert "round trips" in report.table(rows).splitlines()[0]


def test_endpoint_names_the_shape_of_a_path():
    path = "/bigquery/v2/projects/p1/datasets/tenants/tables/tenant_profiles"
    assert endpoint(path) == TABLE


def test_the_bq_loop_script_creates_the_dataset_then_every_table(tmp_path):
    folder = tables.bundled(tmp_path / "schemas")

    text = bqloop.script(folder, "proj", "ds", "http://127.0.0.1:1", Path("/sdk/bigquery.json"))

    lines = [line for line in text.splitlines() if line.startswith("$BQ ")]
    assert len(lines) == 1 + tables.table_count(folder)
    assert "--dataset" in lines[0] and lines[0].endswith("proj:ds >/dev/null")
    usage = next(line for line in lines if "ds.tenant_usage_quotas" in line)
    assert "--time_partitioning_field=usage_date" in usage
    assert "--clustering_fields=tenant_id,usage_date" in usage
    assert all(" mk -f " in line for line in lines)


def test_generated_tables_are_valid_and_a_third_partitioned(tmp_path):
    from function.schema_files import load_declared_state

    folder = tables.generated(tmp_path / "g", 30)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}

    declared = load_declared_state(files)

    assert len(declared.tables) == 30
    partitioned = [t for t in declared.tables.values() if t.partitioning is not None]
    assert len(partitioned) == 10
    assert all(t.clustering for t in partitioned)


def test_bucket_scenarios_list_once_and_download_only_what_an_instance_lacks(
    bigquery_stack, storage_stack, tmp_path
):
    bench = Bench(tmp_path, latency=LATENCY, stack=bigquery_stack, storage=storage_stack)
    folder = tables.generated(tmp_path / "g", TABLES)
    objects = TABLES + 1  # and the manifest

    with bench:
        rows = scenarios.bucket_series(bench, f"{TABLES} {report.BUCKET}", folder, [scenarios.default(None)])

    by = {r.scenario.rsplit(",", 1)[0]: r for r in rows}
    assert list(by) == [
        "fresh, cold instance",
        "fresh, warm instance",
        "nothing to do, cold instance",
        "nothing to do, warm instance",
        "one column added, cold instance",
        "one column added, warm instance",
    ]  # no upload event: this bench has no Pub/Sub for its completion event
    storage = {step: (r.listings, r.downloads) for step, r in by.items()}
    assert storage == {
        "fresh, cold instance": (1, objects),
        "fresh, warm instance": (1, 0),  # the same generations: the held files
        "nothing to do, cold instance": (1, objects),
        "nothing to do, warm instance": (1, 0),
        "one column added, cold instance": (1, objects),
        "one column added, warm instance": (1, TABLES),  # the manifest did not change
    }
    for step in ("fresh, cold instance", "fresh, warm instance"):
        fresh = by[step]
        assert fresh.actions == {"created": TABLES}
        assert fresh.by_endpoint[f"POST {DATASETS}"] == 1
        assert fresh.inserts == fresh.writes - 1 == TABLES
    for step in ("nothing to do, cold instance", "nothing to do, warm instance"):
        noop = by[step]
        assert noop.actions == {"unchanged": TABLES}
        assert (noop.reads, noop.writes) == (1 + TABLES, 0)
    for step in ("one column added, cold instance", "one column added, warm instance"):
        patched = by[step]
        assert patched.actions == {"updated": TABLES}
        assert (patched.reads, patched.by_endpoint[f"PATCH {TABLE}"], patched.writes) == (
            1 + TABLES,
            TABLES,
            TABLES,
        )
    # Round trips one after another, per step and instance: exactly the dependency chain's
    # (scenarios.BUCKET_STEPS). A warm instance with nothing to do lists the prefix while it
    # reads the dataset and the tables it holds: one round trip. A cold one lists, then
    # downloads the files while it reads the listed tables: two.
    depths = {step: r.round_trips for step, r in by.items()}
    assert depths == {
        "fresh, cold instance": 4,  # list -> download -> create the dataset -> create the tables
        "fresh, warm instance": 3,  # list (nothing to download) -> create the dataset -> the tables
        "nothing to do, cold instance": 2,
        "nothing to do, warm instance": 1,
        "one column added, cold instance": 3,  # list -> download -> patch
        "one column added, warm instance": 3,  # list -> download the changed files -> patch
    }
    assert all(r.round_trips == r.min_depth for r in rows)
    for row in rows:
        assert row.rejected == row.repeated_reads == 0
    assert report.outcome_problems(rows) == []
