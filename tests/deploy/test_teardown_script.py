"""deploy/teardown.sh against the recording fake gcloud: it removes what deploy.sh made and
keeps the data unless asked."""

from __future__ import annotations

from deploy_harness import PROJECT, Harness, Run

SCHEMA_BUCKET = f"gs://{PROJECT}-tenant-schemas"
STATE_BUCKET = f"gs://{PROJECT}-bootstrap-state"
RUNTIME_SA = f"tenants-bootstrap-run@{PROJECT}.iam.gserviceaccount.com"
ROLES = {
    "role/tenants_bootstrap",
    "role/tenants_bootstrap_destructive",
    "role/tenants_bootstrap_backups",
    "role/tenants_bootstrap_jobs",
}
READER = {"role": "READER", "groupByEmail": "analysts@example.com"}


def ok(run: Run) -> Run:
    assert run.rc == 0, f"exit {run.rc}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def with_datasets(harness: Harness) -> Harness:
    """The datasets deploy.sh made, each also readable by a group someone added by hand."""
    state = harness.read_state()
    for name in ("tenants", "tenants_backups"):
        state["resources"][f"dataset/{name}"]["access"].append(READER)
    harness.write_state(state)
    return harness


def deployed_destructive(harness: Harness) -> Harness:
    """The project as deploy.sh --allow-destructive leaves it (every grant it can make)."""
    run = harness.deploy("--allow-destructive")
    assert run.rc == 0, run.stderr
    return with_datasets(harness)


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
        "iam roles delete tenants_bootstrap_destructive",
        "iam roles delete tenants_bootstrap_backups",
        "iam roles delete tenants_bootstrap_jobs",
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
        *ROLES,  # deleted: undeletable for 7 days
    }
    for role in ROLES:
        assert state["resources"][role]["deleted"] is True


def test_removes_every_grant_deploy_made_in_the_kept_datasets(harness: Harness) -> None:
    deployed_destructive(harness)
    run = ok(harness.teardown())
    state = harness.read_state()
    for name in ("tenants", "tenants_backups"):
        access = state["resources"][f"dataset/{name}"]["access"]
        assert not [e for e in access if RUNTIME_SA in e.values()], access
        assert READER in access  # what deploy.sh did not add stays
    assert not [m for _, m in state["policies"][f"project/{PROJECT}"] if RUNTIME_SA in m]
    # The entries go before the account and its roles.
    updates = run.find("update", prog="bq")
    assert len(updates) == 2
    first_delete = next(c for c in run.calls if c.is_("iam") and "delete" in c.words)
    assert run.calls.index(updates[-1]) < run.calls.index(first_delete)


def test_an_owner_entry_left_by_the_function_is_removed_too(deployed: Harness) -> None:
    harness = deployed
    state = harness.read_state()
    state["resources"]["dataset/tenants"]["access"].append({"role": "OWNER", "userByEmail": RUNTIME_SA})
    harness.write_state(state)
    ok(harness.teardown())
    access = harness.read_state()["resources"]["dataset/tenants"]["access"]
    assert not [e for e in access if RUNTIME_SA in e.values()], access


def test_deletes_buckets_and_datasets_only_when_asked(deployed: Harness) -> None:
    harness = deployed
    run = ok(with_datasets(harness).teardown("--delete-buckets", "--delete-dataset", "--delete-backups"))
    removed = {c.words[2] for c in run.find("storage", "rm")}
    assert removed == {SCHEMA_BUCKET, STATE_BUCKET}
    for call in run.find("storage", "rm"):
        assert "recursive" in call.flags and "all-versions" in call.flags
    datasets = {c.words[-1] for c in run.find("rm", prog="bq")}
    assert datasets == {f"{PROJECT}:tenants", f"{PROJECT}:tenants_backups"}
    assert not run.find("update", prog="bq")  # nothing to edit in a dataset about to go
    assert set(harness.read_state()["resources"]) == ROLES


def test_dataset_flag_alone_keeps_the_backups(deployed: Harness) -> None:
    harness = deployed
    run = ok(with_datasets(harness).teardown("--delete-dataset"))
    assert {c.words[-1] for c in run.find("rm", prog="bq")} == {f"{PROJECT}:tenants"}
    assert not run.find("storage", "rm")
    assert "dataset/tenants_backups" in harness.read_state()["resources"]


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
    assert len(again.find("iam", "roles", "undelete")) == 4
    assert again.find("functions", "deploy")
    assert [c.words[-1] for c in again.find("update", prog="bq")] == [f"{PROJECT}:tenants"]
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
    for name in ("tenants", "tenants_backups"):
        assert f"bq --project_id={PROJECT} update --dataset --update_mode=update_acl" in run.stdout
        assert f"{PROJECT}:{name}\n" in run.stdout
    assert "gcloud iam roles delete tenants_bootstrap_jobs" in run.stdout
