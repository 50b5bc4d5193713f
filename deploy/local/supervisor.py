"""The local stack's process supervisor: start a program in a process group of its own, wait
until it answers, stop it and everything it started; it knows nothing of what the programs are."""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("deploy.local.stack")

HOST = "127.0.0.1"
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
_PORT_CONFLICT = re.compile(
    r"address already in use|connection in use|Failed to bind to address", re.IGNORECASE
)


class StackError(RuntimeError):
    """A piece of the stack is missing, did not start, or did not answer in time."""


class PortConflict(StackError):
    """A picked port was taken by someone else before the piece could bind it."""


@dataclass(frozen=True)
class Readiness:
    """When a started program counts as ready."""

    marker: re.Pattern[str]  # the program's own log line saying it listens (not someone else)
    path: str  # then an HTTP GET on this path must answer
    any_status: bool = False  # True: any HTTP answer counts, False: 200 only
    # Given the log so far and the last probe's answer body, a known failure's explanation
    # (without the log's tail, which is added), or None.
    diagnose: Callable[[str, str], str | None] | None = None


@dataclass
class Process:
    """A started program: its process (the leader of its own process group) and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int  # where this run's output starts in the log
    launched_at: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode("utf-8", "replace")

    def tail(self, lines: int = 30, width: int = 400) -> str:
        text = "\n".join(line[:width] for line in self.output().splitlines()[-lines:])
        return text or "(empty)"


def launch(name: str, cmd: list[str], env: dict[str, str], cwd: Path | None, log_path: Path) -> Process:
    """Start `cmd` in a new process group, its output appended to `log_path` after a header line.

    From the main thread on Linux, the program also gets SIGTERM if this process dies without
    stopping it (``setpriv --pdeathsig``)."""
    with log_path.open("ab") as log_file:
        log_file.write(f"--- {time.strftime('%H:%M:%S')} {shlex.join(cmd)}\n".encode())
        log_file.flush()
        offset = log_file.tell()
        prefix = _pdeathsig_prefix() if threading.current_thread() is threading.main_thread() else ()
        proc = subprocess.Popen(
            [*prefix, *cmd],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: stop() kills its children too
        )
    return Process(name, proc, log_path, offset, time.monotonic())


def wait_ready(process: Process, port: int, readiness: Readiness, path: str, timeout: float) -> None:
    """Return once the program logged its own "listening" marker and GET `path` answers; else `StackError`
    (`PortConflict` when its port was taken), with the tail of its log."""
    name = process.name
    deadline = process.launched_at + timeout
    answer = ""  # the body of the last readiness probe
    while True:
        exited = process.proc.poll()
        output = process.output()
        known = readiness.diagnose(output, answer) if readiness.diagnose else None
        if known is not None:
            raise StackError(f"{known}\nLast lines of {process.log_path}:\n{process.tail()}")
        if _PORT_CONFLICT.search(output):
            raise PortConflict(f"{name}: port {port} was taken by another process")
        if exited is not None:
            raise StackError(
                f"{name} exited with code {exited} while starting. "
                f"Last lines of {process.log_path}:\n{process.tail()}"
            )
        if readiness.marker.search(output):
            status, answer = http_get(port, path)
            if status == 200 or (status is not None and readiness.any_status):
                break
        if time.monotonic() > deadline:
            raise StackError(
                f"{name} did not answer on {HOST}:{port} within {timeout:.0f} s. "
                f"Last lines of {process.log_path}:\n{process.tail()}"
            )
        time.sleep(0.05)
    log.info("%s ready on %s:%d (%.1f s)", name, HOST, port, time.monotonic() - process.launched_at)


def stop(processes: Iterable[Process]) -> None:
    """SIGTERM to every process group at once, SIGKILL to those still there after the grace
    period, then to any child that outlived its group leader."""
    processes = list(processes)
    for process in processes:
        if process.proc.poll() is None:
            signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0f s: SIGKILL", process.name, STOP_GRACE_S)
            signal_group(process.pid, signal.SIGKILL)
            process.proc.wait()
    # Children that outlived their group leader (none when the leader exits cleanly).
    for process in processes:
        if _group_alive(process.pid):
            signal_group(process.pid, signal.SIGKILL)
            give_up = time.monotonic() + 2.0
            while _group_alive(process.pid) and time.monotonic() < give_up:
                time.sleep(0.02)
            if _group_alive(process.pid):
                log.warning("%s: process group %d outlived SIGKILL", process.name, process.pid)
        log.info("%s stopped", process.name)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def reserve_port() -> int:
    """A free port on 127.0.0.1, left in TIME_WAIT so the kernel does not hand it out again soon.

    The kernel picks it (bind to port 0). Connecting to it once and closing the server side
    first leaves it in TIME_WAIT: other bind(0)/connect() calls skip it for about a minute,
    while our servers (which all set SO_REUSEADDR) can still bind it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, 0))
        server.listen(1)
        port: int = server.getsockname()[1]
        with socket.create_connection((HOST, port), timeout=5) as client:
            accepted, _ = server.accept()
            accepted.close()
            client.recv(1)  # wait for the server side's FIN
    return port


def http_get(port: int, path: str) -> tuple[int | None, str]:
    """The status and body of a GET (None, "" when nothing answered)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None, ""
    finally:
        conn.close()


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """`setpriv --pdeathsig TERM`: a child gets SIGTERM if this process dies (even by SIGKILL)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if not setpriv:
        return ()
    try:
        subprocess.run([setpriv, "--pdeathsig", "TERM", "true"], check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "TERM")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
