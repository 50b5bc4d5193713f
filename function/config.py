"""Settings, read once from the environment (the contract's variables plus our own)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import DeploymentError
from .model import BIGQUERY_NAME

BUNDLED_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
PROJECT_ID = re.compile(r"^(?:[a-z][a-z0-9.:-]{1,62}[a-z0-9])$")
TOPIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$")
REQUEST_TIMEOUT = 30.0  # seconds for one HTTP request to a Google API; retry deadlines bound the total
TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}


class ConfigError(DeploymentError):
    """The deployment's configuration is wrong; the message says which variable and why."""


@dataclass(frozen=True)
class Settings:
    project: str
    dataset: str = "tenants"
    location: str = "US"
    schema_source: str = str(BUNDLED_SCHEMAS)
    completion_topic: str = "bootstrap-completed"
    allow_destructive: bool = False
    concurrency: int = (
        32  # requests in flight to use BigQuery's 100 req/s at ~0.3 s each (README: Performance)
    )
    retry_deadline: float = 60.0
    max_event_age: float = 3600.0
    state_bucket: str | None = None
    backup_dataset: str = ""
    backup_ttl_days: float = 7.0
    # The function's own timeout (deploy.sh's --timeout): no destructive step starts after it,
    # and the request ledger's lease outlives it.
    timeout: float = 540.0
    emulators: tuple[tuple[str, str], ...] = ()  # the *_EMULATOR_HOST variables that are set

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read the settings; `overrides` (from CLI flags) win over the environment."""
        env = os.environ if env is None else env
        raw: dict[str, object] = {
            "project": env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT") or "",
            "dataset": env.get("BOOTSTRAP_DATASET", "tenants"),
            "location": env.get("BOOTSTRAP_LOCATION", "US"),
            "schema_source": env.get("SCHEMA_SOURCE") or str(BUNDLED_SCHEMAS),
            "completion_topic": env.get("COMPLETION_TOPIC", "bootstrap-completed"),
            "allow_destructive": _flag(env, "ALLOW_DESTRUCTIVE"),
            "concurrency": _number(env, "BOOTSTRAP_CONCURRENCY", 32, int, 1, 64),
            "retry_deadline": _number(env, "BOOTSTRAP_RETRY_DEADLINE", 60.0, float, 1, 3600),
            "max_event_age": _number(env, "BOOTSTRAP_MAX_EVENT_AGE", 3600.0, float, 1, 7 * 86400),
            "state_bucket": env.get("BOOTSTRAP_STATE_BUCKET") or None,
            "backup_dataset": env.get("BOOTSTRAP_BACKUP_DATASET", ""),
            "backup_ttl_days": _number(env, "BOOTSTRAP_BACKUP_TTL_DAYS", 7.0, float, 0.05, 3650),
            "timeout": _number(env, "BOOTSTRAP_TIMEOUT", 540.0, float, 10, 3600, unit="s"),
        }
        raw.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(
            **raw,  # type: ignore[arg-type]
            emulators=tuple(
                (k, env[k])
                for k in ("BIGQUERY_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
                if env.get(k)
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.project:
            raise ConfigError("GOOGLE_CLOUD_PROJECT (or GCP_PROJECT) is not set: name the project")
        if not PROJECT_ID.fullmatch(self.project):
            raise ConfigError(f"GOOGLE_CLOUD_PROJECT={self.project!r} is not a valid project id")
        for var, name in (
            ("BOOTSTRAP_DATASET", self.dataset),
            ("BOOTSTRAP_BACKUP_DATASET", self.backups),
        ):
            if not BIGQUERY_NAME.fullmatch(name):
                raise ConfigError(f"{var}={name!r}: use 1-1024 letters, digits or underscores")
        if self.backups == self.dataset:
            raise ConfigError(
                f"BOOTSTRAP_BACKUP_DATASET={self.backups!r} is the dataset itself: a dataset "
                "recreation would delete its own backups; name another dataset"
            )
        if not TOPIC_NAME.fullmatch(self.completion_topic):
            raise ConfigError(f"COMPLETION_TOPIC={self.completion_topic!r} is not a valid topic name")
        if not self.location.strip():
            raise ConfigError("BOOTSTRAP_LOCATION is empty: name a BigQuery location such as US or EU")

    def emulator(self, variable: str) -> str | None:
        return dict(self.emulators).get(variable)

    @property
    def backups(self) -> str:
        return self.backup_dataset or f"{self.dataset}_backups"


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{name}={env[name]!r}: use true or false")


def _number(
    env: Mapping[str, str], name: str, default: float, kind: type, low: float, high: float, unit: str = ""
):
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text.removesuffix(unit) if unit else text)  # "540s", as gcloud spells a timeout
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name}={text!r} is not {what}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={text!r}: must be between {low:g} and {high:g}")
    return value
