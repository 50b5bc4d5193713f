"""Where the schema files come from: a local folder or a Cloud Storage prefix.

Both give the same thing, a mapping of file name to bytes, which `schema_files` validates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from google.cloud import storage

from .errors import PermanentError
from .schema_files import is_schema_file


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/prefix/` -> (bucket, prefix), the prefix empty or ending in '/'."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise PermanentError(f"SCHEMA_SOURCE={uri!r}: name a bucket, as in gs://BUCKET/PREFIX/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def read_folder(folder: str | Path) -> dict[str, bytes]:
    path = Path(folder)
    if not path.is_dir():
        raise PermanentError(f"schema source {str(path)!r} is not a folder; set SCHEMA_SOURCE")
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and is_schema_file(p.name)}


def read_prefix(
    client: storage.Client, bucket: str, prefix: str, pinned: dict[str, int] | None = None
) -> dict[str, bytes]:
    """The schema files directly under `prefix`; a name in `pinned` is read at exactly that
    generation (the one an upload event names), the others at their live generation."""
    pinned = pinned or {}
    files: dict[str, bytes] = {}
    for blob in client.list_blobs(bucket, prefix=prefix, delimiter="/"):
        name = blob.name[len(prefix) :]
        if is_schema_file(name) and name not in pinned:
            files[name] = blob.download_as_bytes(if_generation_match=blob.generation)
    for name, generation in pinned.items():
        blob = client.bucket(bucket).blob(prefix + name, generation=generation)
        files[name] = blob.download_as_bytes()
    return files


def read_source(source: str, storage_client: Callable[[], storage.Client]) -> dict[str, bytes]:
    if source.startswith("gs://"):
        bucket, prefix = parse_gcs_uri(source)
        return read_prefix(storage_client(), bucket, prefix)
    return read_folder(source)
