"""deploy/deploy.sh's least privilege, against the recording fake: the function's BigQuery grants
are entries in its two datasets' access lists (which deploy.sh creates, so the function owns
neither); nothing BigQuery on the project but, with --allow-destructive, a role of two
permissions; a run without the flag takes every destructive permission back, an upgrade loses
what earlier versions granted on the project; the buckets are private and versioned; and who may
publish bootstrap requests.

Over 400 lines: every grant the deployment makes, checked in one place against one fake.
"""

from __future__ import annotations

from typing import Any

import pytest
from deploy_harness import PROJECT, Harness, Run

RUNTIME_SA = f"tenants-bootstrap-run@{PROJECT}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{RUNTIME_SA}"
SCHEMA_BUCKET = f"{PROJECT}-tenant-schemas"
STATE_BUCKET = f"{PROJECT}-bootstrap-state"


def role(name: str) -> str:
    return f"projects/{PROJECT}/roles/{name}"


METADATA_ROLE = role("tenants_bootstrap")
DESTRUCTIVE_ROLE = role("tenants_bootstrap_destructive")
BACKUP_ROLE = role("tenants_bootstrap_backups")
JOBS_ROLE = role("tenants_bootstrap_jobs")
PERMISSIONS = {
    METADATA_ROLE: {
        "bigquery.datasets.get",
        "bigquery.datasets.update",
        "bigquery.tables.create",
        "bigquery.tables.get",
        "bigquery.tables.list",
        "bigquery.tables.update",
    },
    DESTRUCTIVE_ROLE: {"bigquery.tables.delete", "bigquery.tables.getData", "bigquery.datasets.delete"},
    BACKUP_ROLE: {
        "bigquery.datasets.get",
        "bigquery.tables.create",
        "bigquery.tables.get",
        "bigquery.tables.list",
        "bigquery.tables.update",
        "bigquery.tables.updateData",
    },
    JOBS_ROLE: {"bigquery.jobs.create", "bigquery.datasets.create"},
}
# What only --allow-destructive may give the function, anywhere.
DESTRUCTIVE = {
    "bigquery.tables.delete",
    "bigquery.tables.getData",
    "bigquery.tables.updateData",
    "bigquery.datasets.delete",
    "bigquery.datasets.create",
    "bigquery.jobs.create",
}
# The project-level bindings earlier versions of deploy.sh made.
OLD_BINDINGS = [[METADATA_ROLE, MEMBER], ["roles/bigquery.jobUser", MEMBER]]
GROUP_READER = {"role": "READER", "groupByEmail": "analysts@example.com"}


def ok(run: Run) -> Run:
    assert run.rc == 0, f"exit {run.rc}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def project_roles(state: dict[str, Any]) -> set[str]:
    """The roles the function's account holds on the project."""
    return {r for r, m in state["policies"].get(f"project/{PROJECT}", []) if m == MEMBER}


