"""deploy/deploy.sh against a recording fake gcloud: what it creates, with which flags, and that a
second run changes nothing.

Over 400 lines: everything deploy.sh creates, checked in one place against one fake.
"""

from __future__ import annotations

import pytest
from deploy_harness import PROJECT, PROJECT_NUMBER, Harness, Run

RUNTIME_SA = f"tenants-bootstrap-run@{PROJECT}.iam.gserviceaccount.com"
TRIGGER_SA = f"tenants-bootstrap-trigger@{PROJECT}.iam.gserviceaccount.com"
BUILD_SA = f"tenants-bootstrap-build@{PROJECT}.iam.gserviceaccount.com"
PUBSUB_AGENT = f"service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
STORAGE_AGENT = f"service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
SCHEMA_BUCKET = f"{PROJECT}-tenant-schemas"
STATE_BUCKET = f"{PROJECT}-bootstrap-state"
FUNCTION_SUB = f"projects/{PROJECT}/subscriptions/eventarc-us-central1-tenants-bootstrap-417235-sub-042"
STORAGE_SUB = (
    f"projects/{PROJECT}/subscriptions/eventarc-us-central1-tenants-bootstrap-schema-uploads-sub-042"
)

BASE_PERMISSIONS = {
    "bigquery.datasets.get",
    "bigquery.datasets.update",
    "bigquery.tables.create",
    "bigquery.tables.get",
    "bigquery.tables.list",
    "bigquery.tables.update",
}

# The IAM bindings a first run makes (the function's BigQuery grants are dataset access entries:
# tests/deploy/test_deploy_privilege.py).
EXPECTED_GRANTS = {
    ("projects", PROJECT, "roles/eventarc.eventReceiver", f"serviceAccount:{TRIGGER_SA}"),
    ("projects", PROJECT, "roles/cloudbuild.builds.builder", f"serviceAccount:{BUILD_SA}"),
    ("projects", PROJECT, "roles/pubsub.publisher", f"serviceAccount:{STORAGE_AGENT}"),
    (
        "iam service-accounts",
        TRIGGER_SA,
        "roles/iam.serviceAccountTokenCreator",
        f"serviceAccount:{PUBSUB_AGENT}",
    ),
    ("pubsub topics", "bootstrap-completed", "roles/pubsub.publisher", f"serviceAccount:{RUNTIME_SA}"),
    (
        "pubsub topics",
        "bootstrap-dead-letter",
        "roles/pubsub.publisher",
        f"serviceAccount:{PUBSUB_AGENT}",
    ),
    (
        "storage buckets",
        f"gs://{SCHEMA_BUCKET}",
        "roles/storage.objectViewer",
        f"serviceAccount:{RUNTIME_SA}",
    ),
    (
        "storage buckets",
        f"gs://{STATE_BUCKET}",
        "roles/storage.objectUser",
        f"serviceAccount:{RUNTIME_SA}",
    ),
    ("run services", "tenants-bootstrap", "roles/run.invoker", f"serviceAccount:{TRIGGER_SA}"),
    ("pubsub subscriptions", FUNCTION_SUB, "roles/pubsub.subscriber", f"serviceAccount:{PUBSUB_AGENT}"),
    ("pubsub subscriptions", STORAGE_SUB, "roles/pubsub.subscriber", f"serviceAccount:{PUBSUB_AGENT}"),
}


def ok(run: Run) -> Run:
    assert run.rc == 0, f"exit {run.rc}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def env_vars(run: Run) -> dict[str, str]:
    value = run.one("functions", "deploy").flag("set-env-vars")
    return dict(pair.split("=", 1) for pair in value.split(","))


def role_permissions(run: Run, role: str = "tenants_bootstrap") -> set[str]:
    calls = run.find("iam", "roles", "create", role) + run.find("iam", "roles", "update", role)
    assert len(calls) == 1
    return set(calls[0].flag("permissions").split(","))


# ---------------------------------------------------------------------------------------------
# The first run, on an empty project


@pytest.fixture
def first_harness(first_deploy: tuple[Harness, Run]) -> Harness:
    return first_deploy[0]


@pytest.fixture
def first(first_deploy: tuple[Harness, Run]) -> Run:
    return first_deploy[1]


