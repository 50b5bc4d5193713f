"""render: the listing an operator reads after `plan` or `apply`."""

from __future__ import annotations

import pytest

from function.render import exit_code, render, render_event
from function.results import EnsureResult, TableResult


def _result(dry_run: bool) -> EnsureResult:
    return EnsureResult(
        dataset="tenants",
        dataset_action="updated",
        dry_run=dry_run,
        dataset_changes=("description: 'Old.' -> 'New.'",),
        tables=[
            TableResult("tenant_profiles", "created", ("create table with 3 columns",)),
            TableResult(
                "tenant_api_keys",
                "updated",
                ("add column note NULLABLE STRING", "label domain: (unset) -> 'x'"),
            ),
            TableResult("quotas", "unchanged"),
            TableResult(
                "runs",
                "blocked",
                ("column calls changes type INTEGER -> STRING: needs the table recreated",),
                "needs recreation, left untouched: column calls changes type",
            ),
            TableResult("queue", "recreated", ("drop and recreate: create table with 2 columns",)),
        ],
    )


def test_plan_listing() -> None:
    assert render(_result(dry_run=True), planning=True) == "\n".join(
        [
            "dataset tenants: update in place",
            "    description: 'Old.' -> 'New.'",
            "    + tenant_profiles  create",
            "        create table with 3 columns",
            "    ~ tenant_api_keys  update in place",
            "        add column note NULLABLE STRING",
            "        label domain: (unset) -> 'x'",
            "    = quotas           unchanged",
            "    ! runs             blocked",
            "        column calls changes type INTEGER -> STRING: needs the table recreated",
            "        left untouched: revert the change, or recreate the table with its rows migrated (apply "
            "--force-recreate-tables, see "
            "`python -m function apply --help`), or for columns no longer declared apply --drop-columns",
            "  -/+ queue            recreate",
            "        drop and recreate: create table with 2 columns",
            "",
            "Plan: 1 blocked, 1 create, 1 recreate, 1 unchanged, 1 update in place.",
        ]
    )


def test_apply_listing_uses_past_tense_words() -> None:
    text = render(_result(dry_run=False), planning=False)
    lines = text.splitlines()
    assert lines[0] == "dataset tenants: updated"
    assert "    + tenant_profiles  created" in lines
    assert "    ~ tenant_api_keys  updated" in lines
    assert "  -/+ queue            recreated" in lines
    assert sum("column calls changes type" in line for line in lines) == 1  # the reason, once
    assert lines[-1] == "Result: 1 blocked, 1 created, 1 recreated, 1 unchanged, 1 updated."
    assert "update in place" not in text


def test_failures_and_dataset_errors_are_shown() -> None:
    result = EnsureResult(
        dataset="tenants",
        dataset_action="blocked",
        dry_run=False,
        dataset_error="location: the dataset is in EU, the deployment declares US",
        tables=[
            TableResult("a", "failed", (), "not attempted: dataset step failed"),
            TableResult("bb", "failed", (), "BigQuery refused the change: denied"),
        ],
    )
    assert render(result, planning=False) == "\n".join(
        [
            "dataset tenants: blocked",
            "    error: location: the dataset is in EU, the deployment declares US",
            "    x a   failed",
            "        error: not attempted: dataset step failed",
            "    x bb  failed",
            "        error: BigQuery refused the change: denied",
            "",
            "Result: 2 failed.",
        ]
    )
    assert result.status == "failed"


def test_no_tables() -> None:
    result = EnsureResult("tenants", "unchanged", dry_run=True)
    assert render(result, planning=True) == "dataset tenants: unchanged\n\nPlan: no tables."
    assert result.status == "planned"


@pytest.mark.parametrize(
    ("status", "dataset_action", "actions", "code"),
    [
        ("succeeded", "unchanged", ["updated", "created"], 0),
        ("failed", "unchanged", ["blocked"], 1),
        ("failed", "failed", [], 1),
        ("planned", "unchanged", ["unchanged", "unchanged"], 0),
        ("planned", "unchanged", ["unchanged", "blocked"], 2),  # a blocked table is a plan's result
        ("planned", "created", [], 2),
    ],
    ids=["applied", "blocked", "dataset failed", "plan: nothing", "plan: blocked", "plan: new dataset"],
)
def test_exit_codes_follow_plan_and_apply(status, dataset_action, actions, code) -> None:
    assert exit_code(status, dataset_action, actions) == code


def test_an_event_shows_its_backups_and_whether_it_is_a_recorded_answer() -> None:
    data = {
        "request_id": "recreate-1",
        "status": "succeeded",
        "dry_run": False,
        "dataset": "tenants",
        "dataset_action": "unchanged",
        "duration_ms": 812,
        "duplicate": True,
        "tables": [{"table": "tenant_profiles", "action": "recreated", "changes": [], "error": None}],
        "backups": [
            {
                "table": "tenant_profiles",
                "backup": "p.tenants_backups.tenant_profiles__20261130T120000Z__recreate_1_ab12cd34",
                "rows": 3,
                "created_at": "2026-11-30T12:00:00Z",
                "expires_at": "2026-12-07T12:00:00Z",
            }
        ],
    }

    text = render_event(data)

    assert text.startswith("request recreate-1: succeeded in 812 ms (duplicate: this request had already run")
    assert "Backups taken (`python -m function restore BACKUP` copies one back):" in text
    assert (
        "  tenant_profiles__20261130T120000Z__recreate_1_ab12cd34  of tenant_profiles, 3 rows, expires 2026-12-07T12:00:00Z"
        in text
    )


def test_the_statements_a_change_runs_are_listed_under_it() -> None:
    rename = "ALTER TABLE `p.tenants.quotas` RENAME COLUMN `quota_limit` TO `hard_limit`"
    result = EnsureResult(
        dataset="tenants",
        dataset_action="unchanged",
        dry_run=True,
        tables=[
            TableResult(
                "quotas",
                "updated",
                ("rename column quota_limit -> hard_limit (its values kept)",),
                None,
                (rename,),
            )
        ],
    )
    assert render(result, planning=True).splitlines()[1:4] == [
        "    ~ quotas  update in place",
        "        rename column quota_limit -> hard_limit (its values kept)",
        f"        sql: {rename}",
    ]
    event = {"table": "quotas", "action": "updated", "changes": ["x"], "error": None, "statements": [rename]}
    assert result.tables[0].to_json()["statements"] == [rename]
    assert "statements" not in TableResult("quotas", "unchanged").to_json()
    assert f"sql: {rename}" in render_event(
        {
            "request_id": "r",
            "status": "planned",
            "duration_ms": 5,
            "dataset": "tenants",
            "dry_run": True,
            "dataset_action": "unchanged",
            "tables": [event],
        }
    )
