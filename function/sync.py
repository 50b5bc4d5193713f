"""Uploading schema files to the schema bucket: validated first, all or nothing.

Each upload fires the bucket's finalize trigger, so only files whose content differs from the
live object are uploaded: an unchanged file would cost a needless run.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from google.cloud import storage

from .errors import PermanentError
from .schema_files import is_schema_file, load_declared_state
from .sources import parse_gcs_uri, read_folder, read_prefix


def sync_folder(client: storage.Client, folder: str | Path, target: str) -> list[str]:
    """Upload every schema file of `folder` that differs from the bucket; the names uploaded."""
    files = read_folder(folder)
    load_declared_state(files)  # raises, listing every problem, before anything is uploaded
    return _upload(client, target, files)


def upload_file(client: storage.Client, path: str | Path, target: str, deadline: float) -> list[str]:
    """Upload one file, after validating the state it leaves: the bucket's files with it."""
    path = Path(path)
    if not is_schema_file(path.name):
        raise PermanentError(
            f"{path.name}: only <table>.json schema files and bootstrap.yaml can be uploaded"
        )
    bucket, prefix = parse_gcs_uri(target)
    files = read_prefix(client, bucket, prefix, deadline)
    files[path.name] = path.read_bytes()
    load_declared_state(files)
    return _upload(client, target, {path.name: files[path.name]})


def _upload(client: storage.Client, target: str, files: dict[str, bytes]) -> list[str]:
    bucket_name, prefix = parse_gcs_uri(target)
    bucket = client.bucket(bucket_name)
    live = {b.name: b.md5_hash for b in client.list_blobs(bucket_name, prefix=prefix, delimiter="/")}
    uploaded = []
    # The manifest first: each table's upload event then finds its partitioning and clustering
    # already there (a table created without them could only be fixed by recreating it).
    for name in sorted(files, key=lambda n: (not n.endswith(".yaml"), n)):
        data = files[name]
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        if live.get(prefix + name) == md5:
            continue
        content_type = "application/json" if name.endswith(".json") else "application/yaml"
        bucket.blob(prefix + name).upload_from_string(data, content_type=content_type)
        uploaded.append(name)
    return uploaded