def test_enables_the_apis_the_function_needs(first: Run) -> None:
    enabled = set(first.one("services", "enable").words[2:])
    assert {
        "cloudfunctions.googleapis.com",
        "run.googleapis.com",
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
        "eventarc.googleapis.com",
        "pubsub.googleapis.com",
        "storage.googleapis.com",
        "bigquery.googleapis.com",
        "iam.googleapis.com",
    } <= enabled


def test_deploys_a_gen2_function_on_the_requests_topic_with_retries(
    first: Run, first_harness: Harness
) -> None:
    deploy = first.one("functions", "deploy")
    assert deploy.words[2] == "tenants-bootstrap"
    assert "gen2" in deploy.flags
    assert "retry" in deploy.flags
    assert deploy.flag("entry-point") == "bootstrap"
    assert deploy.flag("trigger-topic") == "bootstrap-requests"
    assert deploy.flag("region") == "us-central1"
    assert deploy.flag("runtime") == "python311"
    assert deploy.flag("memory") == "512Mi"
    assert deploy.flag("max-instances") == "10"
    assert deploy.flag("source") == str(first_harness.root)
    assert deploy.flag("service-account") == RUNTIME_SA
    assert deploy.flag("trigger-service-account") == TRIGGER_SA
    assert deploy.flag("build-service-account") == f"projects/{PROJECT}/serviceAccounts/{BUILD_SA}"
    assert "no-allow-unauthenticated" in deploy.flags
    assert deploy.flag("update-labels").startswith("deploy_hash=")


def test_function_environment_follows_the_contract(first: Run) -> None:
    assert env_vars(first) == {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "BOOTSTRAP_DATASET": "tenants",
        "BOOTSTRAP_LOCATION": "US",
        "SCHEMA_SOURCE": f"gs://{SCHEMA_BUCKET}/schemas/",
        "COMPLETION_TOPIC": "bootstrap-completed",
        "ALLOW_DESTRUCTIVE": "false",
        "BOOTSTRAP_STATE_BUCKET": STATE_BUCKET,
        "BOOTSTRAP_BACKUP_DATASET": "tenants_backups",
        "BOOTSTRAP_MAX_EVENT_AGE": "3600",
        "BOOTSTRAP_RETRY_DEADLINE": "60",
        "BOOTSTRAP_CONCURRENCY": "32",
        "BOOTSTRAP_TIMEOUT": "540s",  # the function's own timeout: the ledger's lease follows it
    }


def test_storage_trigger_targets_the_function_service(first: Run) -> None:
    trigger = first.one("eventarc", "triggers", "create")
    assert trigger.words[3] == "tenants-bootstrap-schema-uploads"
    assert sorted(trigger.flags["event-filters"]) == [
        f"bucket={SCHEMA_BUCKET}",
        "type=google.cloud.storage.object.v1.finalized",
    ]
    assert trigger.flag("destination-run-service") == "tenants-bootstrap"
    assert trigger.flag("destination-run-region") == "us-central1"
    assert trigger.flag("location") == "us-central1"  # where the bucket is
    assert trigger.flag("service-account") == TRIGGER_SA
    # The Cloud Storage service agent may publish before the trigger is made.
    grant = next(
        i
        for i, c in enumerate(first.calls)
        if c.is_("projects", "add-iam-policy-binding")
        and c.flag("member") == f"serviceAccount:{STORAGE_AGENT}"
    )
    assert grant < first.calls.index(trigger)


def test_both_trigger_subscriptions_dead_letter(first: Run) -> None:
    updates = {c.words[3]: c for c in first.find("pubsub", "subscriptions", "update")}
    assert set(updates) == {FUNCTION_SUB, STORAGE_SUB}
    for update in updates.values():
        assert update.flag("dead-letter-topic") == "bootstrap-dead-letter"
        assert update.flag("max-delivery-attempts") == "10"


def test_topics_and_their_subscriptions(first: Run) -> None:
    created = {c.words[3] for c in first.find("pubsub", "topics", "create")}
    assert created == {"bootstrap-requests", "bootstrap-completed", "bootstrap-dead-letter"}
    subs = {c.words[3]: c.flag("topic") for c in first.find("pubsub", "subscriptions", "create")}
    assert subs == {
        "bootstrap-dead-letter-sub": "bootstrap-dead-letter",
        "bootstrap-completed-watch": "bootstrap-completed",
    }


