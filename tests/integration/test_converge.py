"""A run from a schema bucket (`runner.converge`), as the deployed function makes it, against
fake-gcs-server and local-bigquery behind counting proxies: what a cold and a warm instance send
to Cloud Storage and to BigQuery."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.local.stack import Stack
from function import runner
from function.config import Settings
from function.request import BootstrapRequest
from function.sources import Superseded
from tests.conftest import PROJECT, SCHEMAS, TABLES
from tests.support.proxy import Proxy

pytestmark = pytest.mark.emulators


@pytest.fixture
def storage_proxy(storage_stack: Stack) -> Iterator[Proxy]:
    with Proxy(storage_stack.env["STORAGE_EMULATOR_HOST"], rewrite_urls=True) as proxy:
        yield proxy


@pytest.fixture
def prefix(storage_stack: Stack) -> Iterator[str]:
    """A prefix of its own in the stack's schema bucket, holding the bundled schemas."""
    name = f"converge-{uuid.uuid4().hex[:8]}/"
    client = storage_stack.storage_client()
    bucket = client.bucket("tenant-schemas")
    for path in sorted(SCHEMAS.iterdir()):
        bucket.blob(name + path.name).upload_from_filename(str(path))
    yield name
    client.close()


def settings_for(bigquery: Proxy, gcs: Proxy, dataset: str, prefix: str) -> Settings:
    return Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "BIGQUERY_EMULATOR_HOST": bigquery.url,
            "STORAGE_EMULATOR_HOST": gcs.url,
            "SCHEMA_SOURCE": f"gs://tenant-schemas/{prefix}",
            "BOOTSTRAP_RETRY_DEADLINE": "5",
        },
        dataset=dataset,
    )


def counted(proxy: Proxy) -> dict[str, int]:
    """Storage requests by kind: listings of the prefix, and object downloads."""
    out = {"list": 0, "download": 0}
    for r in proxy.requests():
        if r.path.startswith("/download/"):
            out["download"] += 1
        elif r.path.endswith("/o"):
            out["list"] += 1
    return out


def converge(settings: Settings, **kw: Any) -> Any:
    return runner.converge(BootstrapRequest(request_id=f"r-{uuid.uuid4().hex[:6]}"), settings, **kw)


def test_a_warm_instance_downloads_only_what_changed(
    bigquery_proxy: Proxy, storage_proxy: Proxy, dataset_name: str, prefix: str, storage_stack: Stack
) -> None:
    settings = settings_for(bigquery_proxy, storage_proxy, dataset_name, prefix)

    cold = converge(settings)

    assert cold.result.status == "succeeded"
    assert counted(storage_proxy) == {"list": 1, "download": len(TABLES) + 1}  # the manifest too
    storage_proxy.reset()
    bigquery_proxy.reset()

    warm = converge(settings)

    assert {t.action for t in warm.result.tables} == {"unchanged"}
    assert warm.digest == cold.digest
    assert counted(storage_proxy) == {"list": 1, "download": 0}  # same generations: nothing read
    assert len(bigquery_proxy.reads()) == 1 + len(TABLES) and bigquery_proxy.writes() == []

    blob = storage_stack.storage_client().bucket("tenant-schemas").blob(prefix + "tenant_profiles.json")
    columns = json.loads((SCHEMAS / "tenant_profiles.json").read_text())
    columns.append({"name": "warm_note", "type": "STRING", "mode": "NULLABLE"})
    blob.upload_from_string(json.dumps(columns))
    storage_proxy.reset()

    changed = converge(settings)

    assert counted(storage_proxy) == {"list": 1, "download": 1}  # the new generation only
    assert {t.table: t.action for t in changed.result.tables}["tenant_profiles"] == "updated"
    assert changed.digest != cold.digest


def test_an_upload_no_longer_live_is_superseded_and_changes_nothing(
    bigquery_proxy: Proxy, storage_proxy: Proxy, dataset_name: str, prefix: str, storage_stack: Stack
) -> None:
    settings = settings_for(bigquery_proxy, storage_proxy, dataset_name, prefix)
    blob = storage_stack.storage_client().bucket("tenant-schemas").get_blob(prefix + "tenant_api_keys.json")
    assert blob is not None

    superseded = converge(settings, upload=("tenant_api_keys.json", blob.generation - 1))

    assert isinstance(superseded, Superseded)
    assert "is no longer live" in superseded.reason
    # The one download is the read of the event's generation sent with the listing (Cloud
    # Storage answers it 412; fake-gcs-server ignores ifGenerationMatch on downloads): unused.
    assert counted(storage_proxy) == {"list": 1, "download": 1}
    assert bigquery_proxy.writes() == []


