"""The benchmark's scenarios: engine runs in each variant, interleaved so that every comparison
is measured in the same run under the same conditions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import tables
from .harness import Bench, Measured

FRESH_DEPTH = 3  # get the dataset (tables read alongside) -> create it -> create the tables
NOOP_DEPTH = 1  # every read at once
PATCH_DEPTH = 2  # read -> patch


@dataclass(frozen=True)
class Variant:
    name: str
    concurrency: int | None  # None: the function's default (BOOTSTRAP_CONCURRENCY unset)
    rate_limited: bool = True


SEQUENTIAL = Variant("sequential (concurrency 1)", 1)


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
        baseline = next((m for v, m in zip(variants, measured, strict=True) if v == SEQUENTIAL), None)
        for row in measured:
            if row is not baseline:
                row.baseline = baseline
        rows += measured
    return rows


def generated_folders(workdir: Path, count: int) -> tuple[Path, Path]:
    """`count` generated tables, and the same with one column added to each."""
    folder = tables.generated(workdir / f"generated-{count}", count)
    return folder, tables.with_added_column(folder, workdir / f"generated-{count}-added")
