"""The deploy script tests' harness: a copy of what deploy.sh reads, and a recording fake
`gcloud`, `bq` and Python on PATH (tests/deploy/fake_gcloud.py: small bash wrappers, answered by
one server in this process). The copy holds the real `function` package: the scripts' settings
check is the function's own, and runs for real. A module of its own (not conftest.py) so that the
tests import it by a name no other suite uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fake_gcloud

REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash") or "/bin/bash"
PROJECT = "acme-tenants-prod"
PROJECT_NUMBER = "123456789012"

# Verbs that change something; a second run must use none of them.
MUTATING = {
    "create",
    "deploy",
    "enable",
    "update",
    "delete",
    "undelete",
    "rm",
    "add-iam-policy-binding",
    "remove-iam-policy-binding",
}


@dataclass
class Call:
    prog: str
    argv: list[str]
    cwd: str

    @property
    def words(self) -> list[str]:
        return [a for a in self.argv if not a.startswith("-")]

    @property
    def flags(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for arg in self.argv:
            if arg.startswith("--"):
                key, _, value = arg[2:].partition("=")
                out.setdefault(key, []).append(value)
        return out

    def flag(self, name: str) -> str:
        values = self.flags.get(name, [])
        assert len(values) == 1, f"--{name} given {len(values)} times in {self.argv}"
        return values[0]

    @property
    def mutates(self) -> bool:
        if self.prog == "python":
            return True
        return self.words[:1] != ["meta"] and bool(MUTATING.intersection(self.words))

    def is_(self, *words: str) -> bool:
        return self.words[: len(words)] == list(words)


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    calls: list[Call] = field(default_factory=list)

    def find(self, *words: str, prog: str = "gcloud") -> list[Call]:
        return [c for c in self.calls if c.prog == prog and c.is_(*words)]

    def one(self, *words: str) -> Call:
        found = self.find(*words)
        assert len(found) == 1, f"expected one `gcloud {' '.join(words)}`, got {len(found)}"
        return found[0]

    @property
    def mutations(self) -> list[Call]:
        return [c for c in self.calls if c.mutates]

    def grants(self) -> set[tuple[str, str, str, str]]:
        """(resource kind, resource, role, member) of every add-iam-policy-binding."""
        out = set()
        for c in self.calls:
            if "add-iam-policy-binding" in c.words:
                i = c.words.index("add-iam-policy-binding")
                kind = " ".join(c.words[:i])
                out.add((kind, c.words[i + 1], c.flag("role"), c.flag("member")))
        return out


class Harness:
    """A repository copy holding what deploy.sh reads, and the fakes that record its calls."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "repo"
        self.bin = tmp / "bin"
        self.state = tmp / "state.json"
        self.log = tmp / "calls.jsonl"
        (self.root / "deploy").mkdir(parents=True)
        for script in [*(REPO / "deploy").glob("*.sh"), *(REPO / "deploy").glob("*.py")]:
            shutil.copy2(script, self.root / "deploy" / script.name)
        shutil.copy2(REPO / ".gcloudignore", self.root / ".gcloudignore")
        (self.root / "main.py").write_text("from function.handler import bootstrap  # noqa\n")
        (self.root / "requirements.txt").write_text("functions-framework==3.10.2\n")
        shutil.copytree(
            REPO / "function", self.root / "function", ignore=shutil.ignore_patterns("__pycache__")
        )
        (self.root / "schemas").mkdir()
        self.write_schema("accounts", "id")
        (self.root / "tests").mkdir()
        (self.root / "tests" / "test_x.py").write_text("")
        self.bin.mkdir()
        port = fake_gcloud.server().port
        for prog in ("gcloud", "bq", "python"):
            wrapper = self.bin / prog
            wrapper.write_text(fake_gcloud.wrapper(prog, port, BASH, sys.executable))
            wrapper.chmod(0o755)

    def write_schema(self, table: str, column: str) -> None:
        fields = [{"name": column, "type": "STRING", "mode": "REQUIRED"}]
        (self.root / "schemas" / f"{table}.json").write_text(json.dumps(fields))

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BOOTSTRAP_", "FAKE_", "CLOUDSDK_"))
            and k not in ("GOOGLE_CLOUD_PROJECT", "COMPLETION_TOPIC", "ALLOW_DESTRUCTIVE", "PYTHON")
        }
        env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            HOME=str(self.tmp / "home"),
            GOOGLE_CLOUD_PROJECT=PROJECT,
            PYTHON=str(self.bin / "python"),
            BOOTSTRAP_RETRY_SLEEP="0",
            FAKE_STATE=str(self.state),
            FAKE_LOG=str(self.log),
        )
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def run(self, script: str, *args: str, drop: tuple[str, ...] = (), **extra: str) -> Run:
        before = self.calls()
        env = self.env(**extra)
        for name in drop:
            env.pop(name, None)
        done = subprocess.run(
            ["bash", str(self.root / "deploy" / script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.tmp,
        )
        return Run(done.returncode, done.stdout, done.stderr, self.calls()[len(before) :])

    def deploy(self, *args: str, **extra: str) -> Run:
        return self.run("deploy.sh", *args, **extra)

    def teardown(self, *args: str, **extra: str) -> Run:
        return self.run("teardown.sh", *args, **extra)

    def calls(self) -> list[Call]:
        if not self.log.exists():
            return []
        return [Call(**json.loads(line)) for line in self.log.read_text().splitlines()]

    def read_state(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())

    def write_state(self, state: dict[str, Any]) -> None:
        self.state.write_text(json.dumps(state, indent=1, sort_keys=True))
