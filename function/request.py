"""The bootstrap request of the contract: parsing and validation (pure). Unknown fields and
non-boolean flags are errors, never ignored ("false" is a string, and truthy).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from .errors import RequestError
from .model import BIGQUERY_NAME

MAX_DATA_BYTES = 64 * 1024  # a request is a few hundred bytes; anything huge is a mistake
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/#@+=-]{1,256}$")
FIELDS = {
    "request_id": str,
    "tables": list,
    "dry_run": bool,
    "force_recreate_tables": bool,
    "force_recreate_dataset": bool,
    "confirm": str,
    "accept_losses": list,
    "drop_columns": bool,
    "rows": str,
}
LATER_FIELDS = {"drop_columns": False, "rows": "keep"}
ROWS = ("keep", "discard")  # what a forced recreation of a table does with its rows


@dataclass(frozen=True)
class BootstrapRequest:
    request_id: str
    tables: tuple[str, ...] | None = None  # None: every declared table
    dry_run: bool = False
    force_recreate_tables: bool = False
    force_recreate_dataset: bool = False
    confirm: str | None = None
    # Objects a dataset recreation may delete although they cannot be backed up (views,
    # routines, models, ...): named one by one, never implied.
    accept_losses: tuple[str, ...] = ()
    # Consent to drop the columns that are no longer declared (their values are lost).
    drop_columns: bool = False
    # A forced recreation of a table: its rows carried across to the declared schema ("keep"),
    # or left in the backup only ("discard").
    rows: str = "keep"

    @property
    def destructive(self) -> bool:
        return self.force_recreate_tables or self.force_recreate_dataset or self.drop_columns

    @property
    def keeps_rows(self) -> bool:
        return self.force_recreate_tables and self.rows == "keep"

    @property
    def digest(self) -> str:
        """What the request asks for, without its id: the same id sent again with another body
        is a different request, which the ledger refuses."""
        body = {k: v for k, v in asdict(self).items() if k != "request_id"}
        # Fields added later count only when set, so that a request recorded before they existed
        # keeps its digest.
        for name, default in LATER_FIELDS.items():
            if body[name] == default:
                del body[name]
        return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def parse_request(data: bytes, default_id: str) -> BootstrapRequest:
    """Parse Pub/Sub message data; empty data (or `{}`) means "ensure every table"."""
    if len(data) > MAX_DATA_BYTES:
        raise RequestError(
            f"the message data is {len(data)} bytes; a bootstrap request is at most {MAX_DATA_BYTES}"
        )
    if not data.strip():
        return request_from_fields({}, default_id)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the message data is not JSON ({exc}); send a JSON object such as {{}}") from None
    except RecursionError:  # 64 KiB of "[" nests deeper than the parser recurses
        raise RequestError("the message data is not JSON this function reads (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise RequestError(f"the message data must be a JSON object, not a JSON {json_kind(doc)}")
    return request_from_fields(doc, default_id)


def request_from_fields(doc: dict[str, Any], default_id: str) -> BootstrapRequest:
    errors: list[str] = []
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        errors.append(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}")
    for name, kind in FIELDS.items():
        value = doc.get(name)
        if value is not None and not (
            isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        ):
            errors.append(f"{name} must be a {_type_words(kind)}, not {json.dumps(value)[:60]}")
    request_id = doc.get("request_id")
    if isinstance(request_id, str) and not REQUEST_ID.fullmatch(request_id):
        errors.append("request_id must be 1-256 characters: letters, digits and ._:/#@+=-")
    tables = doc.get("tables")
    if isinstance(tables, list):
        if not tables:
            errors.append("tables is empty; omit it to ensure every table, or name at least one")
        bad = [t for t in tables if not isinstance(t, str) or not BIGQUERY_NAME.fullmatch(t)]
        if bad:
            errors.append(f"tables holds invalid table names: {json.dumps(bad)[:200]}")
        elif len(set(tables)) != len(tables):
            errors.append("tables names a table twice")
    confirm = doc.get("confirm")
    whole_dataset = doc.get("force_recreate_dataset") is True
    forced = doc.get("force_recreate_tables") is True or whole_dataset
    destructive = forced or doc.get("drop_columns") is True
    if confirm is not None and not destructive and isinstance(confirm, str):
        errors.append(
            "confirm is given but no force flag is set (nor drop_columns); remove it, or set the flag "
            "it confirms"
        )
    rows = doc.get("rows")
    if isinstance(rows, str) and rows not in ROWS:
        errors.append(f'rows must be "keep" or "discard", not {json.dumps(rows)[:60]}')
    elif rows is not None and doc.get("force_recreate_tables") is not True:
        errors.append(
            "rows applies only to force_recreate_tables (a dataset recreation keeps the rows in its "
            "backups only); remove it"
        )
    if whole_dataset and tables is not None:
        errors.append(
            "force_recreate_dataset recreates every declared table, so it cannot take tables; "
            "remove tables, or use force_recreate_tables for a subset"
        )
    if destructive and doc.get("dry_run") is not True and request_id is None:
        errors.append(
            "a destructive request needs its own request_id (the message id changes when the same "
            "request is published again, so it cannot tell a redelivery from a new request)"
        )
    losses = doc.get("accept_losses")
    if isinstance(losses, list):
        if not whole_dataset:
            errors.append("accept_losses applies only to force_recreate_dataset; remove it")
        if not losses or not all(isinstance(n, str) and BIGQUERY_NAME.fullmatch(n) for n in losses):
            errors.append(
                "accept_losses must name at least one dataset object (a view, routine, model or "
                "other object that cannot be backed up)"
            )
    if errors:
        raise RequestError("invalid bootstrap request: " + "; ".join(errors))
    return BootstrapRequest(
        request_id=request_id or default_id,
        tables=tuple(tables) if tables else None,
        dry_run=bool(doc.get("dry_run", False)),
        force_recreate_tables=bool(doc.get("force_recreate_tables", False)),
        force_recreate_dataset=bool(doc.get("force_recreate_dataset", False)),
        confirm=confirm,
        accept_losses=tuple(sorted(set(losses))) if isinstance(losses, list) else (),
        drop_columns=bool(doc.get("drop_columns", False)),
        rows=rows if isinstance(rows, str) else "keep",
    )


def json_kind(value: Any) -> str:
    """What JSON calls the value's type (a user never wrote a Python "list" or "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _type_words(kind: type) -> str:
    return {str: "string", list: "list of names", bool: "boolean (true or false)"}[kind]
