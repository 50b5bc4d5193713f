"""Where the schema files come from, a local folder or a Cloud Storage prefix, both read into a
mapping of file name to bytes for `schema_files`."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DeploymentError, PermanentError, TransientError
from .schema_files import is_schema_file, max_bytes

if TYPE_CHECKING:  # imported where used: a folder source never loads the storage client
    from .storage_adapter import Bucket, StoredObject

SNAPSHOT_ATTEMPTS = 5  # listings of a prefix that keeps changing while it is read
DOWNLOADS = 16  # objects downloaded at once


@dataclass(frozen=True)
class Superseded:
    """The uploaded generation is no longer the live one: a newer upload has its own event."""

    reason: str


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/prefix/` -> (bucket, prefix), the prefix empty or ending in '/'."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise PermanentError(f"{uri!r}: name a bucket, as in gs://BUCKET/PREFIX/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def read_folder(folder: str | Path) -> dict[str, bytes]:
    path = Path(folder)
    if not path.is_dir():
        raise PermanentError(f"schema source {str(path)!r} is not a folder")
    files = {}
    for p in sorted(path.iterdir()):
        if p.is_file() and is_schema_file(p.name):
            with p.open("rb") as f:
                files[p.name] = f.read(max_bytes(p.name) + 1)
    return files


@dataclass(frozen=True)
class Snapshot:
    """The schema files of a prefix at one moment, each at the generation the listing saw."""

    files: dict[str, bytes]
    generations: tuple[tuple[str, int], ...]  # (name, generation), sorted: the snapshot's identity


Listed = Callable[[Iterable[str]], None]  # told the file names of each listing, before any download


def _nothing(names: Iterable[str]) -> None:
    return None


def read_prefix(
    bucket: Bucket, prefix: str, *, held: Snapshot | None = None, listed: Listed = _nothing
) -> Snapshot:
    """The schema files directly under `prefix`, each read at the generation the listing saw
    (so a file replaced meanwhile is not mixed in). A file `held` already has at the listed
    generation is not downloaded again. `listed` hears the names as soon as they are listed
    (the caller starts the requests the files will need while they download)."""
    return _snapshot(bucket, prefix, None, held, listed)  # type: ignore[return-value]


def read_upload(
    bucket: Bucket,
    prefix: str,
    name: str,
    generation: int,
    *,
    held: Snapshot | None = None,
    listed: Listed = _nothing,
) -> Snapshot | Superseded:
    """`read_prefix` for the upload of `name` at `generation`: `Superseded` when that generation
    is no longer the live one."""
    return _snapshot(bucket, prefix, (name, generation), held, listed)


def _snapshot(
    bucket: Bucket, prefix: str, pinned: tuple[str, int] | None, held: Snapshot | None, heard: Listed
) -> Snapshot | Superseded:
    """One listing, then the downloads at once (a bounded pool). A file replaced or deleted
    between the listing and its read is another writer's change, not a broken source: the
    prefix is listed and read again. The `pinned` upload's generation is known before the
    listing: it is read while the prefix is listed, and used only as the listed generation."""
    kept = dict(held.generations) if held else {}
    ahead = None
    early: tuple[str, bytes] | None = None  # the read-ahead's name and bytes, once confirmed
    if pinned is not None and kept.get(pinned[0]) != pinned[1]:
        ahead = _ReadAhead(bucket, prefix, *pinned)
    try:
        for _ in range(SNAPSHOT_ATTEMPTS):
            listed = {n: o for n, o in bucket.list(prefix).items() if is_schema_file(n)}
            heard(sorted(listed))
            if pinned is not None:
                live = listed.get(pinned[0])
                if live is None or live.generation != pinned[1]:
                    now = "deleted" if live is None else f"generation {live.generation}"
                    return Superseded(f"{prefix}{pinned[0]}#{pinned[1]} is no longer live (now {now})")
            files = {n: held.files[n] for n, o in listed.items() if held and kept.get(n) == o.generation}
            if ahead is not None:  # the pinned generation is live (checked above): its bytes, if good
                early, ahead = ahead.result(listed[ahead.name]), None
            if early is not None:
                files[early[0]] = early[1]
            missing = [o for n, o in sorted(listed.items()) if n not in files]
            with ThreadPoolExecutor(min(DOWNLOADS, max(1, len(missing)))) as pool:
                # An oversized file is read only far enough for validation to refuse it.
                read = pool.map(lambda o: bucket.read(o.name, o.generation, _limit(o, prefix)), missing)
                downloaded = dict(zip((o.name[len(prefix) :] for o in missing), read, strict=True))
            if all(data is not None for data in downloaded.values()):
                files.update(downloaded)  # type: ignore[arg-type]
                return Snapshot(files, tuple(sorted((n, o.generation) for n, o in listed.items())))
    finally:
        if ahead is not None:
            ahead.abandon()
    raise TransientError(
        f"the schemas in gs://{bucket.name}/{prefix} kept changing while being read ({SNAPSHOT_ATTEMPTS} "
        "attempts); the event will be delivered again"
    )


class _ReadAhead:
    """The read of an uploaded object at the generation its event names, started before the
    listing that must confirm it (one round trip fewer for an upload event). Its bytes are used
    only when the listing shows that generation live and they are what the listing describes
    (the size, and the MD5 when the object has one; an oversized object read to its limit + 1
    byte, as any download of it is); else, or when it failed in any way, the object is downloaded
    as any other listed one, so the snapshot is exactly as safe as without it."""

    def __init__(self, bucket: Bucket, prefix: str, name: str, generation: int) -> None:
        self.name = name  # relative to the prefix
        self._limit = max_bytes(name)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
        self._future = self._pool.submit(bucket.read, prefix + name, generation, self._limit)

    def result(self, listed: StoredObject) -> tuple[str, bytes] | None:
        """The name and bytes, if they are the listed object's (`listed`: the same generation)."""
        try:
            data = self._future.result()
        except Exception:  # whatever it was, the ordinary download after the listing decides
            return None
        finally:
            self._pool.shutdown(wait=False)
        if data is None:
            return None
        if listed.size > self._limit:  # oversized: the same prefix any download of it reads
            return (self.name, data) if len(data) == self._limit + 1 else None
        if len(data) != listed.size:
            return None
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        if listed.md5 is not None and digest != listed.md5:
            return None
        return self.name, data

    def abandon(self) -> None:
        """Not needed (superseded, or the listing failed): its bytes are dropped. It went out
        with the listing, so waiting for it costs nothing more, and no read outlives the run."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _limit(stored: StoredObject, prefix: str) -> int | None:
    """Read an oversized file only up to one byte past its size limit: validation refuses it
    without the file being held in memory whole."""
    limit = max_bytes(stored.name[len(prefix) :])
    return limit if stored.size > limit else None


def read_source(source: str, bucket: Callable[[str], Bucket]) -> dict[str, bytes]:
    """The files of the deployment's SCHEMA_SOURCE (a folder, or gs://BUCKET/PREFIX/ read through
    `bucket(name)`). A source that is not there is the deployment's problem, not the request's."""
    if source.startswith("gs://"):
        name, prefix = parse_gcs_uri(source)
        return read_prefix(bucket(name), prefix).files
    try:
        return read_folder(source)
    except PermanentError as exc:
        raise DeploymentError(f"SCHEMA_SOURCE: {exc}; set it to a folder or gs://BUCKET/PREFIX/") from exc
