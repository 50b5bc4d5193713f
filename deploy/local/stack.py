"""The local stack: the Pub/Sub, BigQuery and Cloud Storage emulators plus the function, on free
ports, started, provisioned and stopped as one (`Stack`; README, "The local stack")."""

from __future__ import annotations

import atexit
import fcntl
import importlib
import logging
import shlex
import shutil
import signal
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from . import pieces, supervisor
from .executables import REPO_ROOT
from .pieces import Piece
from .supervisor import HOST, PortConflict, Process, StackError

if TYPE_CHECKING:
    from google.cloud import bigquery, pubsub_v1, storage

__all__ = ["COMPONENTS", "Stack", "StackConfig", "StackError"]

log = logging.getLogger("deploy.local.stack")

COMPONENTS = ("pubsub", "bigquery", "storage", "function")

_START_ATTEMPTS = 3  # a port taken between picking and binding: start again on fresh ports


@dataclass
class StackConfig:
    project: str = "local-project"
    components: frozenset[str] = frozenset(COMPONENTS)
    schema_bucket: str = "tenant-schemas"
    schema_prefix: str = "schemas/"
    state_bucket: str = "bootstrap-state"
    requests_topic: str = "bootstrap-requests"
    completion_topic: str = "bootstrap-completed"
    notification_topic: str = "schema-notifications"
    completion_subscription: str = "bootstrap-completed-watch"
    function_target: str = "bootstrap"
    function_source: Path = REPO_ROOT / "main.py"
    function_env: dict[str, str] = field(default_factory=dict)
    workdir: Path = REPO_ROOT / ".stack"
    # Extra command-line arguments per piece, e.g. {"function": ["--debug"]}.
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    # restart("bigquery") keeps the tables and rows (a BigQuery that was only unreachable);
    # otherwise the emulator comes back empty. Either way the data is removed by stop().
    bigquery_keeps_data: bool = False
    start_timeout: float = 30.0  # per piece

    def __post_init__(self) -> None:
        self.components = frozenset(self.components)
        unknown = (self.components | set(self.extra_args)) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}; known: {COMPONENTS}")
        self.function_source = Path(self.function_source)
        self.workdir = Path(self.workdir)


def _import_clients(components: frozenset[str]) -> None:
    if "pubsub" in components:
        importlib.import_module("google.cloud.pubsub_v1")
    if "storage" in components:
        importlib.import_module("google.cloud.storage")


# --------------------------------------------------------------------------------------------
# The stack

_live_stacks: weakref.WeakSet[Stack] = weakref.WeakSet()


@atexit.register
def _stop_live_stacks() -> None:
    for stack in list(_live_stacks):
        stack.stop()


