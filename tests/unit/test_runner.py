"""Wiring decisions that need no emulator."""

import pytest

from function import runner
from function.config import Settings
from function.errors import RefusedError


def test_destructive_requests_are_refused_without_a_request_ledger():
    settings = Settings.from_env({"GOOGLE_CLOUD_PROJECT": "local-project"})
    with pytest.raises(RefusedError, match="set BOOTSTRAP_STATE_BUCKET"):
        runner.ledger(settings)
