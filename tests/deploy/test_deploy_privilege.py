"""deploy/deploy.sh's and teardown.sh's safety settings, against the recording fake."""

from __future__ import annotations

import pytest
from deploy_harness import Harness

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
    assert "the backup dataset must differ from the dataset" in run.stderr
    assert "delete its own backups" in run.stderr
    assert run.calls == [] and run.stdout == ""
    assert harness.run(script, *args, **env).calls == []