@pytest.mark.parametrize("instance", ["cold", "warm"])
def test_an_upload_reads_the_generation_it_names_while_the_prefix_is_listed(
    bigquery_proxy: Proxy,
    storage_proxy: Proxy,
    dataset_name: str,
    prefix: str,
    storage_stack: Stack,
    instance: str,
) -> None:
    """The event names the object and its generation, so its download goes out with the listing,
    not after it: a warm instance's upload is one round trip shorter (list and download, then
    patch). The listing is held until that download has been answered (or a bound passes, which
    fails the test); the bytes are then used as the listed generation's, not downloaded again."""
    settings = settings_for(bigquery_proxy, storage_proxy, dataset_name, prefix)
    name = "tenant_profiles.json"
    if instance == "warm":
        converge(settings)  # the instance holds the prefix, and the tables exist
    blob = storage_stack.storage_client().bucket("tenant-schemas").blob(prefix + name)
    columns = json.loads((SCHEMAS / name).read_text())
    columns.append({"name": "uploaded_note", "type": "STRING", "mode": "NULLABLE"})
    blob.upload_from_string(json.dumps(columns))
    storage_proxy.reset()
    bigquery_proxy.reset()
    seen: list[list[str]] = []

    def downloads() -> list[str]:
        return [r.path for r in storage_proxy.requests() if r.path.startswith("/download/")]

    def hold_the_listing() -> None:
        deadline = time.monotonic() + 10
        while not downloads() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(downloads())

    storage_proxy.before_next(hold_the_listing, method="GET", path_regex=r"^/storage/v1/b/[^/]+/o$")

    request = BootstrapRequest(request_id=f"r-{uuid.uuid4().hex[:6]}", tables=("tenant_profiles",))
    done = runner.converge(request, settings, upload=(name, blob.generation))  # as the handler asks

    assert not isinstance(done, Superseded)
    assert done.result.status == "succeeded"
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].endswith(name)
    expected = 1 if instance == "warm" else len(TABLES) + 1  # a cold one reads the rest after the listing
    assert counted(storage_proxy) == {"list": 1, "download": expected}
    action = "updated" if instance == "warm" else "created"
    assert [(t.table, t.action) for t in done.result.tables] == [("tenant_profiles", action)]


def test_a_bucket_run_declares_exactly_what_a_folder_run_does(
    bigquery_proxy: Proxy, storage_proxy: Proxy, dataset_name: str, prefix: str
) -> None:
    from_bucket = settings_for(bigquery_proxy, storage_proxy, dataset_name, prefix)
    from_folder = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "BIGQUERY_EMULATOR_HOST": bigquery_proxy.url,
            "SCHEMA_SOURCE": str(SCHEMAS),
        },
        dataset=dataset_name,
    )
    created = converge(from_bucket)
    again = converge(from_folder)

    assert created.digest == again.digest
    assert {t.action for t in again.result.tables} == {"unchanged"}


def test_a_cold_instance_reads_the_listed_tables_while_their_files_download(
    bigquery_proxy: Proxy, storage_proxy: Proxy, dataset_name: str, prefix: str
) -> None:
    """Not after the downloads: the first download is held until every listed table has been
    read (or a bound passes, which fails the test)."""
    settings = settings_for(bigquery_proxy, storage_proxy, dataset_name, prefix)
    seen: list[set[str]] = []

    def tables_read() -> set[str]:
        return {r.path.rsplit("/", 1)[1] for r in bigquery_proxy.reads() if "/tables/" in r.path}

    def hold_the_download() -> None:
        deadline = time.monotonic() + 10
        while tables_read() != set(TABLES) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(tables_read())

    storage_proxy.before_next(hold_the_download, path_regex="^/download/")

    cold = converge(settings)

    assert cold.result.status == "succeeded"
    assert seen == [set(TABLES)]
    assert counted(storage_proxy) == {"list": 1, "download": len(TABLES) + 1}
