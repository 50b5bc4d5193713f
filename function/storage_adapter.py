"""Cloud Storage, through the official client: one bucket's objects, listed, read and written,
with bounded retries; the one place that sees the storage client's exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.api_core import exceptions as gexc

from .config import REQUEST_TIMEOUT
from .errors import DeploymentError
from .retries import storage_retry, translate

if TYPE_CHECKING:  # imported where used: a folder source never loads the storage client
    from google.cloud import storage


@dataclass(frozen=True)
class StoredObject:
    name: str  # the full object name
    generation: int
    size: int
    md5: str | None  # base64, as Cloud Storage reports it


class Bucket:
    """One bucket's objects. Each call carries Cloud Storage's own retry policy bounded by the
    configured deadline, and a per-request timeout. A lost race comes back as a result (an object
    gone or replaced between a listing and its read; a conditional write whose precondition
    failed), an unreadable bucket as `DeploymentError` (its name comes from the deployment),
    anything else as `TransientError` or `PermanentError`."""

    def __init__(self, client: storage.Client, name: str, deadline: float) -> None:
        self.name = name
        self._bucket = client.bucket(name)
        self._client = client
        self._retry = storage_retry(deadline)
        self._deadline = deadline

    def list(self, prefix: str) -> dict[str, StoredObject]:
        """The objects directly under `prefix`, by name relative to it."""
        try:
            blobs = list(
                self._client.list_blobs(
                    self.name, prefix=prefix, delimiter="/", retry=self._retry, timeout=REQUEST_TIMEOUT
                )
            )
        except Exception as exc:
            raise self._translate(exc, f"list gs://{self.name}/{prefix}") from exc
        return {
            b.name[len(prefix) :]: StoredObject(b.name, b.generation, b.size or 0, b.md5_hash) for b in blobs
        }

    def read(self, name: str, generation: int | None = None, max_bytes: int | None = None) -> bytes | None:
        """The object's content (at `generation`, if given; at most `max_bytes` + 1 bytes, so a
        caller can tell it is too large without holding it all); None when it is gone or was
        replaced meanwhile (404, 412)."""
        blob = self._bucket.blob(name)
        try:
            return blob.download_as_bytes(
                if_generation_match=generation,
                end=max_bytes,  # inclusive: max_bytes + 1 bytes at most
                retry=self._retry,
                timeout=REQUEST_TIMEOUT,
            )
        except (gexc.NotFound, gexc.PreconditionFailed):
            return None
        except Exception as exc:
            raise self._translate(exc, f"read gs://{self.name}/{name}") from exc

    def current(self, name: str) -> tuple[int, bytes] | None:
        """The live generation of an object and its content; None when there is none."""
        blob = self._bucket.blob(name)
        try:
            blob.reload(retry=self._retry, timeout=REQUEST_TIMEOUT)
            data = blob.download_as_bytes(
                if_generation_match=blob.generation, retry=self._retry, timeout=REQUEST_TIMEOUT
            )
        except gexc.NotFound:
            return None
        except gexc.PreconditionFailed:  # replaced between the two calls: read the new one
            return self.current(name)
        except Exception as exc:
            raise self._translate(exc, f"read gs://{self.name}/{name}") from exc
        return blob.generation, data

    def write(self, name: str, data: bytes, content_type: str, if_generation_match: int | None) -> int | None:
        """Write the object, if it is still at `if_generation_match` (0: if it does not exist;
        None: whatever it is); its new generation, or None when another writer came first
        (412). When the answer to an attempt that Cloud Storage applied is lost, the client's
        retry is answered 412 too: the write still counts as ours if the live object is byte for
        byte what we wrote (so callers write content that names the writer)."""
        blob = self._bucket.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=if_generation_match,
                retry=self._retry,
                timeout=REQUEST_TIMEOUT,
            )
        except gexc.PreconditionFailed:
            live = self.current(name)
            return live[0] if live is not None and live[1] == data else None
        except Exception as exc:
            raise self._translate(exc, f"write gs://{self.name}/{name}") from exc
        return blob.generation

    def _translate(self, exc: Exception, what: str) -> Exception:
        if isinstance(exc, gexc.NotFound | gexc.Forbidden | gexc.Unauthorized):
            return DeploymentError(
                f"Cloud Storage: cannot {what}: {exc.message}. Check that the bucket exists and that "
                "this account may use it (right after a deployment, permissions can take a minute "
                "to apply)"
            )
        return translate(exc, f"Cloud Storage: {what}", self._deadline)