def test_least_privilege_grants_exactly(first: Run) -> None:
    grants = first.grants()
    assert grants == EXPECTED_GRANTS
    roles = {g[2] for g in grants}
    assert not roles & {"roles/owner", "roles/editor", "roles/bigquery.admin"}
    assert not [r for r in roles if r.endswith(".admin")]
    assert role_permissions(first) == BASE_PERMISSIONS


def test_three_dedicated_service_accounts(first: Run) -> None:
    created = {c.words[3] for c in first.find("iam", "service-accounts", "create")}
    assert created == {"tenants-bootstrap-run", "tenants-bootstrap-trigger", "tenants-bootstrap-build"}


def test_buckets_uniform_private_and_versioned(first: Run) -> None:
    created = {c.words[3]: c for c in first.find("storage", "buckets", "create")}
    assert set(created) == {f"gs://{SCHEMA_BUCKET}", f"gs://{STATE_BUCKET}"}
    for call in created.values():
        assert "uniform-bucket-level-access" in call.flags
        assert "public-access-prevention" in call.flags
        assert call.flag("location") == "us-central1"
    versioned = [c.words[3] for c in first.find("storage", "buckets", "update") if "versioning" in c.flags]
    assert versioned == [f"gs://{SCHEMA_BUCKET}", f"gs://{STATE_BUCKET}"]


def test_seeds_the_schema_bucket_through_the_project_sync(first: Run, first_harness: Harness) -> None:
    (sync,) = [c for c in first.calls if c.prog == "python"]
    assert sync.argv == [
        "-m",
        "function",
        "sync",
        "--from",
        "schemas",
        "--to",
        f"gs://{SCHEMA_BUCKET}/schemas/",
        "--skip-plan",
    ]
    assert sync.cwd == str(first_harness.root)
    # before the function that reads the bucket is deployed
    assert first.calls.index(sync) < first.calls.index(first.one("functions", "deploy"))


def test_every_call_names_the_project(first: Run) -> None:
    for call in first.calls:
        if call.prog == "gcloud" and not call.is_("meta"):
            assert f"--project={PROJECT}" in call.argv, call.argv
        if call.prog == "bq":
            assert f"--project_id={PROJECT}" in call.argv, call.argv
    assert first.find("mk", prog="bq")


# ---------------------------------------------------------------------------------------------
# Running again


def test_second_run_changes_nothing(deployed: Harness) -> None:
    harness = deployed
    again = ok(harness.deploy())
    assert again.mutations == [], [c.argv for c in again.mutations]
    assert "not redeployed" in again.stderr


def test_a_changed_setting_redeploys_only_the_function(deployed: Harness) -> None:
    harness = deployed
    again = ok(harness.deploy("--memory", "1Gi"))
    assert [c.words[:2] for c in again.mutations] == [["functions", "deploy"]]
    assert again.one("functions", "deploy").flag("memory") == "1Gi"


def test_changed_code_redeploys(deployed: Harness) -> None:
    harness = deployed
    (harness.root / "function" / "__init__.py").write_text("VERSION = 2\n")
    again = ok(harness.deploy())
    assert [c.words[:2] for c in again.mutations] == [["functions", "deploy"]]


def test_changed_test_files_do_not_redeploy(deployed: Harness) -> None:
    harness = deployed
    (harness.root / "tests" / "test_x.py").write_text("assert True\n")
    assert ok(harness.deploy()).mutations == []


def test_files_gcloudignore_leaves_out_do_not_redeploy(deployed: Harness) -> None:
    """The deploy hash covers exactly the upload set: the repository's real .gcloudignore."""
    harness = deployed
    (harness.root / "README.md").write_text("# edited\n")
    (harness.root / "Makefile").write_text("all:\n")
    assert ok(harness.deploy()).mutations == []


