"""Uploading schema files to the schema bucket: validated first, all or nothing.

Each upload fires the bucket's finalize trigger, so only files whose content differs from the
live object are uploaded: an unchanged file would cost a needless run. Each upload is
conditioned on the generation listed, so a file someone else changed meanwhile is not
overwritten.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PermanentError
from .schema_files import MANIFEST_NAME, is_schema_file, load_declared_state, max_bytes
from .sources import parse_gcs_uri, read_folder, read_prefix
from .storage_adapter import Bucket

if TYPE_CHECKING:
    from google.cloud import storage


def sync_folder(client: storage.Client, folder: str | Path, target: str, deadline: float = 60.0) -> list[str]:
    """Upload every schema file of `folder` that differs from the bucket; the names uploaded."""
    files = read_folder(folder)
    load_declared_state(files)  # raises, listing every problem, before anything is uploaded
    name, prefix = parse_gcs_uri(target)
    return _upload(Bucket(client, name, deadline), prefix, files)


def upload_file(client: storage.Client, path: str | Path, target: str, deadline: float = 60.0) -> list[str]:
    """Upload one file, after validating the state it leaves: the bucket's files with it."""
    path = Path(path)
    if not is_schema_file(path.name):
        raise PermanentError(
            f"{path.name}: only <table>.json schema files and {MANIFEST_NAME} can be uploaded"
        )
    if not path.is_file():
        raise PermanentError(f"{path}: no such file")
    name, prefix = parse_gcs_uri(target)
    bucket = Bucket(client, name, deadline)
    files = read_prefix(bucket, prefix)
    with path.open("rb") as f:
        files[path.name] = f.read(max_bytes(path.name) + 1)
    load_declared_state(files)
    return _upload(bucket, prefix, {path.name: files[path.name]})


def _upload(bucket: Bucket, prefix: str, files: dict[str, bytes]) -> list[str]:
    live = bucket.list(prefix)
    uploaded = []
    # The manifest first: each table's upload event then finds its partitioning and clustering
    # already there (a table created without them could only be fixed by recreating it).
    for name in sorted(files, key=lambda n: (n != MANIFEST_NAME, n)):
        data = files[name]
        current = live.get(name)
        if current is not None and current.md5 == base64.b64encode(hashlib.md5(data).digest()).decode():
            continue
        content_type = "application/yaml" if name == MANIFEST_NAME else "application/json"
        if bucket.write(prefix + name, data, content_type, current.generation if current else 0) is None:
            raise PermanentError(
                f"gs://{bucket.name}/{prefix}{name} changed in the bucket while this upload ran; "
                f"uploaded so far: {', '.join(uploaded) or 'nothing'}. Run it again"
            )
        uploaded.append(name)
    return uploaded
