"""Schema folders for the benchmark: the bundled eight tables, or N generated ones.

Generated tables are deterministic (seeded), with varied schemas: 4 to 40 columns of every
scalar type, REQUIRED, NULLABLE and REPEATED modes, nested RECORDs, descriptions; every third
table is partitioned by DAY on a timestamp or date column and clustered on 1 to 4 columns.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "schemas"
MANIFEST = "bootstrap.yaml"
SCALARS = ("STRING", "INT64", "FLOAT64", "NUMERIC", "BOOL", "TIMESTAMP", "DATE", "DATETIME", "BYTES")
CLUSTERABLE = ("STRING", "INT64", "NUMERIC", "BOOL", "DATE", "TIMESTAMP")
ADDED_COLUMN = {"name": "bench_added", "type": "STRING", "mode": "NULLABLE", "description": "Added."}


def bundled(folder: Path) -> Path:
    """A copy of the bundled schemas (eight tables and their manifest)."""
    shutil.copytree(BUNDLED, folder, dirs_exist_ok=True)
    return folder


def generated(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` generated tables and a manifest that partitions and clusters a third of them."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, Any] = {}
    for index in range(count):
        name = f"bench_table_{index:04d}"
        partitioned = index % 3 == 0
        schema = _schema(rng, partitioned)
        (folder / f"{name}.json").write_text(json.dumps(schema, indent=1))
        entry: dict[str, Any] = {
            "description": f"Generated table {index} for the benchmark.",
            "labels": {"bench": "true", "group": f"g{index % 7}"},
        }
        if partitioned:
            entry["time_partitioning"] = {"type": "DAY", "field": schema[0]["name"]}
            top = [c["name"] for c in schema if c["type"] in CLUSTERABLE and c["mode"] != "REPEATED"]
            entry["clustering"] = top[: rng.randint(1, 4)]
        tables[name] = entry
    manifest = {
        "dataset": {"description": "Benchmark dataset.", "labels": {"bench": "true"}},
        "tables": tables,
    }
    (folder / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=True))
    return folder


def with_added_column(source: Path, folder: Path, name: str = ADDED_COLUMN["name"]) -> Path:
    """A copy of `source` where every table has one more NULLABLE column `name`, at the end."""
    shutil.copytree(source, folder, dirs_exist_ok=True)
    for path in sorted(folder.glob("*.json")):
        path.write_bytes(added_column(path.read_bytes(), name))
    return folder


def added_column(schema: bytes, name: str) -> bytes:
    """A table's schema file with one more NULLABLE column `name`, at the end."""
    columns = json.loads(schema)
    columns.append({**ADDED_COLUMN, "name": name})
    return json.dumps(columns, indent=1).encode()


def files(folder: Path) -> dict[str, bytes]:
    """The schema files of `folder`, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def table_count(folder: Path) -> int:
    return len(list(folder.glob("*.json")))


def _schema(rng: random.Random, partitioned: bool) -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = []
    if partitioned:  # the partitioning column first, always REQUIRED
        columns.append(_column("event_time", rng.choice(("TIMESTAMP", "DATE")), "REQUIRED"))
    columns.append(_column("id", "STRING", "REQUIRED"))
    for index in range(rng.randint(2, 36)):
        roll = rng.random()
        if roll < 0.08:
            fields = [_column(f"f{j}", rng.choice(SCALARS), "NULLABLE") for j in range(rng.randint(1, 6))]
            mode = "REPEATED" if rng.random() < 0.5 else "NULLABLE"
            columns.append(_column(f"rec_{index}", "RECORD", mode, fields))
        else:
            mode = "REPEATED" if roll > 0.92 else "NULLABLE"
            columns.append(_column(f"c_{index}", rng.choice(SCALARS), mode))
    return columns


def _column(name: str, kind: str, mode: str, fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "mode": mode, "description": f"{kind} {name}"}
    if fields:
        column["fields"] = fields
    return column
