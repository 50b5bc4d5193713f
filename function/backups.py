"""Backups before any drop (a copy job under a fence), and restores from them."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import bigquery

from .bigquery_adapter import BigQueryAdapter
from .config import Settings
from .errors import PermanentError
from .gate import Authorization, Fence
from .model import DatasetSpec

BACKUP_LABEL = "bootstrap-backup"


@dataclass(frozen=True)
class Backup:
    table: str  # the table that was backed up
    backup: str  # project.dataset.table of the copy
    rows: int
    created_at: str
    expires_at: str

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
        self.bq = bq  # the dataset whose tables are backed up
        self.store = BigQueryAdapter(bq.client, settings.backups, bq.deadline)
        self.location = settings.location
        self.ttl = timedelta(days=settings.backup_ttl_days)
        self._dataset_ready = False

    def backup(self, table: str, authorization: Authorization) -> Backup:
        """Copy `table` into the backup dataset, and record the backup in the request's
        progress; raises (leaving the table in place) if the copy fails. The copy job's id comes
        from the request, the table and the fence's ledger generation: a retried insert finds
        its own job, while a delivery that took the request over copies the table again, as it
        is just before its own drop."""
        self._ensure_dataset()
        request_id = authorization.request.request_id
        fence = authorization.fence(f"the backup of {table}")
        now = datetime.now(UTC)
        key = hashlib.sha256(f"{request_id}\0{self.bq.ref(table)}\0{fence.generation}".encode()).hexdigest()
        name = backup_name(table, request_id, now, key)
        job_id = f"bootstrap_backup_{key[:40]}"
        self.bq.copy_table(
            self.bq.ref(table),
            self.store.ref(name),
            job_id=job_id,
            write_disposition="WRITE_EMPTY",
            wait=authorization.wait(self.bq.deadline),  # a large table takes a while to copy
        )
        expires = now + self.ttl
        meta = {"backup_of": f"{self.bq.dataset_ref.dataset_id}.{table}", "request_id": request_id}
        copy = self.store.set_table_options(
            name, expires=expires, labels={BACKUP_LABEL: "true"}, description=json.dumps(meta)
        )
        backup = Backup(
            table=table,
            backup=f"{copy.project}.{copy.dataset_id}.{copy.table_id}",
            rows=int(copy.num_rows or 0),
            created_at=_iso(now),
            expires_at=_iso(expires),
        )
        authorization.progress.record_backup(backup.to_json())
        return backup

    def list(self) -> list[dict[str, Any]]:
        """The backups, newest first, with what each is a backup of."""
        if self.store.get_dataset()[1] is None:
            return []
        out = []
        for item in self.store.inventory():
            if item.kind != "TABLE":
                continue
            _, table = self.store.get_table(item.name)
            meta = _meta(table) if table is not None else None
            if table is None or meta is None:
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

    def find(self, backup: str) -> tuple[bigquery.Table, str]:
        """A backup made by this tool, and the table it is a backup of."""
        _, source = self.store.get_table(backup)
        if source is None:
            raise PermanentError(
                f"no backup {backup!r} in {self.store.dataset_ref.dataset_id}; `backups` lists them"
            )
        meta = _meta(source)
        if meta is None:
            raise PermanentError(f"{backup!r} is not a backup made by this tool")
        return source, meta["backup_of"].split(".")[-1]

    def restore(self, source: bigquery.Table, target: str, fence: Fence | None) -> dict[str, Any]:
        """Copy a backup into `target`. Without a fence the copy only writes into a table that
        is missing or empty (BigQuery itself refuses it otherwise); with one (from the gate,
        after backing the target up) it replaces what the target holds."""
        self.bq.copy_table(
            source.reference,
            self.bq.ref(target),
            job_id=f"bootstrap_restore_{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:12]}",
            write_disposition="WRITE_TRUNCATE" if fence is not None else "WRITE_EMPTY",
            wait=self.bq.deadline,
            fence=fence,
        )
        return {
            "backup": source.table_id,
            "restored_to": f"{self.bq.dataset_ref.dataset_id}.{target}",
            "rows": source.num_rows,
        }

    def _ensure_dataset(self) -> None:
        if self._dataset_ready:
            return
        if self.store.get_dataset()[1] is None:
            about = "Backups taken before forced recreations; each table expires on its own."
            self.store.create_dataset(
                DatasetSpec(self.store.dataset_ref.dataset_id, self.location, about),
                # The copies carry their own expiration; this one catches a copy whose own
                # could not be set.
                default_table_expiration_ms=int(self.ttl.total_seconds() * 1000),
            )
        self._dataset_ready = True


def backup_name(table: str, request_id: str, when: datetime, key: str) -> str:
    """<table>__<UTC time>__<request id, made table-safe>_<key>: unique, sortable, readable."""
    slug = re.sub(r"[^A-Za-z0-9_]", "_", request_id)[:40]
    return f"{table}__{when.strftime('%Y%m%dT%H%M%SZ')}__{slug}_{key[:8]}"


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
