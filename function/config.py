"""Settings, read once from the environment: `SETTINGS`, the one table of them, which the CLI,
`python -m function settings` and the README's Settings table follow."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DeploymentError
from .model import BIGQUERY_NAME
from .setting_values import Flag, Invalid, Number, Parser, Pattern, Text

BUNDLED_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
PROJECT_ID = re.compile(r"^(?:[a-z][a-z0-9.:-]{1,62}[a-z0-9])$")
TOPIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$")
LOCATION = re.compile(r"[A-Za-z0-9-]+")
REQUEST_TIMEOUT = 30.0  # seconds for one HTTP request to a Google API; retry deadlines bound the total
# Read by the official clients; the settings keep those that are set, so that the clients
# runner caches per Settings follow them.
EMULATORS = ("BIGQUERY_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")


class ConfigError(DeploymentError):
    """The deployment's configuration is wrong; the message says which variable and why."""


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str  # the Settings field
    variable: str
    default: Any
    parse: Parser
    meaning: str  # one line, for --help (the README may say more)
    fallbacks: tuple[str, ...] = ()  # read in turn when the variable is unset or blank
    flag: str | None = None  # the CLI's common flag, if it has one
    required: bool = False
    keep_blank: bool = False  # a blank text is parsed (and refused), not taken for the default
    check: Callable[[Any, Mapping[str, Any]], None] | None = None  # against the rows above it
    shown_default: str = ""  # how the default is documented when its value would not say it

    @property
    def variables(self) -> tuple[str, ...]:
        return (self.variable, *self.fallbacks)

    @property
    def label(self) -> str:
        return self.variable + "".join(f" (or {v})" for v in self.fallbacks)

    @property
    def documented_default(self) -> str:
        return self.shown_default or show(self.default)


def _not_the_dataset(backup: str, above: Mapping[str, Any]) -> None:
    # Compared without case, to be safe with case-insensitive datasets.
    dataset = above.get("dataset")
    if backup and dataset is not None and backup.lower() == dataset.lower():
        raise Invalid(
            "{setting} is the dataset itself: a dataset recreation would delete its own backups; "
            "name another dataset (compared without case)"
        )


_NAME = Pattern(BIGQUERY_NAME, "1-1024 letters, digits or underscores")

# The one table of settings (the contract's variables plus our own): each row's variable, default,
# parser (with the values it allows) and meaning. Settings.from_env, the CLI's common flags,
# `python -m function settings` (which deploy/deploy.sh runs on what it deploys) and the README's
# Settings table (held to it by tests/unit/test_readme_settings.py) all follow it.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "project",
        "GOOGLE_CLOUD_PROJECT",
        None,
        Pattern(
            PROJECT_ID,
            "3-64 lower-case letters, digits, hyphens, dots or colons, a letter first",
            "project id",
        ),
        "project of the dataset and topics",
        fallbacks=("GCP_PROJECT",),
        flag="--project",
        required=True,
        shown_default="required",
    ),
    Setting(
        "dataset",
        "BOOTSTRAP_DATASET",
        "tenants",
        _NAME,
        "dataset to ensure",
        flag="--dataset",
        keep_blank=True,
    ),
    Setting(
        "location",
        "BOOTSTRAP_LOCATION",
        "US",
        Pattern(
            LOCATION,
            "a BigQuery location such as US, EU or us-central1",
            blank="{variable} is empty: name a BigQuery location such as US or EU",
        ),
        "dataset location",
        flag="--location",
        keep_blank=True,
    ),
    Setting(
        "schema_source",
        "SCHEMA_SOURCE",
        str(BUNDLED_SCHEMAS),
        Text("a folder, or gs://BUCKET/PREFIX/"),
        "where the schema files are; a bucket's uploads are also watched",
        flag="--schema-source",
        shown_default="the bundled schemas/",
    ),
    Setting(
        "completion_topic",
        "COMPLETION_TOPIC",
        "bootstrap-completed",
        Pattern(TOPIC_NAME, "3-255 letters, digits or - . _ ~ + %, a letter first", "topic name"),
        "topic of the completion event",
        keep_blank=True,
    ),
    Setting(
        "requests_topic",
        "BOOTSTRAP_REQUESTS_TOPIC",
        "bootstrap-requests",
        Pattern(TOPIC_NAME, "3-255 letters, digits or - . _ ~ + %, a letter first", "topic name"),
        "topic `publish` sends bootstrap requests to (the CLI's)",
        keep_blank=True,
    ),
    Setting(
        "allow_destructive",
        "ALLOW_DESTRUCTIVE",
        False,
        Flag(),
        "the deployment's consent to forced recreations",
    ),
    Setting(
        "state_bucket",
        "BOOTSTRAP_STATE_BUCKET",
        None,
        Text("a bucket name"),
        "bucket of the request ledger; destructive requests are refused without it",
    ),
    Setting(
        "backup_dataset",
        "BOOTSTRAP_BACKUP_DATASET",
        "",
        _NAME,
        "where backups go; never the dataset itself",
        check=_not_the_dataset,
        shown_default="<dataset>_backups",
    ),
    Setting(
        "backup_ttl_days",
        "BOOTSTRAP_BACKUP_TTL_DAYS",
        7.0,
        Number(float, 0.05, 3650),
        "days after which a backup expires",
    ),
    Setting(
        "max_event_age",
        "BOOTSTRAP_MAX_EVENT_AGE",
        3600.0,
        Number(float, 1, 7 * 86400),
        "seconds; older events are acknowledged with a failed event, not acted on",
    ),
    Setting(
        "retry_deadline",
        "BOOTSTRAP_RETRY_DEADLINE",
        60.0,
        Number(float, 1, 3600),
        "seconds of retries per API call (transient errors, rate limits)",
    ),
    Setting(
        "concurrency",
        "BOOTSTRAP_CONCURRENCY",
        # Requests in flight to use BigQuery's 100 req/s at ~0.3 s each (README: Performance).
        32,
        Number(int, 1, 64),
        "BigQuery requests in flight (tables handled at once)",
    ),
    Setting(
        "api_rate",
        "BOOTSTRAP_API_RATE",
        100,
        Number(int, 0, 100_000),
        "BigQuery API requests per second the function allows itself (the per-user quota; 0: no limit)",
    ),
    Setting(
        "insert_rate",
        "BOOTSTRAP_INSERT_RATE",
        10,
        Number(int, 0, 10_000),
        "tables.insert requests per second the function allows itself (the per-user quota; 0: no limit)",
    ),
    Setting(
        "timeout",
        "BOOTSTRAP_TIMEOUT",
        # deploy.sh's --timeout: no destructive step starts after it, and the request ledger's
        # lease outlives it.
        540.0,
        Number(float, 10, 3600, suffix="s"),
        "seconds: the function's own timeout, as deployed",
    ),
)
_DEFAULTS = {row.name: row.default for row in SETTINGS}


