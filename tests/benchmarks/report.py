"""The benchmark's output: one table of measured rows, and the issue's targets checked."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .harness import Measured

COLUMNS = (
    "scenario",
    "variant",
    "wall s",
    "requests (r+w)",
    "GCS (list+get)",
    "403s",
    "wall depth",
    "round trips",
    "limit s",
    "x limit",
    "RSS MiB",
    "vs baseline",
)
NOOP_WRITES = 0
FRESH_8_DEPTH = 5.0
OVER_LIMIT = 1.3
RSS_MIB = 200.0
BUCKET_NOOP_DEPTH = {"cold": 2.5, "warm": 1.5}  # nothing to do, 8 tables from a bucket
UPLOAD_DEPTH = 3.0  # one table's upload event, to its completion event
BUCKET = "tables from a bucket"


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cells(row: Measured) -> list[str]:
    ratio = row.ratio
    return [
        row.scenario,
        row.variant,
        _number(row.seconds),
        f"{row.requests} ({row.reads}+{row.writes})",
        "-" if row.listings is None else f"{row.listings}+{row.downloads}",
        str(row.rejected),
        _number(row.depth, 1),
        "-" if row.round_trips is None else str(row.round_trips),
        _number(row.limit),
        _number(row.over_limit),
        _number(row.rss_mib, 0),
        "-" if ratio is None else f"{ratio:.2f}x",
    ]


def table(rows: Iterable[Measured]) -> str:
    """A Markdown table (readable as is in a terminal, pasteable in the README)."""
    body = [cells(r) for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in body)) for i, c in enumerate(COLUMNS)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line(list(COLUMNS)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(values) for values in body]
    return "\n".join(out)


def _deep(row: Measured) -> str:
    """Both depths of a run: the round trips it made one after another (what a depth target is
    judged on) and its wall time over the latency (the user's time, the emulator's included)."""
    rounds = "-" if row.round_trips is None else str(row.round_trips)
    return f"{rounds} round trips one after another (wall depth {_number(row.depth, 1)})"


def _within(depth: float) -> Callable[[Measured], bool]:
    """A "round trips deep" target, judged on the round trips made one after another: they count
    the function's ordering of its requests, which the emulator's own time per request does not
    change (that time goes into the wall depth, shown beside it). With no latency injected there
    is nothing to count in, as for the wall depth."""
    return lambda r: r.latency <= 0 or (r.round_trips is not None and r.round_trips <= depth)


@dataclass(frozen=True)
class Target:
    text: str
    met: bool | None  # None: not measured in this run
    detail: str

    def __str__(self) -> str:
        state = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        return f"[{state}] {self.text}: {self.detail}"


def targets(rows: list[Measured], tables: int, default_variant: str) -> list[Target]:
    """The issue's targets, one line each, checked on the rows they are about: those of the
    measured (default) variant, and for the rate-limit errors every engine run."""
    engine = [r for r in rows if r.min_depth is not None]
    measured = [r for r in engine if r.variant == default_variant]
    noop = [r for r in measured if r.scenario.startswith("nothing to do")]
    fresh8 = [r for r in measured if r.scenario == "fresh, 8 bundled tables"]
    many = [r for r in measured if r.scenario.endswith((f"{tables} generated tables", f"{tables} {BUCKET}"))]
    uploads = [r for r in measured if r.scenario.startswith("upload event")]

    def noop_from_bucket(instance: str) -> list[Measured]:
        return [r for r in noop if r.scenario == f"nothing to do, {instance} instance, 8 {BUCKET}"]

    def target(
        text: str,
        about: list[Measured],
        ok: Callable[[Measured], bool],
        show: Callable[[Measured], str],
        notable: Callable[[Measured], bool] | None = None,
    ) -> Target:
        """Met when `ok` holds for every row `about`. The detail shows each row, or with
        `notable` (a target about every run) the count and the rows it picks or that fail."""
        if not about:
            return Target(text, None, "-")
        shown = about if notable is None else [r for r in about if notable(r) or not ok(r)]
        detail = "; ".join(f"{r.scenario} ({r.variant}): {show(r)}" for r in shown)
        if notable is not None:
            detail = f"{len(about)} engine runs" + (f"; {detail}" if detail else "")
        return Target(text, all(ok(r) for r in about), detail)

    return [
        target(
            "nothing to do: no write, at most one read per table plus one for the dataset",
            noop,
            lambda r: r.writes == NOOP_WRITES and r.reads <= _tables_of(r) + 1,
            lambda r: f"{r.writes} writes, {r.reads} reads",
        ),
        target(
            f"fresh bootstrap of the eight tables within {FRESH_8_DEPTH:g} round trips",
            fresh8,
            _within(FRESH_8_DEPTH),
            _deep,
        ),
        target(
            f"every {tables}-table run within {OVER_LIMIT}x of its physical limit",
            many,
            lambda r: r.over_limit is not None and r.over_limit <= OVER_LIMIT,
            lambda r: f"{_number(r.over_limit)}x",
        ),
        *(
            target(
                f"nothing to do, 8 {BUCKET}: a {instance} instance within {depth:g} round trips",
                noop_from_bucket(instance),
                _within(depth),
                _deep,
            )
            for instance, depth in BUCKET_NOOP_DEPTH.items()
        ),
        target(
            f"an upload event for one table within {UPLOAD_DEPTH:g} round trips to its completion event",
            uploads,
            _within(UPLOAD_DEPTH),
            _deep,
        ),
        target(
            "no rate-limit error reaches the caller",
            engine,
            lambda r: r.status != "raised",
            lambda r: f"{r.rejected} 403s, all retried" if r.status != "raised" else "raised",
            notable=lambda r: r.rejected > 0,
        ),
        target(
            "no repeated read of a resource",
            engine,
            lambda r: r.repeated_reads == 0,
            lambda r: f"{r.repeated_reads} repeated",
            notable=lambda r: False,
        ),
        target(
            f"peak RSS of the {tables}-table runs under {RSS_MIB:g} MiB (VmHWM)",
            many,
            lambda r: r.rss_mib is not None and r.rss_mib < RSS_MIB,
            lambda r: f"{_number(r.rss_mib, 0)} MiB",
        ),
    ]


def outcome_problems(rows: list[Measured]) -> list[str]:
    """Runs whose outcome was not what the scenario means (a benchmark of a wrong run is void)."""
    problems = []
    for row in rows:
        if row.min_depth is None:
            if row.status not in ("", "ok", "answered"):
                problems.append(f"{row.scenario} / {row.variant}: {row.status}")
            continue
        if set(row.actions) != {row.expected} or row.status != "succeeded":
            problems.append(f"{row.scenario} / {row.variant}: {row.status} {row.actions} {row.errors}")
    return problems


def _tables_of(row: Measured) -> int:
    return int(row.scenario.rsplit(", ", 1)[1].split()[0])
