"""The pieces of the local stack, as data: for each, its ports, command and environment, when it
is ready, what it exports to clients, and what is provisioned in it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import executables
from .executables import EMULATOR_VENV
from .supervisor import HOST, Readiness, StackError

if TYPE_CHECKING:
    from .stack import Stack, StackConfig

EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")
PUSH_ACK_DEADLINE_S = 600  # a slow function run is not pushed a second time meanwhile
ADMIN_TIMEOUT_S = 15.0  # every provisioning call (topics, buckets) is bounded by this
BIGQUERY_DATA = "bigquery-data"  # the BigQuery emulator's data, in the stack's workdir
# DuckDB looks for its extensions in $HOME/.duckdb/extensions and, offline, cannot download them.
_EXTENSIONS_MISSING = re.compile(
    r"could not be autoloaded|Failed to download extension|extension needs to be loaded", re.IGNORECASE
)
# local-bigquery always creates a default dataset. Named with a leading underscore it is hidden
# from dataset listings, as BigQuery hides such datasets, so the emulator starts out empty.
_HIDDEN_DEFAULT_DATASET = "_local_bigquery_default"


def _nothing(stack: Stack) -> None:
    return None


def _needs(find: Callable[[], object]) -> Callable[[StackConfig], None]:
    """A preflight that checks that the piece's program is there (`find` raises StackError)."""

    def check(config: StackConfig) -> None:
        find()

    return check


@dataclass(frozen=True)
class Piece:
    name: str  # the component: pubsub, bigquery, storage, function
    ports: tuple[str, ...]  # the names of its ports; it answers readiness on the first
    command: Callable[[Stack], list[str]]  # StackConfig.extra_args are appended
    readiness: Readiness  # its path may name "{project}"
    exports: Callable[[Stack], dict[str, str]]  # the variables that point a client at it
    preflight: Callable[[StackConfig], None]  # raises StackError when it cannot start at all
    env: Callable[[Stack, dict[str, str]], dict[str, str]] = lambda stack, inherited: inherited
    cwd: Callable[[Stack], Path | None] = lambda stack: None
    prepare: Callable[[Stack], None] = _nothing  # before each launch
    provision: Callable[[Stack], None] = _nothing  # once ready, after each launch
    after: str | None = None  # launched once this piece is ready and provisioned
    data: str | None = None  # its folder in the workdir: removed when the stack starts and stops


def describe(config: StackConfig) -> dict[str, Piece]:
    """Every piece the stack knows, in the order they start (whether configured or not): each
    launched at once unless it waits `after` another piece is ready and provisioned
    (fake-gcs-server waits for the Pub/Sub topics: an upload notification to a topic that does
    not exist yet is dropped)."""
    return {"pubsub": PUBSUB, "storage": STORAGE, "bigquery": LOCAL_BIGQUERY, "function": FUNCTION}


def inherited_env() -> dict[str, str]:
    """This process's environment, without the emulator variables a caller may have set."""
    return {k: v for k, v in os.environ.items() if k not in EMULATOR_VARS}


def admin_call() -> dict[str, Any]:
    """retry and timeout for a provisioning call: bounded, so a wedged emulator fails fast."""
    from google.api_core.retry import Retry

    return {"retry": Retry(initial=0.1, maximum=1.0, timeout=ADMIN_TIMEOUT_S), "timeout": ADMIN_TIMEOUT_S}


# ---- pubsub: the official Pub/Sub emulator from the Cloud SDK (Java) ----------------------


def _provision_pubsub(stack: Stack) -> None:
    """The request, completion and notification topics; a pull subscription on the completion
    topic; with the function, push subscriptions from the request and notification topics."""
    from google.api_core.exceptions import AlreadyExists

    cfg = stack.config
    project = f"projects/{cfg.project}"
    publisher, subscriber = stack.publisher(), stack.subscriber()
    try:
        for topic in (cfg.requests_topic, cfg.completion_topic, cfg.notification_topic):
            with contextlib.suppress(AlreadyExists):
                publisher.create_topic(name=f"{project}/topics/{topic}", **admin_call())
        subscriptions: list[dict[str, Any]] = [
            {
                "name": f"{project}/subscriptions/{cfg.completion_subscription}",
                "topic": f"{project}/topics/{cfg.completion_topic}",
                "ack_deadline_seconds": 60,
            }
        ]
        if "function" in cfg.components:
            subscriptions += [push_subscription(stack, cfg.requests_topic)]
            subscriptions += [push_subscription(stack, cfg.notification_topic)]
        for request in subscriptions:
            with contextlib.suppress(AlreadyExists):
                subscriber.create_subscription(request=request, **admin_call())
    finally:
        publisher.transport.close()
        subscriber.close()


