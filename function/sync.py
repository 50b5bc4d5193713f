"""Uploading schema files to the schema bucket: validated with the bucket's other files first,
then only the changed files uploaded, each conditioned on the generation listed."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PermanentError
from .manifest import MANIFEST_NAME
from .model import DeclaredState
from .schema_files import is_schema_file, load_declared_state, max_bytes
from .sources import parse_gcs_uri, read_folder, read_prefix
from .storage_adapter import Bucket, StoredObject

if TYPE_CHECKING:
    from google.cloud import storage


@dataclass(frozen=True)
class Prepared:
    """Files to upload, and what the bucket will declare once they are."""

    bucket: Bucket
    prefix: str
    changed: dict[str, bytes]  # name -> content, only those that differ from the live objects
    live: dict[str, StoredObject]
    declared: DeclaredState

    @property
    def target(self) -> str:
        return f"gs://{self.bucket.name}/{self.prefix}"

    @property
    def tables(self) -> tuple[str, ...] | None:
        """The tables the uploads will make the function ensure: every one when the manifest
        changes, else those whose schema file changes."""
        if MANIFEST_NAME in self.changed:
            return None
        return tuple(sorted(name.removesuffix(".json") for name in self.changed))


def prepare(client: storage.Client, files: dict[str, bytes], target: str, deadline: float) -> Prepared:
    """Validate the bucket's files with `files` in place of theirs, and find what differs, before
    anything is written: the files whose content differs from the live objects (an unchanged file
    would cost a needless run of the function), and the declared state the bucket will hold once
    they are uploaded, validated and ready to be planned against BigQuery."""
    name, prefix = parse_gcs_uri(target)
    bucket = Bucket(client, name, deadline)
    merged = {**read_prefix(bucket, prefix).files, **files}
    declared = load_declared_state(merged)  # raises, listing every problem, before anything is uploaded
    live = bucket.list(prefix)
    changed = {n: data for n, data in files.items() if not _same(live.get(n), data)}
    return Prepared(bucket, prefix, changed, live, declared)


def file_to_upload(path: str | Path) -> dict[str, bytes]:
    path = Path(path)
    if not is_schema_file(path.name):
        raise PermanentError(
            f"{path.name}: only <table>.json schema files and {MANIFEST_NAME} can be uploaded"
        )
    if not path.is_file():
        raise PermanentError(f"{path}: no such file")
    with path.open("rb") as f:
        return {path.name: f.read(max_bytes(path.name) + 1)}


def upload_prepared(prepared: Prepared) -> list[str]:
    """Upload the changed files, the manifest first: each table's upload event then finds its
    partitioning and clustering already there (a table created without them could only be
    fixed by recreating it). The names uploaded."""
    uploaded = []
    for name in sorted(prepared.changed, key=lambda n: (n != MANIFEST_NAME, n)):
        current = prepared.live.get(name)
        content_type = "application/yaml" if name == MANIFEST_NAME else "application/json"
        generation = current.generation if current else 0
        path = prepared.prefix + name
        if prepared.bucket.write(path, prepared.changed[name], content_type, generation) is None:
            raise PermanentError(
                f"gs://{prepared.bucket.name}/{path} changed in the bucket while this upload ran; "
                f"uploaded so far: {', '.join(uploaded) or 'nothing'}. Run it again"
            )
        uploaded.append(name)
    return uploaded


def sync_folder(client: storage.Client, folder: str | Path, target: str, deadline: float = 60.0) -> list[str]:
    """Validate `folder` with the bucket's other files and upload what changed (no plan)."""
    return upload_prepared(prepare(client, read_folder(folder), target, deadline))


def _same(stored: StoredObject | None, data: bytes) -> bool:
    return stored is not None and stored.md5 == base64.b64encode(hashlib.md5(data).digest()).decode()
