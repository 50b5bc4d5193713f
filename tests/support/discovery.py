"""BigQuery's published REST schema, to check a request body where the emulator cannot show
what BigQuery would do with it (local-bigquery answers 200 to a field added inside a RECORD by
a patch, and ignores it).

The schema is BigQuery's discovery document as the Cloud SDK ships it
(`$SDK/platform/bq/discovery_next/bigquery.json`, the file `bq` itself reads); the Pub/Sub
emulator comes from the same SDK. `problems("Table", body)` lists every way a body does not fit
it: properties the resource does not have, JSON types (int64 values travel as decimal strings),
enums, and for each TableFieldSchema the required name and type, and the type and mode among
the values its own descriptions list.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from deploy.local.executables import sdk_root

RELATIVE_PATH = Path("platform/bq/discovery_next/bigquery.json")
_INT64 = re.compile(r"-?\d+")
# "Possible values include: * STRING * BYTES * INTEGER (or INT64) ... * RECORD (or STRUCT) * RANGE"
_LISTED_TYPE = re.compile(r"\* ([A-Z][A-Z0-9_]*)(?: \(or ([A-Z][A-Z0-9_]*)\))?")
# "Possible values include NULLABLE, REQUIRED and REPEATED."
_LISTED_MODES = re.compile(r"Possible values include ([A-Z, ]+?) and ([A-Z]+)\b")


def path() -> Path:
    return sdk_root() / RELATIVE_PATH


@functools.cache
def document() -> dict[str, Any]:
    file = path()
    if not file.is_file():
        raise FileNotFoundError(
            f"BigQuery's discovery document is not at {file}: the tests need the Cloud SDK "
            "(the same one that provides the Pub/Sub emulator)"
        )
    return json.loads(file.read_text())


def schema(name: str) -> dict[str, Any]:
    return document()["schemas"][name]


@functools.cache
def field_types() -> frozenset[str]:
    """The column types TableFieldSchema.type's description lists (aliases included)."""
    text = schema("TableFieldSchema")["properties"]["type"]["description"]
    return frozenset(name for pair in _LISTED_TYPE.findall(text) for name in pair if name)


@functools.cache
def field_modes() -> frozenset[str]:
    text = schema("TableFieldSchema")["properties"]["mode"]["description"]
    match = _LISTED_MODES.search(text)
    if match is None:
        raise ValueError(f"TableFieldSchema.mode's description no longer lists the modes: {text!r}")
    return frozenset([*(m.strip() for m in match[1].split(",")), match[2]])


def problems(name: str, value: Any, where: str = "") -> list[str]:
    """Every way `value` does not fit the discovery document's schema `name` ("Table", ...)."""
    return _check({"$ref": name}, value, where or name)


def _check(spec: dict[str, Any], value: Any, where: str) -> list[str]:
    if "$ref" in spec:
        ref = spec["$ref"]
        out = _check(schema(ref), value, where)
        if ref == "TableFieldSchema" and isinstance(value, dict):
            out += _field_rules(value, where)
        return out
    kind = spec.get("type")
    if value is None or kind == "any":
        return []  # null clears a property in a patch
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where}: an object expected, got {value!r}"]
        out: list[str] = []
        properties = spec.get("properties")
        extra = spec.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                out += _check(properties[key], item, f"{where}.{key}")
            elif extra is not None:
                out += _check(extra, item, f"{where}[{key!r}]")
            else:
                out.append(f"{where}: no property {key!r} in BigQuery's schema")
        return out
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: an array expected, got {value!r}"]
        return [p for i, item in enumerate(value) for p in _check(spec["items"], item, f"{where}[{i}]")]
    if kind == "string":
        if spec.get("format") in ("int64", "uint64"):
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, str) and _INT64.fullmatch(value) is not None
            )
            return [] if ok else [f"{where}: an int64 expected, got {value!r}"]
        if not isinstance(value, str):
            return [f"{where}: a string expected, got {value!r}"]
        if "enum" in spec and value not in spec["enum"]:
            return [f"{where}: {value!r} is not one of {spec['enum']}"]
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: a boolean expected, got {value!r}"]
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: an integer expected, got {value!r}"]
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: a number expected, got {value!r}"]
    return [f"{where}: the schema's type {kind!r} is not understood by this check"]


def _field_rules(field: dict[str, Any], where: str) -> list[str]:
    out = [f"{where}: {key!r} is required" for key in ("name", "type") if not field.get(key)]
    if field.get("type") and str(field["type"]).upper() not in field_types():
        out.append(f"{where}: type {field['type']!r} is not one of {sorted(field_types())}")
    if field.get("mode") and str(field["mode"]).upper() not in field_modes():
        out.append(f"{where}: mode {field['mode']!r} is not one of {sorted(field_modes())}")
    return out
