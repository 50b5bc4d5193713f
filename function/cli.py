"""`python -m function COMMAND`: parses the operator's commands (flags, help, exit codes) and
answers `settings` itself; the others run in `commands`, imported only when one runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .config import SETTINGS, emulators, read_settings
from .errors import DeploymentError, PermanentError, TransientError

PROG = "python -m function"
EXIT_CODES = {
    "plan": "exit codes: 0 nothing would change, 2 something would (blocked tables included), 1 error",
    "apply": "exit codes: 0 the declared state holds, 1 it does not; with --dry-run as plan",
    "publish": "exit codes: 0 published (with --wait: completed), 1 failed or no event; a dry run as plan",
    "events": "exit codes: 0 an event was shown (--follow: stopped with Ctrl-C), 1 none within --timeout",
    "sync": "exit codes: 0 uploaded (or nothing to upload), 1 invalid, refused or blocked",
    "upload": "exit codes: 0 uploaded (or unchanged), 1 invalid, refused or blocked",
    "show": "exit codes: 0 shown, 1 no such dataset or table",
    "backups": "exit codes: 0 listed, 1 error",
    "restore": "exit codes: 0 restored, 1 refused or failed",
    "settings": "exit codes: 0 (with --check: every setting valid), 1 a setting is refused",
}
EXAMPLES = {
    "plan": ["plan", "plan --tables tenant_profiles tenant_api_keys"],
    "apply": [
        "apply",
        "apply --dry-run",
        "apply --force-recreate-tables --tables tenant_profiles --confirm tenants --allow-destructive",
    ],
    "publish": [
        "publish --wait",
        "publish --tables tenant_profiles --dry-run --wait",
        "publish --force-recreate-tables --tables tenant_profiles --confirm tenants --request-id fix-1 --wait",
    ],
    "events": ["events --follow", "events --subscription bootstrap-completed-watch --follow"],
    "sync": ["sync", "sync --from my-schemas --to gs://my-bucket/schemas/"],
    "upload": ["upload schemas/tenant_profiles.json"],
    "show": ["show", "show tenant_profiles"],
    "backups": ["backups"],
    "restore": [
        "restore tenant_profiles__20261130T120000Z__fix_1_ab12cd34 --to profiles_restored",
        "restore tenant_profiles__20261130T120000Z__fix_1_ab12cd34 --force --confirm tenants --allow-destructive",
    ],
    "settings": ["settings", "settings --check"],
}
# The settings-table flags each command takes (by setting name).
WHERE = ("project", "dataset", "location")
COMMAND_SETTINGS = {
    "plan": (*WHERE, "schema_source"),
    "apply": (*WHERE, "schema_source"),
    "publish": ("project",),
    "events": ("project",),
    "sync": (*WHERE,),
    "upload": (*WHERE,),
    "show": ("project", "dataset"),
    "backups": ("project", "dataset"),
    "restore": ("project", "dataset", "location"),
    "settings": tuple(row.name for row in SETTINGS if row.flag),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "settings":
            return show_settings(args)
        from . import commands

        return getattr(commands, args.command)(args)
    except (PermanentError, DeploymentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TransientError as exc:
        hint = ""
        if emulators(os.environ):
            hint = " (the emulators named by *_EMULATOR_HOST: is the local stack running? `make stack`)"
        print(f"error (transient, try again){hint}: {exc}", file=sys.stderr)
        return 1


def setting_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    """The setting flags a command was given, None where not given (the environment stands)."""
    return {row.name: getattr(args, row.name, None) for row in SETTINGS if row.flag}


def show_settings(args: argparse.Namespace) -> int:
    """Every setting, where it came from and its value; reads the environment, sends nothing."""
    readings = read_settings(os.environ, setting_overrides(args))
    lines = [(r.setting.variable, r.source, r.shown) for r in readings]
    lines += [(variable, "env", value) for variable, value in emulators(os.environ)]
    width = max(len(variable) for variable, _, _ in lines)
    source_width = max(len(source) for _, source, _ in lines)
    for variable, source, shown in lines:
        print(f"{variable:<{width}}  {source:<{source_width}}  {shown}")
    problems = [r.problem for r in readings if r.problem]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if args.check and problems else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROG,
        description="The tenants bootstrap, by hand: plan and apply the declared schemas, send and watch "
        "bootstrap requests, upload schema files, back up and restore.",
        epilog="Settings come from the environment (`python -m function settings` lists them); each "
        "command's flags override them. `python -m function COMMAND --help` shows its flags, exit codes "
        "and examples.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        examples = "\n".join(f"  {PROG} {e}" for e in EXAMPLES[name])
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=f"{EXIT_CODES[name]}\n\nexamples:\n{examples}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_setting_flags(p, COMMAND_SETTINGS[name])
        return p

    def tables(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--tables", nargs="+", metavar="TABLE", help="only these tables (default: every declared one)"
        )

    def forcing(p: argparse.ArgumentParser, what: str) -> None:
        force = p.add_mutually_exclusive_group()
        force.add_argument(
            "--force-recreate-tables",
            action="store_true",
            help=f"drop and recreate the selected tables, each backed up first ({what})",
        )
        force.add_argument(
            "--force-recreate-dataset",
            action="store_true",
            help=f"drop and recreate the whole dataset, every table backed up first ({what})",
        )
        p.add_argument(
            "--rows",
            choices=("keep", "discard"),
            help="with --force-recreate-tables: migrate the rows to the declared schema (keep, the "
            "default) or leave them in the backup only (discard)",
        )
        p.add_argument(
            "--drop-columns",
            action="store_true",
            help=f"drop the columns no longer declared, the table backed up first ({what})",
        )
        p.add_argument(
            "--confirm",
            metavar="DATASET",
            help="the dataset id: required with a force flag or --drop-columns",
        )
        p.add_argument(
            "--accept-losses",
            nargs="+",
            metavar="OBJECT",
            help="with --force-recreate-dataset: views, routines, models... it may delete unbacked",
        )

    plan = command("plan", "show what apply would change, and why a change would be blocked")
    tables(plan)

    apply = command("apply", "bring BigQuery to the declared state")
    tables(apply)
    apply.add_argument("--dry-run", action="store_true", help="plan only, change nothing")
    forcing(apply, "needs --confirm and --allow-destructive")
    apply.add_argument(
        "--allow-destructive",
        action="store_true",
        help="the deployment's consent (ALLOW_DESTRUCTIVE) for this run",
    )
    apply.add_argument(
        "--request-id", help="idempotency key of a forced run, in the request ledger (default: new)"
    )

    publish = command(
        "publish", "publish a bootstrap request to the requests topic, for the deployed function"
    )
    tables(publish)
    publish.add_argument("--request-id", help="idempotency key; required to make a forced request repeatable")
    publish.add_argument("--dry-run", action="store_true", help="ask for a plan only")
    forcing(publish, "needs --confirm, and the deployment's ALLOW_DESTRUCTIVE")
    publish.add_argument("--topic", help="requests topic (default: BOOTSTRAP_REQUESTS_TOPIC)")
    publish.add_argument("--wait", action="store_true", help="wait for the completion event and show it")
    publish.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    publish.add_argument(
        "--subscription", help="an existing pull subscription on the completion topic to wait on"
    )

    events = command("events", "show completion events as the function publishes them")
    events.add_argument("--follow", action="store_true", help="keep showing them until Ctrl-C")
    events.add_argument(
        "--timeout", type=float, default=300.0, help="without --follow: seconds to wait for one (default 300)"
    )
    events.add_argument(
        "--subscription",
        help="read (and acknowledge) an existing pull subscription, e.g. bootstrap-completed-watch, "
        "instead of a temporary one deleted on exit",
    )

    for name, summary in (
        (
            "sync",
            "validate a schema folder, show what uploading it will do, and upload the files that changed",
        ),
        ("upload", "validate one schema file with the bucket's others, show what it will do, and upload it"),
    ):
        p = command(name, summary)
        if name == "sync":
            p.add_argument(
                "--from",
                dest="source",
                metavar="FOLDER",
                help="schema folder (default: the bundled schemas/)",
            )
        else:
            p.add_argument("file", help="a <table>.json schema file or bootstrap.yaml")
        p.add_argument("--to", metavar="gs://BUCKET/PREFIX/", help="where to upload (default: SCHEMA_SOURCE)")
        p.add_argument(
            "--allow-blocked",
            action="store_true",
            help="upload even a change the function would leave blocked (to force a recreation after)",
        )
        p.add_argument(
            "--skip-plan",
            action="store_true",
            help="upload without planning against BigQuery (no BigQuery access)",
        )

    show = command("show", "show the dataset and its tables as BigQuery holds them now")
    show.add_argument("tables", nargs="*", metavar="TABLE", help="only these tables")

    command("backups", "list the backups taken before forced recreations")

    restore = command("restore", "copy a backup back into the dataset")
    restore.add_argument("backup", help="the backup table's name, as `backups` lists it")
    restore.add_argument("--to", metavar="TABLE", help="target table (default: the table it backs up)")
    restore.add_argument(
        "--force", action="store_true", help="replace a target that holds rows (it is backed up first)"
    )
    restore.add_argument("--confirm", metavar="DATASET", help="the dataset id: required with --force")
    restore.add_argument(
        "--allow-destructive",
        action="store_true",
        help="the deployment's consent (ALLOW_DESTRUCTIVE) for this run",
    )
    restore.add_argument("--request-id", help="idempotency key of an overwriting restore (default: new)")

    settings = command("settings", "show every setting, its value and where it came from")
    settings.add_argument(
        "--check", action="store_true", help="exit 1 if a setting is refused (each is listed)"
    )
    return top


def _add_setting_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """A flag for each setting the command uses that has one in the settings table."""
    for row in SETTINGS:
        if row.flag and row.name in names:
            default = " or ".join(row.variables if row.required else (*row.variables, row.documented_default))
            help_text = f"{row.meaning} (default: {default})".replace("%", "%%")  # argparse formats help
            parser.add_argument(row.flag, dest=row.name, help=help_text)