@dataclass(frozen=True)
class Reading:
    """One setting as read: where it came from, its text, and its value or why it is refused."""

    setting: Setting
    source: str  # "default", "env", "env VARIABLE" (a fallback), "flag" or "flag --FLAG"
    text: str | None = None  # None: the default
    value: Any = None
    problem: str | None = None

    @property
    def shown(self) -> str:
        if self.text is None:
            return self.setting.documented_default
        return repr(self.text) if self.problem else show(self.value)


def read_settings(env: Mapping[str, str], overrides: Mapping[str, object]) -> tuple[Reading, ...]:
    """Every row, from its override (a CLI flag; None means not given), its variables, or its
    default. Each row is read whatever the others say, so every problem is reported at once."""
    unknown = set(overrides) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"no such setting: {', '.join(sorted(unknown))}")
    valid: dict[str, Any] = {}
    readings = []
    for row in SETTINGS:
        reading = _read(row, env, overrides.get(row.name), valid)
        if reading.problem is None:
            valid[row.name] = reading.value
        readings.append(reading)
    return tuple(readings)


def _read(row: Setting, env: Mapping[str, str], override: object, above: Mapping[str, Any]) -> Reading:
    source, variable, text = _given(row, env, override)
    if text is None:
        if row.required:
            return Reading(row, source, problem=f"{row.label} is not set: name the {row.meaning}")
        return Reading(row, source, value=row.default)
    try:
        value = row.parse(text)
        if row.check is not None:
            row.check(value, above)
    except Invalid as exc:
        problem = str(exc).format(setting=f"{variable}={text!r}", variable=variable)
        return Reading(row, source, text, problem=problem)
    return Reading(row, source, text, value)


def _given(row: Setting, env: Mapping[str, str], override: object) -> tuple[str, str, str | None]:
    """(source, variable, text); an override is given as a command line would give it."""
    if override is not None:
        return f"flag {row.flag}" if row.flag else "flag", row.variable, str(override)
    for variable in row.variables:
        text = env.get(variable)
        if text is not None and (row.keep_blank or text.strip()):
            return ("env" if variable == row.variable else f"env {variable}"), variable, text
    return "default", row.variable, None


def emulators(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((k, env[k]) for k in EMULATORS if env.get(k))


def show(value: object) -> str:
    """A value as the environment would spell it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Settings:
    project: str
    dataset: str = _DEFAULTS["dataset"]
    location: str = _DEFAULTS["location"]
    schema_source: str = _DEFAULTS["schema_source"]
    completion_topic: str = _DEFAULTS["completion_topic"]
    requests_topic: str = _DEFAULTS["requests_topic"]
    allow_destructive: bool = _DEFAULTS["allow_destructive"]
    concurrency: int = _DEFAULTS["concurrency"]
    retry_deadline: float = _DEFAULTS["retry_deadline"]
    max_event_age: float = _DEFAULTS["max_event_age"]
    state_bucket: str | None = _DEFAULTS["state_bucket"]
    backup_dataset: str = _DEFAULTS["backup_dataset"]
    backup_ttl_days: float = _DEFAULTS["backup_ttl_days"]
    api_rate: int = _DEFAULTS["api_rate"]
    insert_rate: int = _DEFAULTS["insert_rate"]
    timeout: float = _DEFAULTS["timeout"]
    emulators: tuple[tuple[str, str], ...] = ()  # the EMULATORS that are set

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read the settings; `overrides` (from CLI flags) win over the environment."""
        env = os.environ if env is None else env
        readings = read_settings(env, overrides)
        problems = [r.problem for r in readings if r.problem]
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**{r.setting.name: r.value for r in readings}, emulators=emulators(env))

    def emulator(self, variable: str) -> str | None:
        return dict(self.emulators).get(variable)

    @property
    def backups(self) -> str:
        return self.backup_dataset or f"{self.dataset}_backups"
