"""`python -m deploy.local.stack` (`make stack`): the local stack in the foreground until Ctrl-C
(or SIGTERM, SIGHUP), the schema bucket seeded with the bundled schemas unless --empty, its
variables printed and written to WORKDIR/env, and a guide to what to do next."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import time
from pathlib import Path

from deploy.local.stack import COMPONENTS, Stack, StackConfig, StackError

log = logging.getLogger("deploy.local.stack")


class _Stopped(BaseException):
    """SIGTERM or SIGHUP. Not a KeyboardInterrupt: CPython remembers a KeyboardInterrupt raised
    inside code some extension module evaluates while it is imported (the seeding's imports),
    even once caught, and then ends the process by SIGINT instead of its exit code."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


_GUIDE = """
The stack is running; Ctrl-C stops it. In another shell:
  source {workdir}/env                     # these variables, and this environment on PATH
  python -m function plan                  # compare {source} with BigQuery
  python -m function events --follow       # watch the function's runs (uploads run it too)
  python -m function sync --from schemas   # upload edited schemas: says first what they will do
Logs: {workdir}/function.log (the function's JSON lines), and one per emulator beside it."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.stack",
        description="Run the emulators and the function locally, in the foreground.",
    )
    parser.add_argument("--project", default=StackConfig.project)
    parser.add_argument(
        "--no-function", action="store_true", help="emulators only (to run functions-framework yourself)"
    )
    parser.add_argument(
        "--empty", action="store_true", help="leave the schema bucket empty (default: the bundled schemas/)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=StackConfig.workdir, help="logs and .env (default: .stack)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    components = set(COMPONENTS) - ({"function"} if args.no_function else set())
    stack = Stack(StackConfig(project=args.project, components=frozenset(components), workdir=args.workdir))
    signal.signal(signal.SIGTERM, _raise_stopped)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup keeps it ignored
        signal.signal(signal.SIGHUP, _raise_stopped)
    try:
        stack.start()
        for name, value in stack.env.items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        if not args.empty:
            from deploy.local.demo import seed  # the Google clients: loaded once the stack runs

            source, uploaded = seed(stack)
            log.info("seeded %s with %d bundled schema files", source, len(uploaded))
        log.info(_GUIDE.format(workdir=stack.config.workdir, source=stack.env.get("SCHEMA_SOURCE", "")))
        reported: set[str] = set()
        while True:
            for name, (code, log_path) in stack.exited().items():
                if name not in reported:
                    reported.add(name)
                    log.error("%s exited (code %s); see %s", name, code, log_path)
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stopped):
        log.info("stopping")
        return 0
    except StackError as exc:
        log.error("error: %s", exc)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        stack.stop()
