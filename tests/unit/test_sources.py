"""Reading a schema prefix (function/sources.py) against a fake bucket: the upload's read-ahead
(its generation read while the prefix is listed) is used only when the listing confirms it."""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest

from function import sources
from function.schema_files import MAX_SCHEMA_FILE_BYTES
from function.sources import Superseded, read_upload
from function.storage_adapter import StoredObject

PREFIX = "schemas/"


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class FakeBucket:
    """Objects by name, each at one generation; every call recorded. `served` overrides what the
    next read of an object returns (bytes, None, or an exception to raise), once."""

    name = "b"

    def __init__(self, objects: dict[str, bytes], generation: int = 7) -> None:
        self.objects = objects
        self.generation = generation
        self.calls: list[tuple[str, ...]] = []
        self.served: dict[str, object] = {}
        self.md5s: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def list(self, prefix: str) -> dict[str, StoredObject]:
        with self._lock:
            self.calls.append(("list", prefix))
        return {
            n: StoredObject(prefix + n, self.generation, len(d), self.md5s.get(n, md5(d)))
            for n, d in self.objects.items()
        }

    def read(self, name: str, generation: int | None = None, max_bytes: int | None = None) -> bytes | None:
        with self._lock:
            self.calls.append(("read", name.removeprefix(PREFIX), str(max_bytes)))
        short = name.removeprefix(PREFIX)
        if short in self.served:
            served = self.served.pop(short)
            if isinstance(served, Exception):
                raise served
            return served  # type: ignore[return-value]
        if generation != self.generation:
            return None
        data = self.objects[short]
        return data if max_bytes is None else data[: max_bytes + 1]

    def reads(self, name: str) -> int:
        return sum(1 for c in self.calls if c[0] == "read" and c[1] == name)


FILES = {"a.json": b'[{"name": "x", "type": "STRING"}]', "manifest.json": b"{}"}


def test_the_uploaded_generation_is_read_once_and_used():
    bucket = FakeBucket(dict(FILES))

    snapshot = read_upload(bucket, PREFIX, "a.json", 7)  # type: ignore[arg-type]

    assert not isinstance(snapshot, Superseded)
    assert snapshot.files == FILES
    assert bucket.reads("a.json") == 1  # the read-ahead, sent with the listing
    assert ("read", "a.json", str(MAX_SCHEMA_FILE_BYTES)) in bucket.calls  # bounded by the limit


@pytest.mark.parametrize(
    "served",
    [
        b"something else entirely",  # not the listed size
        b'[{"name": "y", "type": "STRING"}]',  # the listed size, another MD5
        None,  # gone or replaced (404, 412)
        RuntimeError("the read failed"),
    ],
)
def test_a_read_ahead_that_is_not_the_listed_object_is_downloaded_again(served):
    bucket = FakeBucket(dict(FILES))
    bucket.served["a.json"] = served
    snapshot = read_upload(bucket, PREFIX, "a.json", 7)  # type: ignore[arg-type]

    assert not isinstance(snapshot, Superseded)
    assert snapshot.files == FILES
    assert bucket.reads("a.json") == 2  # the read-ahead, unused, then the listed generation's


def test_an_oversized_upload_is_read_to_its_limit_only():
    big = b" " * (MAX_SCHEMA_FILE_BYTES + 10)
    bucket = FakeBucket({**FILES, "a.json": big})

    snapshot = read_upload(bucket, PREFIX, "a.json", 7)  # type: ignore[arg-type]

    assert not isinstance(snapshot, Superseded)
    assert snapshot.files["a.json"] == big[: MAX_SCHEMA_FILE_BYTES + 1]
    assert bucket.reads("a.json") == 1


def test_an_upload_no_longer_live_is_superseded_and_its_read_ahead_dropped():
    bucket = FakeBucket(dict(FILES), generation=8)

    superseded = read_upload(bucket, PREFIX, "a.json", 7)  # type: ignore[arg-type]

    assert isinstance(superseded, Superseded)
    assert [c[0] for c in bucket.calls].count("list") == 1
    assert bucket.reads("a.json") == 1  # the read-ahead, answered None (Cloud Storage: 412)
    assert bucket.reads("manifest.json") == 0


def test_an_upload_the_instance_holds_is_not_read_again():
    bucket = FakeBucket(dict(FILES))
    held = sources.read_prefix(bucket, PREFIX)  # type: ignore[arg-type]
    bucket.calls.clear()

    snapshot = read_upload(bucket, PREFIX, "a.json", 7, held=held)  # type: ignore[arg-type]

    assert not isinstance(snapshot, Superseded)
    assert snapshot.files == FILES
    assert bucket.calls == [("list", PREFIX)]