def test_changed_schemas_are_synced_again(deployed: Harness) -> None:
    harness = deployed
    harness.write_schema("accounts", "account_id")
    again = ok(harness.deploy())
    assert [c for c in again.calls if c.prog == "python"]
    labels = [c.flag("update-labels") for c in again.find("storage", "buckets", "update")]
    assert len(labels) == 1 and labels[0].startswith("schema_digest=")


def test_force_redeploy(deployed: Harness) -> None:
    harness = deployed
    again = ok(harness.deploy("--force-redeploy"))
    assert [c.words[:2] for c in again.mutations] == [["functions", "deploy"]]


def test_drift_is_repaired_and_nothing_else_touched(deployed: Harness) -> None:
    harness = deployed
    state = harness.read_state()
    state["resources"][f"bucket/{SCHEMA_BUCKET}"]["versioning_enabled"] = None
    state["resources"][f"subscription/{STORAGE_SUB.rsplit('/', 1)[1]}"].pop("deadLetterPolicy")
    state["policies"][f"project/{PROJECT}"].remove(
        ["roles/eventarc.eventReceiver", f"serviceAccount:{TRIGGER_SA}"]
    )
    harness.write_state(state)
    again = ok(harness.deploy())
    assert sorted(" ".join(c.words[:4]) for c in again.mutations) == [
        f"projects add-iam-policy-binding {PROJECT}",
        f"pubsub subscriptions update {STORAGE_SUB}",
        f"storage buckets update gs://{SCHEMA_BUCKET}",
    ]


def test_allow_destructive_sets_the_function_setting_and_takes_it_back(harness: Harness) -> None:
    first = ok(harness.deploy("--allow-destructive"))
    assert env_vars(first)["ALLOW_DESTRUCTIVE"] == "true"
    back = ok(harness.deploy())
    assert env_vars(back)["ALLOW_DESTRUCTIVE"] == "false"
    assert ok(harness.deploy()).mutations == []


def test_allow_destructive_in_the_shell_is_ignored(harness: Harness) -> None:
    run = ok(harness.deploy(ALLOW_DESTRUCTIVE="true"))
    assert env_vars(run)["ALLOW_DESTRUCTIVE"] == "false"


def test_a_deleted_custom_role_is_undeleted(deployed: Harness) -> None:
    harness = deployed
    state = harness.read_state()
    state["resources"]["role/tenants_bootstrap"]["deleted"] = True
    harness.write_state(state)
    again = ok(harness.deploy())
    assert [" ".join(c.words[:3]) for c in again.mutations] == ["iam roles undelete"]


def test_trigger_lives_where_an_existing_schema_bucket_lives(harness: Harness) -> None:
    harness.write_state(
        {
            "services": [],
            "policies": {},
            "resources": {
                f"bucket/{SCHEMA_BUCKET}": {
                    "name": SCHEMA_BUCKET,
                    "location": "US",
                    "uniform_bucket_level_access": True,
                    "versioning_enabled": True,
                    "public_access_prevention": "enforced",
                    "labels": {},
                }
            },
        }
    )
    run = ok(harness.deploy())
    assert not run.find("storage", "buckets", "create", f"gs://{SCHEMA_BUCKET}")
    assert run.one("eventarc", "triggers", "create").flag("location") == "us"


def test_settings_from_flags_and_environment(harness: Harness) -> None:
    run = ok(
        harness.deploy(
            "--region=europe-west1",
            "--dataset",
            "tenants_eu",
            "--location",
            "EU",
            "--schema-bucket=eu-schemas",
            "--max-instances",
            "3",
            "--runtime=python312",
            BOOTSTRAP_STATE_BUCKET="eu-state",
            COMPLETION_TOPIC="done",
            BOOTSTRAP_MAX_DELIVERY_ATTEMPTS="20",
        )
    )
    deploy = run.one("functions", "deploy")
    assert deploy.flag("region") == "europe-west1"
    assert deploy.flag("runtime") == "python312"
    assert deploy.flag("max-instances") == "3"
    env = env_vars(run)
    assert env["BOOTSTRAP_DATASET"] == "tenants_eu"
    assert env["BOOTSTRAP_LOCATION"] == "EU"
    assert env["BOOTSTRAP_BACKUP_DATASET"] == "tenants_eu_backups"
    assert env["SCHEMA_SOURCE"] == "gs://eu-schemas/schemas/"
    assert env["BOOTSTRAP_STATE_BUCKET"] == "eu-state"
    assert env["COMPLETION_TOPIC"] == "done"
    for update in run.find("pubsub", "subscriptions", "update"):
        assert update.flag("max-delivery-attempts") == "20"