class Stack:
    """Starts, provisions and stops the local stack. A context manager::

        with Stack(StackConfig(workdir=tmp_path)) as stack:
            stack.env["FUNCTION_URL"]
            publisher = stack.publisher()

    - ``start()``: every piece of ``config.components``, ready and provisioned, or a
      ``StackError`` (with the tail of the failing piece's log) and nothing left running.
    - ``stop()``: idempotent; SIGTERM to each process group, SIGKILL after a grace period.
    - ``kill(name)`` / ``restart(name)``: stop one piece / stop it and start it again on the same
      port(s), re-provisioned (an emulator restarts empty: topics and buckets are created again,
      BigQuery data is gone unless ``config.bigquery_keeps_data``).

    Processes are started from the calling thread. On Linux, when that is the main thread, they
    also get SIGTERM if this process dies without stopping them (``setpriv --pdeathsig``).

    It never changes ``os.environ``: the emulator addresses are in ``env`` (passed to the function
    process), and the client factories (``publisher()``, ``subscriber()``, ``storage_client()``,
    ``bigquery_client()``) point explicitly at the stack, so several stacks can live in one
    process and a stray ``*_EMULATOR_HOST`` in the caller's environment cannot redirect them.
    """

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self._pieces = pieces.describe(self.config)
        self._processes: dict[str, Process] = {}
        self._ports: dict[str, int] = {}
        self._env: dict[str, str] = {}
        self._lock_file: IO[bytes] | None = None
        self._runtime_dir: str | None = None  # XDG_RUNTIME_DIR of the function (gunicorn.ctl)

    # ---- public API ---------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Variables that point a client or the function at this stack (a copy)."""
        return dict(self._env)

    @property
    def pids(self) -> list[int]:
        """Pids (= process group ids) of the pieces that are running now."""
        return [p.pid for p in self._processes.values() if p.proc.poll() is None]

    @property
    def ports(self) -> dict[str, int]:
        """Ports by piece: pubsub, bigquery, bigquery-grpc, storage, function (a copy)."""
        return dict(self._ports)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._lock_file is not None:
            raise StackError("the stack is already started")
        t0 = time.monotonic()
        self._preflight()
        self._lock_workdir()
        _live_stacks.add(self)
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    self._start_all()
                    break
                except PortConflict as exc:
                    self._stop_pieces(list(self._processes))
                    if attempt == _START_ATTEMPTS:
                        raise
                    log.warning("%s; starting again on other ports", exc.args[0].splitlines()[0])
            self._write_env_file()
        except BaseException:
            self.stop()
            raise
        log.info("stack ready in %.1f s (logs in %s)", time.monotonic() - t0, self.config.workdir)

    def stop(self) -> None:
        self._stop_pieces(list(self._processes))
        if self._lock_file is not None:  # only a started stack owns the workdir's files
            (self.config.workdir / "env").unlink(missing_ok=True)
            self._remove_data()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
        _live_stacks.discard(self)

    def exited(self) -> dict[str, tuple[int, Path]]:
        """The pieces that were started and have exited since: their exit code and log."""
        exited = {}
        for name, process in self._processes.items():
            code = process.proc.poll()
            if code is not None:
                exited[name] = (code, process.log_path)
        return exited

    def kill(self, component: str) -> None:
        self._check_component(component)
        self._stop_pieces([component])

    def crash(self, component: str) -> None:
        """SIGKILL the piece's process group at once: no graceful stop (gunicorn would finish
        the requests in flight first), as when an instance dies."""
        self._check_component(component)
        process = self._processes.get(component)
        if process is not None:
            supervisor.signal_group(process.pid, signal.SIGKILL)
        self._stop_pieces([component])

    def restart(self, component: str) -> None:
        self._check_component(component)
        if self._lock_file is None:
            raise StackError("the stack is not started")
        self._stop_pieces([component])
        try:
            self._launch(component)
            self._wait_ready(component)
            self._provision(component)
        except PortConflict as exc:
            self._stop_pieces([component])
            raise StackError(f"cannot restart {component} on the same port: {exc}") from exc
        except BaseException:
            self._stop_pieces([component])
            raise

    # ---- clients pointed at this stack (the caller closes them) -------------------------

    def publisher(self) -> pubsub_v1.PublisherClient:
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport

        channel = self._grpc_channel()
        return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))

    def subscriber(self) -> pubsub_v1.SubscriberClient:
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

        channel = self._grpc_channel()
        return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))

    def storage_client(self) -> storage.Client:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.config.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url("storage")},
        )

    def bigquery_client(self) -> bigquery.Client:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.config.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url("bigquery")},
        )

    # ---- start ----------------------------------------------------------------------------

    def _preflight(self) -> None:
        """Fail before starting anything when a piece cannot possibly start."""
        for piece in self._configured():
            piece.preflight(self.config)

    def _configured(self) -> list[Piece]:
        return [p for p in self._pieces.values() if p.name in self.config.components]

    def _lock_workdir(self) -> None:
        workdir = self.config.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        lock = (workdir / ".lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StackError(
                f"{workdir} is used by another running stack: give this one its own workdir"
            ) from None
        self._lock_file = lock
        for name in COMPONENTS:  # fresh logs for a fresh stack
            (workdir / f"{name}.log").unlink(missing_ok=True)
        self._remove_data()  # left by a stack that was killed

    def _remove_data(self) -> None:
        for piece in self._pieces.values():
            if piece.data:
                shutil.rmtree(self.config.workdir / piece.data, ignore_errors=True)

    def _start_all(self) -> None:
        """Every piece on fresh ports: slow ones side by side, one that waits `after` another
        as soon as that one is ready and provisioned."""
        configured = self._configured()
        self._ports = {port: supervisor.reserve_port() for piece in configured for port in piece.ports}
        self._env = self._build_env()
        names = {piece.name for piece in configured}
        waiting = [p for p in configured if p.after in names]
        for piece in configured:
            if piece not in waiting:
                self._launch(piece.name)
        _import_clients(self.config.components)  # about a second the first time: while they boot

        def ready(piece: Piece) -> None:
            self._wait_ready(piece.name)
            self._provision(piece.name)
            for later in [p for p in waiting if p.after == piece.name]:
                self._launch(later.name)
                ready(later)

        for piece in configured:
            if piece not in waiting:
                ready(piece)

    def _build_env(self) -> dict[str, str]:
        cfg = self.config
        env = {"GOOGLE_CLOUD_PROJECT": cfg.project, "COMPLETION_TOPIC": cfg.completion_topic}
        for piece in self._configured():
            env.update(piece.exports(self))
        return env

    def _launch(self, name: str) -> None:
        piece = self._pieces[name]
        piece.prepare(self)
        cmd = piece.command(self) + list(self.config.extra_args.get(name, []))
        env = piece.env(self, pieces.inherited_env())
        log_path = self.config.workdir / f"{name}.log"
        self._processes[name] = supervisor.launch(name, cmd, env, piece.cwd(self), log_path)

    def _wait_ready(self, name: str) -> None:
        readiness = self._pieces[name].readiness
        path = readiness.path.format(project=self.config.project)
        port = self._ports[self._pieces[name].ports[0]]
        supervisor.wait_ready(self._processes[name], port, readiness, path, self.config.start_timeout)

    def _provision(self, name: str) -> None:
        self._pieces[name].provision(self)

    def _write_env_file(self) -> None:
        """`source`d by a shell: the stack's variables, and this environment's tools on PATH
        (`python -m function`, `functions-framework`)."""
        lines = [f"export {k}={shlex.quote(v)}" for k, v in self._env.items()]
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
        (self.config.workdir / "env").write_text("\n".join(lines) + "\n")

    # ---- stop -----------------------------------------------------------------------------

    def _stop_pieces(self, names: Iterable[str]) -> None:
        supervisor.stop([self._processes.pop(n) for n in list(names) if n in self._processes])

    # ---- helpers --------------------------------------------------------------------------

    def _check_component(self, component: str) -> None:
        if component not in self.config.components:
            raise ValueError(
                f"{component!r} is not a component of this stack ({sorted(self.config.components)})"
            )

    def runtime_dir(self) -> str:
        """A short folder of this stack's own (the function's XDG_RUNTIME_DIR), removed by stop()."""
        if self._runtime_dir is None:
            self._runtime_dir = tempfile.mkdtemp(prefix="stack-run-")
        return self._runtime_dir

    def url(self, name: str) -> str:
        """http://127.0.0.1:PORT of a piece's port (pubsub, bigquery, storage, function)."""
        if name not in self._ports:
            raise StackError(f"{name} is not part of this stack, or the stack is not started")
        return f"http://{HOST}:{self._ports[name]}"

    def _grpc_channel(self) -> Any:
        import grpc

        if "pubsub" not in self._ports:
            raise StackError("pubsub is not part of this stack, or the stack is not started")
        return grpc.insecure_channel(f"{HOST}:{self._ports['pubsub']}")


if __name__ == "__main__":  # python -m deploy.local.stack (make stack): see foreground.py
    from deploy.local.foreground import main

    sys.exit(main())