def push_subscription(stack: Stack, topic: str) -> dict[str, Any]:
    """The push subscription `<topic>-push` that delivers the topic to the function."""
    from google.cloud import pubsub_v1

    project = f"projects/{stack.config.project}"
    # The topic in the endpoint's path becomes the CloudEvent's source.
    endpoint = f"{stack.url('function')}/{project}/topics/{topic}"
    return {
        "name": f"{project}/subscriptions/{topic}-push",
        "topic": f"{project}/topics/{topic}",
        "push_config": pubsub_v1.types.PushConfig(push_endpoint=endpoint),
        "ack_deadline_seconds": PUSH_ACK_DEADLINE_S,
    }


PUBSUB = Piece(
    name="pubsub",
    ports=("pubsub",),
    command=lambda stack: [
        str(executables.pubsub_emulator()),
        f"--host={HOST}",
        f"--port={stack.ports['pubsub']}",
    ],
    readiness=Readiness(re.compile(r"Server started, listening on"), "/"),
    exports=lambda stack: {
        "PUBSUB_EMULATOR_HOST": f"{HOST}:{stack.ports['pubsub']}",
        "BOOTSTRAP_REQUESTS_TOPIC": stack.config.requests_topic,  # where `publish` sends
    },
    preflight=_needs(executables.pubsub_emulator),
    provision=_provision_pubsub,
)


# ---- storage: fake-gcs-server, upload notifications published to the Pub/Sub emulator -----


def _storage_command(stack: Stack) -> list[str]:
    cfg, port = stack.config, str(stack.ports["storage"])
    cmd = [str(executables.fake_gcs_server()), "-scheme", "http", "-backend", "memory"]
    cmd += ["-host", HOST, "-port", port, "-external-url", stack.url("storage")]
    cmd += ["-public-host", f"{HOST}:{port}"]
    if "pubsub" in cfg.components:
        cmd += ["-event.pubsub-project-id", cfg.project]
        cmd += ["-event.pubsub-topic", cfg.notification_topic]
        cmd += ["-event.list", "finalize", "-event.bucket", cfg.schema_bucket]
    return cmd


def _storage_env(stack: Stack, inherited: dict[str, str]) -> dict[str, str]:
    if "pubsub" not in stack.config.components:
        return inherited
    return {**inherited, "PUBSUB_EMULATOR_HOST": stack.env["PUBSUB_EMULATOR_HOST"]}


def _storage_exports(stack: Stack) -> dict[str, str]:
    cfg = stack.config
    prefix = cfg.schema_prefix.strip("/")
    return {
        "STORAGE_EMULATOR_HOST": stack.url("storage"),
        "SCHEMA_SOURCE": f"gs://{cfg.schema_bucket}/{prefix + '/' if prefix else ''}",
        "BOOTSTRAP_STATE_BUCKET": cfg.state_bucket,
    }


def _provision_storage(stack: Stack) -> None:
    """The schema and state buckets."""
    from google.api_core.exceptions import Conflict

    client = stack.storage_client()
    try:
        for bucket in (stack.config.schema_bucket, stack.config.state_bucket):
            with contextlib.suppress(Conflict):
                client.create_bucket(bucket, **admin_call())
    finally:
        client.close()


STORAGE = Piece(
    name="storage",
    ports=("storage",),
    command=_storage_command,
    readiness=Readiness(re.compile(r"server started at"), "/storage/v1/b"),
    exports=_storage_exports,
    preflight=_needs(executables.fake_gcs_server),
    env=_storage_env,
    provision=_provision_storage,
    after="pubsub",
)


# ---- bigquery: local-bigquery (DuckDB-backed, Python 3.13) from .venv-emulator -------------