# ---------------------------------------------------------------------------------------------
# Failing early and clearly


def test_missing_project_fails_before_any_command(harness: Harness) -> None:
    run = harness.run("deploy.sh", drop=("GOOGLE_CLOUD_PROJECT",))
    assert run.rc == 2
    assert "--project" in run.stderr and "GOOGLE_CLOUD_PROJECT" in run.stderr
    assert run.calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-delivery-attempts", "3"], "5 to 100"),
        (["--region", "middle-earth"], "region"),
        (["--memory", "lots"], "memory"),
        (["--schema-bucket", "Bad Bucket"], "schema bucket"),
        (["--project", "X"], "project"),
        (["--max-instances", "0"], "max instances"),
        (["--no-such-flag", "1"], "unknown option"),
        (["--dataset"], "needs a value"),
        (["stray"], "unexpected argument"),
    ],
)
def test_bad_settings_fail_before_any_command(harness: Harness, args: list[str], message: str) -> None:
    run = harness.deploy(*args)
    assert run.rc == 2
    assert message in run.stderr
    assert run.calls == []


def test_an_error_other_than_not_found_stops_the_run(harness: Harness) -> None:
    run = harness.deploy(FAKE_FAIL="topics describe bootstrap-completed")
    assert run.rc == 1
    assert "PERMISSION_DENIED" in run.stderr
    assert not run.find("pubsub", "topics", "create", "bootstrap-completed")
    assert not run.find("functions", "deploy")


def test_an_invalid_schema_stops_before_the_function_is_deployed(harness: Harness) -> None:
    run = harness.deploy(FAKE_SYNC_EXIT="1")
    assert run.rc == 1
    assert "sync failed" in run.stderr
    assert not run.find("functions", "deploy")
    assert not [c for c in run.find("storage", "buckets", "update") if "update-labels" in c.flags]


def test_dry_run_prints_every_command_and_runs_none(harness: Harness) -> None:
    run = ok(harness.deploy("--dry-run"))
    assert run.calls == []
    commands = [line for line in run.stdout.splitlines() if not line.startswith("#")]
    assert all(line.startswith(("gcloud ", "bq ")) or " -m function sync " in line for line in commands), (
        commands
    )
    text = run.stdout
    for needle in (
        "gcloud services enable",
        "gcloud iam service-accounts create tenants-bootstrap-run",
        "gcloud pubsub topics create bootstrap-dead-letter",
        "gcloud storage buckets update gs://acme-tenants-prod-tenant-schemas --versioning",
        "gcloud functions deploy tenants-bootstrap --gen2",
        "--trigger-topic=bootstrap-requests --retry",
        "gcloud eventarc triggers create tenants-bootstrap-schema-uploads",
        "--event-filters=type=google.cloud.storage.object.v1.finalized",
        "--dead-letter-topic=bootstrap-dead-letter --max-delivery-attempts=10",
        "-m function sync --from schemas --to gs://acme-tenants-prod-tenant-schemas/schemas/ --skip-plan",
    ):
        assert needle in text, needle


def test_dry_run_needs_the_project_python_to_check_the_settings(harness: Harness) -> None:
    run = harness.deploy("--dry-run", PYTHON="/nonexistent/python")
    assert run.rc == 1
    assert "/nonexistent/python not found" in run.stderr and "make venv" in run.stderr
    assert run.calls == [] and run.stdout == ""
    assert f"{harness.bin / 'python'} -m function sync" in ok(harness.deploy("--dry-run")).stdout


def test_help(harness: Harness) -> None:
    run = ok(harness.deploy("--help"))
    for flag in (
        "--project",
        "--region",
        "--dataset",
        "--location",
        "--schema-bucket",
        "--state-bucket",
        "--runtime",
        "--memory",
        "--max-instances",
        "--allow-destructive",
        "--dry-run",
    ):
        assert flag in run.stdout
    assert run.calls == []
