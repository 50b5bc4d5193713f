"""deploy/dataset_access.py: one member's entries in a BigQuery dataset's access list, read and
rewritten for deploy.sh and teardown.sh (python3, standard library only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def is_member(entry: dict[str, Any], email: str) -> bool:
    """A service account's entry names it in userByEmail ("Maps to IAM policy member user:EMAIL or
    serviceAccount:EMAIL", the Dataset resource's reference); an iamMember "serviceAccount:EMAIL"
    entry is recognised as the same member."""
    email = email.lower()
    return (
        str(entry.get("userByEmail", "")).lower() == email
        or str(entry.get("iamMember", "")).lower() == f"serviceaccount:{email}"
    )


def main(argv: list[str] | None = None) -> int:
    """deploy.sh and teardown.sh run this (outside the project's virtual environment) on what
    `bq show --format=json --dataset PROJECT:DATASET` printed, read from standard input. It prints
    one line:

        LOCATION|ETAG|ROLES

    ROLES being the roles the member holds in the access list now, sorted and comma-separated
    (empty when none). With --out FILE it also writes {"access": [...]} to FILE for
    `bq update --source FILE`: the same list with the member's entries replaced by one entry per
    --want ROLE (none: the member loses every entry), every other entry kept as it is and where
    it is."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--email", required=True, help="the member: a service account's email")
    parser.add_argument("--want", action="append", default=[], help="a role it should hold")
    parser.add_argument("--out", help="where to write the access list it should have")
    args = parser.parse_args(argv)

    text = sys.stdin.read().strip()
    dataset: dict[str, Any] = json.loads(text) if text else {}
    access: list[dict[str, Any]] = list(dataset.get("access") or [])
    have = sorted({str(e.get("role", "")) for e in access if is_member(e, args.email)})
    print("|".join((str(dataset.get("location", "")), str(dataset.get("etag", "")), ",".join(have))))

    if args.out:
        kept = [e for e in access if not is_member(e, args.email)]
        wanted = [{"role": role, "userByEmail": args.email} for role in sorted(set(args.want))]
        with open(args.out, "w") as fh:
            json.dump({"access": kept + wanted}, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
