"""Where the schema files come from: a local folder or a Cloud Storage prefix.

Both give the same thing, a mapping of file name to bytes, which `schema_files` validates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

from .config import REQUEST_TIMEOUT
from .errors import PermanentError, TransientError
from .schema_files import is_schema_file

if TYPE_CHECKING:  # imported where used: a folder source never loads the storage client
    from google.cloud import storage

SNAPSHOT_ATTEMPTS = 5  # listings of a prefix that keeps changing while it is read


class Superseded(Exception):
    """The uploaded generation is no longer the live one: a newer upload has its own event."""


def storage_retry(deadline: float) -> Retry:
    """Cloud Storage's own retry policy (transient errors; conditional writes only), bounded
    by our deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline)


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
    client: storage.Client, bucket: str, prefix: str, deadline: float, pinned: tuple[str, int] | None = None
) -> dict[str, bytes]:
    """The schema files directly under `prefix`, each read at the generation the listing saw
    (so a file replaced meanwhile is not mixed in). `pinned` (name, generation) is the upload
    being handled: if that generation is no longer live, raise `Superseded`. A file replaced or
    deleted between the listing and its read (412, 404) is another writer's change, not a broken
    source: the prefix is listed and read again."""
    retry = storage_retry(deadline)
    for _ in range(SNAPSHOT_ATTEMPTS):
        blobs = _list(client, bucket, prefix, retry)
        if pinned is not None:
            live = blobs.get(pinned[0])
            if live is None or live.generation != pinned[1]:
                now = "deleted" if live is None else f"generation {live.generation}"
                raise Superseded(f"{prefix}{pinned[0]}#{pinned[1]} is no longer live (now {now})")
        try:
            return {
                name: blob.download_as_bytes(
                    if_generation_match=blob.generation, retry=retry, timeout=REQUEST_TIMEOUT
                )
                for name, blob in sorted(blobs.items())
                if is_schema_file(name)
            }
        except (gexc.NotFound, gexc.PreconditionFailed):
            continue  # changed after the listing: take a new snapshot
        except gexc.Forbidden as exc:
            raise PermanentError(f"cannot read the schemas in gs://{bucket}/{prefix}: {exc.message}") from exc
    raise TransientError(
        f"the schemas in gs://{bucket}/{prefix} kept changing while being read ({SNAPSHOT_ATTEMPTS} "
        "attempts); the event will be delivered again"
    )


def _list(client: storage.Client, bucket: str, prefix: str, retry: Retry) -> dict[str, storage.Blob]:
    try:
        return {
            b.name[len(prefix) :]: b
            for b in client.list_blobs(
                bucket, prefix=prefix, delimiter="/", retry=retry, timeout=REQUEST_TIMEOUT
            )
        }
    except (gexc.NotFound, gexc.Forbidden) as exc:
        raise PermanentError(f"cannot read the schemas in gs://{bucket}/{prefix}: {exc.message}") from exc


def read_source(
    source: str, storage_client: Callable[[], storage.Client], deadline: float
) -> dict[str, bytes]:
    if source.startswith("gs://"):
        bucket, prefix = parse_gcs_uri(source)
        return read_prefix(storage_client(), bucket, prefix, deadline)
    return read_folder(source)
