"""Backups before any drop, and restores from them.

Before a forced recreation drops a table that holds rows, a copy job copies it into the backup
dataset (created on first use, in the same location, with a default table expiration so
backups expire on their own). The copy job's id is derived from the request and the table, so
a redelivered request finds its own earlier job instead of copying twice. If the backup fails,
the table is not dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from .bigquery_adapter import BigQueryAdapter
from .config import Settings
from .errors import PermanentError, TransientError

BACKUP_LABEL = "bootstrap-backup"


@dataclass(frozen=True)
class Backup:
    table: str  # the table that was backed up
    backup: str  # project.dataset.table of the copy
    rows: int
    created_at: str
    expires_at: str
    request_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "backup": self.backup,
            "rows": self.rows,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


class Backups:
    """The backup dataset of the deployment (BOOTSTRAP_BACKUP_DATASET, _TTL_DAYS)."""

    def __init__(self, bq: BigQueryAdapter, settings: Settings) -> None:
        self.bq = bq
        self.client = bq.client
        self.ref = bigquery.DatasetReference(self.client.project, settings.backups)
        self.location = settings.location
        self.ttl = timedelta(days=settings.backup_ttl_days)
        self._dataset_ready = False

    def backup(self, table: bigquery.Table, request_id: str) -> Backup | None:
        """Copy `table` into the backup dataset; None when it holds no rows (nothing to lose)."""
        if not table.num_rows and not table.streaming_buffer:
            return None
        self._ensure_dataset()
        now = datetime.now(UTC)
        name = backup_name(table.table_id, request_id, now)
        destination = self.ref.table(name)
        job_id = (
            "bootstrap_backup_"
            + hashlib.sha256(f"{request_id}\0{table.full_table_id}".encode()).hexdigest()[:40]
        )
        config = bigquery.CopyJobConfig(write_disposition="WRITE_EMPTY")
        try:
            try:
                job = self.bq.call(
                    "copy_table", table.reference, destination, job_id=job_id, job_config=config
                )
            except gexc.Conflict:  # a redelivery: this request's copy job exists already
                job = self.bq.call("get_job", job_id)
            job.result(timeout=self.bq.deadline)
            copy = self.bq.call("get_table", job.destination)
        except TransientError:
            raise
        except (gexc.GoogleAPICallError, TimeoutError) as exc:
            raise PermanentError(f"backup of {table.table_id} failed, so it was not dropped: {exc}") from exc
        expires = now + self.ttl
        copy.expires = expires
        copy.labels = {BACKUP_LABEL: "true"}
        copy.description = json.dumps(
            {
                "backup_of": f"{table.dataset_id}.{table.table_id}",
                "request_id": request_id,
                "rows": table.num_rows,
            }
        )
        self.bq.call("update_table", copy, ["expires", "labels", "description"])
        return Backup(
            table=table.table_id,
            backup=f"{copy.project}.{copy.dataset_id}.{copy.table_id}",
            rows=int(table.num_rows or 0),
            created_at=_iso(now),
            expires_at=_iso(expires),
            request_id=request_id,
        )

    def list(self) -> list[dict[str, Any]]:
        """The backups, newest first, with what each is a backup of."""
        out = []
        try:
            items = list(self.bq.call("list_tables", self.ref))
        except gexc.NotFound:
            return []
        for item in items:
            table = self.bq.call("get_table", item.reference)
            meta = _meta(table)
            if meta is None:
                continue
            out.append(
                {
                    "backup": table.table_id,
                    "backup_of": meta.get("backup_of"),
                    "request_id": meta.get("request_id"),
                    "rows": table.num_rows,
                    "created": _iso(table.created) if table.created else None,
                    "expires": _iso(table.expires) if table.expires else None,
                }
            )
        return sorted(out, key=lambda b: b["created"] or "", reverse=True)

    def restore(self, backup: str, target: str | None, *, overwrite: bool) -> dict[str, Any]:
        """Copy a backup back. A target that holds rows is overwritten only when `overwrite`."""
        try:
            source = self.bq.call("get_table", self.ref.table(backup))
        except gexc.NotFound:
            raise PermanentError(
                f"no backup {backup!r} in {self.ref.dataset_id}; `backups` lists them"
            ) from None
        meta = _meta(source)
        if meta is None:
            raise PermanentError(f"{backup!r} is not a backup made by this tool")
        target = target or meta["backup_of"].split(".")[-1]
        destination = self.bq.dataset_ref.table(target)
        _, current = self.bq.get_table(target)
        if current is not None and current.num_rows and not overwrite:
            raise PermanentError(
                f"{target} holds {current.num_rows} rows; restoring would replace them. "
                "Pass --force --confirm DATASET to overwrite, or --to ANOTHER_TABLE"
            )
        config = bigquery.CopyJobConfig(write_disposition="WRITE_TRUNCATE")
        job = self.bq.call("copy_table", source.reference, destination, job_config=config)
        job.result(timeout=self.bq.deadline)
        return {
            "backup": backup,
            "restored_to": f"{destination.dataset_id}.{target}",
            "rows": source.num_rows,
        }

    def _ensure_dataset(self) -> None:
        if self._dataset_ready:
            return
        dataset = bigquery.Dataset(self.ref)
        dataset.location = self.location
        dataset.default_table_expiration_ms = int(self.ttl.total_seconds() * 1000)
        dataset.description = "Backups taken before forced recreations; each table expires on its own."
        self.bq.call("create_dataset", dataset, exists_ok=True)
        self._dataset_ready = True


def backup_name(table: str, request_id: str, when: datetime) -> str:
    """<table>__<UTC time>__<request id, made table-safe>_<hash>: unique, sortable, readable."""
    slug = re.sub(r"[^A-Za-z0-9_]", "_", request_id)[:40]
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:8]
    return f"{table}__{when.strftime('%Y%m%dT%H%M%SZ')}__{slug}_{digest}"


def _meta(table: bigquery.Table) -> dict[str, Any] | None:
    if (table.labels or {}).get(BACKUP_LABEL) != "true":
        return None
    try:
        meta = json.loads(table.description or "{}")
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) and "backup_of" in meta else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
