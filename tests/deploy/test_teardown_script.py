"""deploy/teardown.sh against the recording fake gcloud: it removes what deploy.sh made and
keeps the data unless asked."""

from __future__ import annotations

from deploy_harness import PROJECT, Harness, Run

SCHEMA_BUCKET = f"gs://{PROJECT}-tenant-schemas"
STATE_BUCKET = f"gs://{PROJECT}-bootstrap-state"


def ok(run: Run) -> Run:
    assert run.rc == 0, f"exit {run.rc}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def with_datasets(harness: Harness) -> Harness:
    state = harness.read_state()
    state["resources"]["dataset/tenants"] = {}
    state["resources"]["dataset/tenants_backups"] = {}
    harness.write_state(state)
    return harness


def test_removes_what_deploy_created_and_keeps_the_data(deployed: Harness) -> None:
    harness = deployed
    run = ok(with_datasets(harness).teardown())
    deleted = {" ".join(c.words[:4]) for c in run.find() if "delete" in c.words}
    assert {
        "eventarc triggers delete tenants-bootstrap-schema-uploads",
        "functions delete tenants-bootstrap",
        "pubsub topics delete bootstrap-requests",
        "pubsub topics delete bootstrap-completed",
        "pubsub topics delete bootstrap-dead-letter",
        "pubsub subscriptions delete bootstrap-dead-letter-sub",
        "pubsub subscriptions delete bootstrap-completed-watch",
        "iam roles delete tenants_bootstrap",
    } <= deleted
    accounts = {c.words[3] for c in run.find("iam", "service-accounts", "delete")}
    assert len(accounts) == 3
    assert not run.find("storage", "rm")
    assert not run.find("rm", prog="bq")
    assert "kept " + SCHEMA_BUCKET in run.stderr
    assert f"kept dataset {PROJECT}:tenants " in run.stderr
    # The project grants go before the accounts.
    state = harness.read_state()
    for key in (
        f"project/{PROJECT}",
        f"bucket/{PROJECT}-tenant-schemas",
        f"bucket/{PROJECT}-bootstrap-state",
    ):
        members = {m for _, m in state["policies"].get(key, [])}
        assert not [m for m in members if "tenants-bootstrap" in m], key
    assert set(state["resources"]) == {
        f"bucket/{PROJECT}-tenant-schemas",
        f"bucket/{PROJECT}-bootstrap-state",
        "dataset/tenants",
        "dataset/tenants_backups",
        "role/tenants_bootstrap",  # deleted: undeletable for 7 days
    }
    assert state["resources"]["role/tenants_bootstrap"]["deleted"] is True


def test_deletes_buckets_and_datasets_only_when_asked(deployed: Harness) -> None:
    harness = deployed
    run = ok(with_datasets(harness).teardown("--delete-buckets", "--delete-dataset", "--delete-backups"))
    removed = {c.words[2] for c in run.find("storage", "rm")}
    assert removed == {SCHEMA_BUCKET, STATE_BUCKET}
    for call in run.find("storage", "rm"):
        assert "recursive" in call.flags and "all-versions" in call.flags
    datasets = {c.words[-1] for c in run.find("rm", prog="bq")}
    assert datasets == {f"{PROJECT}:tenants", f"{PROJECT}:tenants_backups"}
    assert set(harness.read_state()["resources"]) == {"role/tenants_bootstrap"}


def test_dataset_flag_alone_keeps_the_backups(deployed: Harness) -> None:
    harness = deployed
    run = ok(with_datasets(harness).teardown("--delete-dataset"))
    assert {c.words[-1] for c in run.find("rm", prog="bq")} == {f"{PROJECT}:tenants"}
    assert not run.find("storage", "rm")


def test_deleting_datasets_that_are_gone_is_no_error(deployed: Harness) -> None:
    harness = deployed
    state = harness.read_state()
    for name in ("tenants", "tenants_backups"):
        state["resources"].pop(f"dataset/{name}", None)
    harness.write_state(state)
    run = ok(harness.teardown("--delete-dataset", "--delete-backups"))
    assert not run.find("rm", prog="bq")


def test_second_teardown_changes_nothing(deployed: Harness) -> None:
    harness = deployed
    ok(with_datasets(harness).teardown("--delete-buckets"))
    again = ok(harness.teardown("--delete-buckets"))
    assert again.mutations == [], [c.argv for c in again.mutations]


def test_deploy_after_teardown_restores_everything(deployed: Harness) -> None:
    harness = deployed
    ok(with_datasets(harness).teardown())
    again = ok(harness.deploy())
    assert again.find("iam", "roles", "undelete")
    assert again.find("functions", "deploy")
    assert ok(harness.deploy()).mutations == []


def test_missing_project_fails_before_any_command(harness: Harness) -> None:
    run = harness.run("teardown.sh", "--delete-buckets", drop=("GOOGLE_CLOUD_PROJECT",))
    assert run.rc == 2
    assert "GOOGLE_CLOUD_PROJECT" in run.stderr
    assert run.calls == []


def test_dry_run_runs_nothing(harness: Harness) -> None:
    run = ok(harness.teardown("--dry-run", "--delete-buckets"))
    assert run.calls == []
    assert "gcloud functions delete tenants-bootstrap" in run.stdout
    assert f"gcloud storage rm --recursive --all-versions {SCHEMA_BUCKET}" in run.stdout