def _fresh_bigquery_data(stack: Stack) -> None:
    """The emulator's data folder, emptied unless StackConfig.bigquery_keeps_data keeps it."""
    data = stack.config.workdir / BIGQUERY_DATA
    if not (stack.config.bigquery_keeps_data and data.is_dir()):
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)


def _local_bigquery_command(stack: Stack) -> list[str]:
    cfg, ports = stack.config, stack.ports
    cmd = [*executables.local_bigquery(), "serve", "--host", HOST, "--port", str(ports["bigquery"])]
    cmd += ["--grpc-port", str(ports["bigquery-grpc"]), "--project", cfg.project]
    return [*cmd, "--dataset", _HIDDEN_DEFAULT_DATASET, "--data-dir", str(cfg.workdir / BIGQUERY_DATA)]


def _extensions_missing(output: str, answer: str) -> str | None:
    if not _EXTENSIONS_MISSING.search(output + answer):
        return None
    python = EMULATOR_VENV / "bin" / "python"
    return (
        "local-bigquery cannot open its database: DuckDB's extensions are not in "
        "DuckDB's extension cache ($HOME/.duckdb/extensions, HOME="
        f"{os.environ.get('HOME', '?')}), and they cannot be downloaded offline. Run "
        f'`make venv`, or once with this HOME: {python} -c "import duckdb; from '
        "duckdb_extensions import import_extension as i; c = duckdb.connect(); "
        "[i(e, con=c) for e in ('ducklake', 'icu', 'spatial')]\"\n"
        f"It answered: {answer[:400]}"
    )


def _bigquery_exports(stack: Stack) -> dict[str, str]:
    return {"BIGQUERY_EMULATOR_HOST": stack.url("bigquery")}


LOCAL_BIGQUERY = Piece(
    name="bigquery",
    ports=("bigquery", "bigquery-grpc"),
    command=_local_bigquery_command,
    # uvicorn logs this once REST listens; gRPC was bound before it (or the process exited).
    # Listing datasets then opens the DuckDB catalog, which fails without DuckDB's extensions.
    readiness=Readiness(
        re.compile(r"Uvicorn running on http://"),
        "/bigquery/v2/projects/{project}/datasets",
        diagnose=_extensions_missing,
    ),
    exports=_bigquery_exports,
    preflight=_needs(executables.local_bigquery),
    # the same HOME as `make venv` (inherited): DuckDB's extensions are found there
    prepare=_fresh_bigquery_data,
    data=BIGQUERY_DATA,
)


# ---- function: functions-framework serving main.py's CloudEvent function -------------------


def _function_command(stack: Stack) -> list[str]:
    cfg = stack.config
    cmd = [str(executables.venv_script("functions-framework")), "--target", cfg.function_target]
    cmd += ["--signature-type", "cloudevent", "--source", str(cfg.function_source.resolve())]
    return [*cmd, "--host", HOST, "--port", str(stack.ports["function"])]


def _function_env(stack: Stack, inherited: dict[str, str]) -> dict[str, str]:
    env = {**inherited, **stack.env, **stack.config.function_env}
    env["PYTHONUNBUFFERED"] = "1"  # its log file is readable while it runs
    env["GUNICORN_LOG_LEVEL"] = "info"  # "Listening at:" tells that it is ours
    # gunicorn >= 25 opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl, else
    # ~/.gunicorn/gunicorn.ctl: one path shared by every gunicorn of the user. Give each stack
    # its own (short: a Unix socket path has at most 107 bytes).
    env["XDG_RUNTIME_DIR"] = stack.runtime_dir()
    return env


def _function_preflight(config: StackConfig) -> None:
    executables.venv_script("functions-framework")
    if not config.function_source.is_file():
        raise StackError(
            f"function source {config.function_source} does not exist "
            "(set StackConfig.function_source, or leave out the function: --no-function)"
        )


FUNCTION = Piece(
    name="function",
    ports=("function",),
    command=_function_command,
    readiness=Readiness(re.compile(r"Listening at: "), "/", any_status=True),  # gunicorn's info
    exports=lambda stack: {"FUNCTION_URL": stack.url("function") + "/"},
    preflight=_function_preflight,
    env=_function_env,
    cwd=lambda stack: stack.config.function_source.resolve().parent,
)
