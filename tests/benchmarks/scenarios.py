"""The benchmark's scenarios: engine runs in each variant, interleaved so that every comparison
is measured in the same run under the same conditions."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import tables
from .harness import Bench, Instance, Measured
from .tables import MANIFEST

FRESH_DEPTH = 3  # get the dataset (tables read alongside) -> create it -> create the tables
NOOP_DEPTH = 1  # every read at once
PATCH_DEPTH = 2  # read -> patch


@dataclass(frozen=True)
class Variant:
    name: str
    concurrency: int | None  # None: the function's default (BOOTSTRAP_CONCURRENCY unset)
    rate_limited: bool = True
    downloads: int | None = None  # objects downloaded at once (None: the function's bound)


SEQUENTIAL = Variant("sequential (concurrency 1)", 1, downloads=1)


def default(concurrency: int | None) -> Variant:
    return Variant("default" if concurrency is None else f"concurrency {concurrency}", concurrency)


def no_limiter(concurrency: int | None) -> Variant:
    return Variant(
        f"{default(concurrency).name}, limiter off (403s retried)", concurrency, rate_limited=False
    )


def series(
    bench: Bench,
    label: str,
    schemas: Path,
    variants: list[Variant],
    *,
    added_column: Path | None = None,
) -> list[Measured]:
    """Fresh bootstrap, then the same with nothing to do, then (if `added_column`) the same
    with one column added to every table: each in every variant, on a dataset per variant.
    The first variant is the one measured; the others are baselines it is compared with."""
    datasets = {v: bench.dataset("bench") for v in variants}
    steps = [
        ("fresh", schemas, FRESH_DEPTH, "created"),
        ("nothing to do", schemas, NOOP_DEPTH, "unchanged"),
    ]
    if added_column is not None:
        steps.append(("one column added", added_column, PATCH_DEPTH, "updated"))
    rows: list[Measured] = []
    for step, folder, depth, expected in steps:
        measured = [
            bench.run_engine(
                f"{step}, {label}",
                variant.name,
                schemas=folder,
                dataset=datasets[variant],
                min_depth=depth,
                concurrency=variant.concurrency,
                rate_limited=variant.rate_limited,
                expected=expected,
            )
            for variant in variants
        ]
        rows += _compared(variants, measured)
    return rows


def generated_folders(workdir: Path, count: int) -> tuple[Path, Path]:
    """`count` generated tables, and the same with one column added to each."""
    folder = tables.generated(workdir / f"generated-{count}", count)
    return folder, tables.with_added_column(folder, workdir / f"generated-{count}-added")


# Round trips on the dependency chain of a run from a bucket, on a cold and on a warm instance.
# A cold instance lists the prefix, then downloads every file while it reads the listed tables;
# a warm one reads the tables it held while it lists, and downloads only what changed.
BUCKET_STEPS = {
    "fresh": (4, 3, "created"),  # (list ->) download -> create the dataset -> create the tables
    "nothing to do": (2, 1, "unchanged"),  # (list ->) download, every read alongside
    "one column added": (3, 3, "updated"),  # list -> download the changed files -> patch
    # cold: list (the uploaded generation read alongside) -> download the others -> patch; warm:
    # list and read the uploaded generation -> patch; then the completion event (not proxied)
    "upload event (one table)": (3, 2, "updated"),
}


@dataclass
class _Lane:
    """One variant's prefix in the schema bucket, its dataset, and what the prefix holds."""

    variant: Variant
    prefix: str
    dataset: str
    files: dict[str, bytes]


def bucket_series(bench: Bench, label: str, schemas: Path, variants: list[Variant]) -> list[Measured]:
    """The deployed configuration: the schemas in a bucket (SCHEMA_SOURCE=gs://...), a prefix and
    a dataset per variant. Each step of `series`, and an upload event for one table, on a cold
    instance (a new process's first run) and on a warm one (a later run of the same process):
    fresh (the dataset dropped before the warm run), nothing to do, one column added to every
    table (uploaded before the run), and (when the bench has Pub/Sub for the completion event)
    one table's file uploaded with a column more, its finalized event through the function's
    handler to the completion event."""
    lanes = [_Lane(v, f"bench-{uuid.uuid4().hex[:8]}/", bench.dataset("bucket"), {}) for v in variants]
    for lane in lanes:
        _upload(bench, lane, tables.files(schemas))
    rows: list[Measured] = []
    table = sorted(n for n in lanes[0].files if n.endswith(".json"))[0]

    def step(name: str, instances: dict[str, Instance], warm: bool, upload: bool = False) -> None:
        cold_depth, warm_depth, expected = BUCKET_STEPS[name]
        measured = []
        for lane in lanes:
            event = None
            if upload:
                changed = tables.added_column(lane.files[table], f"bench_upload_{len(rows)}")
                generation = _upload(bench, lane, {table: changed})[table]
                event = {"bucket": bench.bucket, "name": lane.prefix + table, "generation": generation}
            measured.append(
                instances[lane.prefix].run(
                    f"{name}, {'warm' if warm else 'cold'} instance, {label}",
                    lane.variant.name,
                    min_depth=warm_depth if warm else cold_depth,
                    upload=event,
                    expected=expected,
                )
            )
        rows.extend(_compared(variants, measured))

    def add_column(name: str) -> None:
        for lane in lanes:
            _upload(
                bench, lane, {n: tables.added_column(d, name) for n, d in lane.files.items() if n != MANIFEST}
            )

    with _instances(bench, lanes) as instances:
        step("fresh", instances, warm=False)
        for lane in lanes:
            bench.drop_dataset(lane.dataset)
        step("fresh", instances, warm=True)
    with _instances(bench, lanes) as instances:
        step("nothing to do", instances, warm=False)
        step("nothing to do", instances, warm=True)
        add_column("bench_added_1")
        step("one column added", instances, warm=True)
    add_column("bench_added_2")
    with _instances(bench, lanes) as instances:
        step("one column added", instances, warm=False)
        if bench.publishes:  # the completion event goes to the Pub/Sub emulator
            step("upload event (one table)", instances, warm=True, upload=True)
    if bench.publishes:
        with _instances(bench, lanes) as instances:
            step("upload event (one table)", instances, warm=False, upload=True)
    order = {name: index for index, name in enumerate(BUCKET_STEPS)}
    return sorted(rows, key=lambda r: (order[r.scenario.split(",")[0]], "warm" in r.scenario))


@contextlib.contextmanager
def _instances(bench: Bench, lanes: list[_Lane]) -> Iterator[dict[str, Instance]]:
    """A new function instance per lane, reading its prefix."""
    with contextlib.ExitStack() as stack:
        yield {
            lane.prefix: stack.enter_context(
                bench.instance(
                    schemas=f"gs://{bench.bucket}/{lane.prefix}",
                    dataset=lane.dataset,
                    concurrency=lane.variant.concurrency,
                    rate_limited=lane.variant.rate_limited,
                    downloads=lane.variant.downloads,
                )
            )
            for lane in lanes
        }


def _upload(bench: Bench, lane: _Lane, files: dict[str, bytes]) -> dict[str, int]:
    lane.files.update(files)
    return bench.upload(lane.prefix, files)


def _compared(variants: list[Variant], measured: list[Measured]) -> list[Measured]:
    """The rows of one step, each compared with the sequential variant's."""
    baseline = next((m for v, m in zip(variants, measured, strict=True) if v == SEQUENTIAL), None)
    for row in measured:
        if row is not baseline:
            row.baseline = baseline
    return measured