def dataset_entries(state: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    """The function's account's entries in a dataset's access list."""
    access = state["resources"][f"dataset/{dataset}"].get("access", [])
    return [e for e in access if e.get("userByEmail") == RUNTIME_SA or e.get("iamMember") == MEMBER]


def dataset_roles(state: dict[str, Any], dataset: str) -> set[str]:
    return {e["role"] for e in dataset_entries(state, dataset)}


def held(state: dict[str, Any]) -> dict[str, set[str]]:
    """Every BigQuery permission the function's account holds, by where it holds it."""

    def permissions(names: set[str]) -> set[str]:
        out: set[str] = set()
        for name in names:
            if name.startswith("roles/bigquery."):
                out.add(name)  # a predefined role: never expected
            elif name in ("OWNER", "WRITER", "READER"):
                out.add(f"dataset {name}")
            else:
                record = state["resources"][f"role/{name.rsplit('/', 1)[-1]}"]
                out |= set(record["includedPermissions"])
        return out

    return {
        "project": permissions(
            {r for r in project_roles(state) if "bigquery" in r or "tenants_bootstrap" in r}
        ),
        "tenants": permissions(dataset_roles(state, "tenants")),
        "tenants_backups": permissions(dataset_roles(state, "tenants_backups")),
    }


def role_permissions(state: dict[str, Any], name: str) -> set[str]:
    return set(state["resources"][f"role/{name.rsplit('/', 1)[-1]}"]["includedPermissions"])


def assert_metadata_only(state: dict[str, Any]) -> None:
    assert project_roles(state) & {METADATA_ROLE, DESTRUCTIVE_ROLE, BACKUP_ROLE, JOBS_ROLE} == set()
    assert not [r for r in project_roles(state) if r.startswith("roles/bigquery.")]
    assert dataset_roles(state, "tenants") == {METADATA_ROLE}
    assert dataset_roles(state, "tenants_backups") == set()
    assert held(state) == {"project": set(), "tenants": PERMISSIONS[METADATA_ROLE], "tenants_backups": set()}


def assert_destructive(state: dict[str, Any]) -> None:
    bigquery_on_project = {r for r in project_roles(state) if "bigquery" in r or "tenants_bootstrap" in r}
    assert bigquery_on_project == {JOBS_ROLE}
    assert dataset_roles(state, "tenants") == {METADATA_ROLE, DESTRUCTIVE_ROLE}
    assert dataset_roles(state, "tenants_backups") == {BACKUP_ROLE}
    assert held(state) == {
        "project": PERMISSIONS[JOBS_ROLE],
        "tenants": PERMISSIONS[METADATA_ROLE] | PERMISSIONS[DESTRUCTIVE_ROLE],
        "tenants_backups": PERMISSIONS[BACKUP_ROLE],
    }


def old_deployment(harness: Harness, *, destructive: bool) -> None:
    """The project as the previous deploy.sh left it, after the function made both datasets: the
    metadata role (with bigquery.datasets.create) and roles/bigquery.jobUser on the project, and
    the function's account OWNER of the datasets as their creator."""
    ok(harness.deploy())
    state = harness.read_state()
    state["policies"][f"project/{PROJECT}"] += OLD_BINDINGS if destructive else OLD_BINDINGS[:1]
    permissions = PERMISSIONS[METADATA_ROLE] | {"bigquery.datasets.create"}
    if destructive:
        permissions |= {"bigquery.tables.getData", "bigquery.tables.updateData"}
        permissions |= {"bigquery.tables.delete", "bigquery.datasets.delete"}
    state["resources"]["role/tenants_bootstrap"]["includedPermissions"] = sorted(permissions)
    for name in ("tenants", "tenants_backups"):
        state["resources"][f"dataset/{name}"]["access"] = [
            {"role": "WRITER", "specialGroup": "projectWriters"},
            {"role": "OWNER", "specialGroup": "projectOwners"},
            {"role": "OWNER", "userByEmail": RUNTIME_SA},
            {"role": "READER", "specialGroup": "projectReaders"},
            GROUP_READER,
        ]
    harness.write_state(state)


# ---------------------------------------------------------------------------------------------
# Dataset-level grants only


def test_dry_run_grants_bigquery_on_the_datasets_only(harness: Harness) -> None:
    run = ok(harness.deploy("--dry-run"))
    assert run.calls == []
    lines = run.stdout.splitlines()
    project_grants = [line for line in lines if line.startswith("gcloud projects add-iam-policy-binding")]
    assert project_grants
    assert not [line for line in project_grants if "bigquery" in line or "tenants_bootstrap" in line]
    for name in ("tenants", "tenants_backups"):
        (mk,) = [line for line in lines if " mk --dataset " in line and line.endswith(f"{PROJECT}:{name}")]
        assert mk.startswith(f"bq --project_id={PROJECT} --location=US mk --dataset ")
    (update,) = [line for line in lines if line.startswith("bq ") and " update " in line]
    assert update.endswith(f"{PROJECT}:tenants")
    assert "--update_mode=update_acl" in update and "--source=" in update
    assert f"{RUNTIME_SA}'\\''s replaced by: {METADATA_ROLE}>" in update
    # The datasets are made after the account and the roles their entries name.
    index = {line: i for i, line in enumerate(lines)}
    made = [
        i for line, i in index.items() if "iam service-accounts create" in line or "iam roles create" in line
    ]
    assert max(made) < index[update]


def test_dry_run_with_allow_destructive_adds_only_the_jobs_role_to_the_project(harness: Harness) -> None:
    run = ok(harness.deploy("--dry-run", "--allow-destructive"))
    lines = run.stdout.splitlines()
    project_grants = [
        line
        for line in lines
        if line.startswith("gcloud projects add-iam-policy-binding")
        and ("bigquery" in line or "tenants_bootstrap" in line)
    ]
    assert len(project_grants) == 1
    assert f"--role={JOBS_ROLE} " in project_grants[0] and f"--member={MEMBER} " in project_grants[0]
    updates = {
        line.rsplit(" ", 1)[-1]: line for line in lines if line.startswith("bq ") and " update " in line
    }
    assert set(updates) == {f"{PROJECT}:tenants", f"{PROJECT}:tenants_backups"}
    assert f"replaced by: {METADATA_ROLE},{DESTRUCTIVE_ROLE}>" in updates[f"{PROJECT}:tenants"]
    assert f"replaced by: {BACKUP_ROLE}>" in updates[f"{PROJECT}:tenants_backups"]
    assert "--permissions=bigquery.datasets.create,bigquery.jobs.create\n" in run.stdout


def test_a_first_run_grants_bigquery_on_the_datasets_only(harness: Harness) -> None:
    run = ok(harness.deploy())
    state = harness.read_state()
    assert_metadata_only(state)
    for name, permissions in PERMISSIONS.items():
        assert role_permissions(state, name) == permissions, name
    # No IAM binding anywhere gives the account a BigQuery role.
    for grant in run.grants():
        assert not (grant[3] == MEMBER and ("bigquery" in grant[2] or "tenants_bootstrap" in grant[2]))


def test_allow_destructive_grants_the_rest_on_the_datasets_and_two_permissions_on_the_project(
    harness: Harness,
) -> None:
    ok(harness.deploy("--allow-destructive"))
    state = harness.read_state()
    assert_destructive(state)
    assert ok(harness.deploy("--allow-destructive")).mutations == []


def test_a_run_without_allow_destructive_takes_every_destructive_permission_back(harness: Harness) -> None:
    ok(harness.deploy("--allow-destructive"))
    back = ok(harness.deploy())
    state = harness.read_state()
    assert_metadata_only(state)
    everywhere = set().union(*held(state).values())
    assert not everywhere & DESTRUCTIVE
    removed = back.find("projects", "remove-iam-policy-binding")
    assert [(c.flag("role"), c.flag("member")) for c in removed] == [(JOBS_ROLE, MEMBER)]
    assert ok(harness.deploy()).mutations == []


@pytest.mark.parametrize("destructive", [False, True])
def test_an_upgrade_loses_what_earlier_versions_granted(harness: Harness, destructive: bool) -> None:
    old_deployment(harness, destructive=destructive)
    upgrade = ok(harness.deploy())
    state = harness.read_state()
    assert_metadata_only(state)
    assert not [b for b in state["policies"][f"project/{PROJECT}"] if b in OLD_BINDINGS]
    assert role_permissions(state, METADATA_ROLE) == PERMISSIONS[METADATA_ROLE]
    for name in ("tenants", "tenants_backups"):
        access = state["resources"][f"dataset/{name}"]["access"]
        assert {"role": "OWNER", "userByEmail": RUNTIME_SA} not in access
        assert GROUP_READER in access  # what is not the function's stays
        assert {"role": "OWNER", "specialGroup": "projectOwners"} in access
    removed = {c.flag("role") for c in upgrade.find("projects", "remove-iam-policy-binding")}
    assert removed == {METADATA_ROLE, "roles/bigquery.jobUser"} if destructive else {METADATA_ROLE}
    assert ok(harness.deploy()).mutations == []


def test_an_upgrade_with_allow_destructive_moves_the_grants_to_the_datasets(harness: Harness) -> None:
    old_deployment(harness, destructive=True)
    ok(harness.deploy("--allow-destructive"))
    state = harness.read_state()
    assert_destructive(state)
    assert not [b for b in state["policies"][f"project/{PROJECT}"] if b in OLD_BINDINGS]


def test_datasets_are_made_with_explicit_access_entries_the_function_does_not_own(harness: Harness) -> None:
    run = ok(harness.deploy("--allow-destructive"))
    state = harness.read_state()
    for name in ("tenants", "tenants_backups"):
        (mk,) = [c for c in run.find("mk", prog="bq") if c.words[-1] == f"{PROJECT}:{name}"]
        assert "dataset" in mk.flags and mk.flag("location") == "US"
        (update,) = [c for c in run.find("update", prog="bq") if c.words[-1] == f"{PROJECT}:{name}"]
        assert run.calls.index(mk) < run.calls.index(update)
        assert update.flag("update_mode") == "update_acl"
        record = state["resources"][f"dataset/{name}"]
        assert record["location"] == "US"
        # The function's account holds its custom roles there, and nothing else: not OWNER,
        # WRITER or READER, and no predefined role.
        entries = dataset_entries(state, name)
        assert entries and all(e["role"].startswith(f"projects/{PROJECT}/roles/") for e in entries)
        assert {"role": "OWNER", "specialGroup": "projectOwners"} in record["access"]
    backups = state["resources"]["dataset/tenants_backups"]
    assert backups["defaultTableExpirationMs"] == str(7 * 86400 * 1000)


def test_existing_datasets_are_not_made_again(deployed: Harness) -> None:
    harness = deployed
    run = ok(harness.deploy())
    assert not run.find("mk", prog="bq")
    assert len(run.find("show", prog="bq")) == 2


def test_an_access_entry_removed_by_hand_is_restored_and_nothing_else_touched(deployed: Harness) -> None:
    harness = deployed
    state = harness.read_state()
    record = state["resources"]["dataset/tenants"]
    record["access"] = [e for e in record["access"] if e.get("userByEmail") != RUNTIME_SA]
    harness.write_state(state)
    run = ok(harness.deploy())
    assert [(c.prog, c.words[0], c.words[-1]) for c in run.mutations] == [
        ("bq", "update", f"{PROJECT}:tenants")
    ]
    assert dataset_roles(harness.read_state(), "tenants") == {METADATA_ROLE}


@pytest.mark.parametrize("dataset", ["tenants", "tenants_backups"])
def test_a_dataset_in_another_location_stops_the_run(harness: Harness, dataset: str) -> None:
    harness.write_state(
        {
            "services": [],
            "policies": {},
            "resources": {
                f"dataset/{dataset}": {
                    "datasetReference": {"projectId": PROJECT, "datasetId": dataset},
                    "location": "EU",
                    "etag": "etag-1",
                    "access": [{"role": "OWNER", "specialGroup": "projectOwners"}],
                }
            },
        }
    )
    run = harness.deploy()
    assert run.rc == 1
    assert f"dataset {PROJECT}:{dataset} exists in EU, not in US" in run.stderr
    assert "--location EU" in run.stderr
    assert [c.words[:2] for c in run.mutations] == [["services", "enable"]]
    # The same location in another case is no mismatch: the dataset is used as it is.
    again = ok(harness.deploy("--location", "eu"))
    assert [c.words[-1] for c in again.find("mk", prog="bq")] == [
        f"{PROJECT}:{other}" for other in ("tenants", "tenants_backups") if other != dataset
    ]


# ---------------------------------------------------------------------------------------------
# Buckets


def test_existing_buckets_get_public_access_prevention_and_the_state_bucket_versioning(
    harness: Harness,
) -> None:
    bucket = {
        "location": "US-CENTRAL1",
        "uniform_bucket_level_access": True,
        "public_access_prevention": "inherited",
        "labels": {},
    }
    harness.write_state(
        {
            "services": [],
            "policies": {},
            "resources": {
                f"bucket/{SCHEMA_BUCKET}": {**bucket, "name": SCHEMA_BUCKET, "versioning_enabled": True},
                f"bucket/{STATE_BUCKET}": {**bucket, "name": STATE_BUCKET, "versioning_enabled": None},
            },
        }
    )
    run = ok(harness.deploy())
    assert not run.find("storage", "buckets", "create")
    updates = sorted(
        (c.words[3], flag)
        for c in run.find("storage", "buckets", "update")
        for flag in c.flags
        if flag in ("public-access-prevention", "versioning")
    )
    assert updates == [
        (f"gs://{STATE_BUCKET}", "public-access-prevention"),
        (f"gs://{STATE_BUCKET}", "versioning"),
        (f"gs://{SCHEMA_BUCKET}", "public-access-prevention"),
    ]
    state = harness.read_state()
    for name in (SCHEMA_BUCKET, STATE_BUCKET):
        assert state["resources"][f"bucket/{name}"]["public_access_prevention"] == "enforced"
        assert state["resources"][f"bucket/{name}"]["versioning_enabled"] is True
    assert ok(harness.deploy()).mutations == []


# ---------------------------------------------------------------------------------------------
# Settings refused before any command


@pytest.mark.parametrize("script", ["deploy.sh", "teardown.sh"])
@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--backup-dataset", "tenants"], {}),
        (["--dataset", "ledger", "--backup-dataset=Ledger"], {}),
        ([], {"BOOTSTRAP_DATASET": "ledger", "BOOTSTRAP_BACKUP_DATASET": "ledger"}),
        ([], {"BOOTSTRAP_BACKUP_DATASET": "tenants"}),
    ],
)
def test_a_backup_dataset_equal_to_the_dataset_is_refused_before_any_command(
    harness: Harness, script: str, args: list[str], env: dict[str, str]
) -> None:
    run = harness.run(script, *args, "--dry-run", **env)
    assert run.rc == 2
    # The function's own message (function/config.py), whichever script asks.
    assert "is the dataset itself: a dataset recreation would delete its own backups" in run.stderr
    assert run.calls == [] and run.stdout == ""
    assert harness.run(script, *args, **env).calls == []


# ---------------------------------------------------------------------------------------------
# Who may publish bootstrap requests


def test_requesters_may_publish_on_the_requests_topic_only(deployed: Harness) -> None:
    harness = deployed
    members = ["user:ann@example.com", "group:tenant-ops@example.com"]
    run = ok(harness.deploy("--requester", members[0], f"--requester={members[1]}"))
    assert {g for g in run.grants()} == {
        ("pubsub topics", "bootstrap-requests", "roles/pubsub.publisher", member) for member in members
    }
    policy = harness.read_state()["policies"]["topic/bootstrap-requests"]
    assert sorted(m for r, m in policy if r == "roles/pubsub.publisher") == sorted(members)
    assert ok(harness.deploy("--requester", members[0], "--requester", members[1])).mutations == []
    # Added, never removed by a run without them.
    assert ok(harness.deploy()).mutations == []


@pytest.mark.parametrize("member", ["ann@example.com", "user:", "owner:ann@example.com", "user:a b"])
def test_a_requester_that_is_no_member_is_refused_before_any_command(harness: Harness, member: str) -> None:
    run = harness.deploy("--requester", member)
    assert run.rc == 2
    assert "requester (--requester)" in run.stderr
    assert run.calls == []
