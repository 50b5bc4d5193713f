"""What leaves the function is bounded: a completion event stays far below Pub/Sub's 10 MB and a
log line below Cloud Logging's 256 KB, whatever the run produced."""

from __future__ import annotations

import json

from function import logs
from function.completion import bounded, build_event, to_message
from function.config import Settings


def _data(changes: int, error: str | None = None) -> dict:
    return {
        "request_id": "r",
        "status": "failed",
        "dry_run": False,
        "project": "local-project",
        "dataset": "tenants",
        "location": "US",
        "trigger": {"type": "pubsub"},
        "dataset_action": "unchanged",
        "tables": [
            {
                "table": "t",
                "action": "updated",
                "changes": [f"add column c{i} NULLABLE STRING" for i in range(changes)],
                "error": error,
            }
        ],
        "backups": [],
        "schema_digest": None,
        "error": error,
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.000Z",
        "duration_ms": 1000,
    }


def test_an_event_lists_two_hundred_changes_per_table_and_counts_the_rest() -> None:
    data = bounded(_data(10_000))

    changes = data["tables"][0]["changes"]
    assert len(changes) == 201
    assert changes[:2] == ["add column c0 NULLABLE STRING", "add column c1 NULLABLE STRING"]
    assert changes[-1] == "... and 9800 more change(s)"


def test_an_event_lists_two_hundred_statements_per_table_and_counts_the_rest() -> None:
    data = _data(1)
    data["tables"][0]["statements"] = [f"ALTER TABLE `p.d.t` DROP COLUMN `c{i}`" for i in range(500)]

    statements = bounded(data)["tables"][0]["statements"]

    assert len(statements) == 201
    assert statements[-1] == "... and 300 more statement(s)"


def test_a_huge_error_is_cut_in_the_event_and_the_message_stays_small() -> None:
    settings = Settings.from_env({"GOOGLE_CLOUD_PROJECT": "local-project"})
    body, attributes = to_message(build_event(settings, _data(10_000, error="x" * 5_000_000)))

    assert len(body) < 100_000
    data = json.loads(body)
    assert data["error"].endswith("... (4984000 more characters)")
    assert attributes["ce-type"] == "com.convergence.bootstrap.v1.failed"


def test_small_data_is_left_as_it_is() -> None:
    assert bounded(_data(3, "bad")) == _data(3, "bad")


def test_a_log_line_keeps_below_cloud_loggings_limit(capsys) -> None:
    logs.error("x" * 1_000_000, request_id="r", tables=["t" * 100] * 10_000)

    line = capsys.readouterr().out.strip()
    entry = json.loads(line)
    assert len(line.encode()) <= logs.MAX_LINE
    assert entry["severity"] == "ERROR"
    assert entry["message"].endswith("... (984000 more characters)")
    assert entry["request_id"] == "r"  # the small fields stay: the line can still be found
    assert entry["fields_left_out"] == ["tables"]


def test_an_ordinary_log_line_keeps_its_fields(capsys) -> None:
    logs.info("bootstrap succeeded", request_id="r", counts={"unchanged": 8})
    entry = json.loads(capsys.readouterr().out)
    assert (entry["message"], entry["request_id"], entry["counts"]) == (
        "bootstrap succeeded",
        "r",
        {"unchanged": 8},
    )
