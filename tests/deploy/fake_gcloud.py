"""A recording stand-in for `gcloud`, `bq` and the project's Python, for the deploy script tests.

The tests put small bash wrappers named gcloud, bq and python on PATH (wrapper() writes them). Each
sends its call (its arguments, working directory and FAKE_* variables) to one server in the test
process (Server: loopback TCP, bash's /dev/tcp) and prints what answer() returns: the exit
status, stdout and stderr that the call would have had as a process of its own. Every call is
appended to $FAKE_LOG as a JSON line {"prog", "argv", "cwd"}. Resources live in the JSON file
$FAKE_STATE: a describe of something missing fails the way gcloud does (exit 1, NOT_FOUND), a
create of something present fails with ALREADY_EXISTS, and changes are written back, so a second
run sees what the first one made. $FAKE_FAIL, when it is a substring of the joined command line,
makes that call fail with PERMISSION_DENIED. $FAKE_SYNC_EXIT is the exit status of the fake Python
(the schema sync). `python -m function settings` is no call to the cloud: the python wrapper runs
it for real, with the interpreter running the tests, and it is not recorded.

`bq` works on datasets (show, mk, update --source, rm) as BigQuery's CLI does: errors are printed on
stdout, not found and already exists exit 2, a new dataset gets BigQuery's default access entries
(the project's basic-role groups, and its creator DEPLOYER as OWNER), an update checks the etag and
refuses what BigQuery refuses (an unknown custom role or service account, a list without OWNER, the
caller removing its own OWNER entry).

Over 400 lines: one fake per gcloud and bq command the deploy scripts call, on one state file.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

PROJECT_NUMBER = "123456789012"
DEPLOYER = "deployer@example.com"  # the account the scripts run as
LEGACY_ROLES = {
    "roles/bigquery.dataOwner": "OWNER",
    "roles/bigquery.dataEditor": "WRITER",
    "roles/bigquery.dataViewer": "READER",
}
ENTITY_KEYS = (
    "userByEmail",
    "groupByEmail",
    "domain",
    "specialGroup",
    "iamMember",
    "view",
    "routine",
    "dataset",
)

GROUPS = {
    ("projects",): "project",
    ("iam", "service-accounts"): "sa",
    ("iam", "roles"): "role",
    ("pubsub", "topics"): "topic",
    ("pubsub", "subscriptions"): "subscription",
    ("storage", "buckets"): "bucket",
    ("functions",): "function",
    ("run", "services"): "service",
    ("eventarc", "triggers"): "trigger",
}


class Fail(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def default_access() -> list[dict[str, str]]:
    """What BigQuery gives a dataset created without access entries."""
    return [
        {"role": "WRITER", "specialGroup": "projectWriters"},
        {"role": "OWNER", "specialGroup": "projectOwners"},
        {"role": "OWNER", "userByEmail": DEPLOYER},
        {"role": "READER", "specialGroup": "projectReaders"},
    ]


def load_state(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {}


def empty_state() -> dict[str, Any]:
    return {"services": [], "resources": {}, "policies": {}}


def parse(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    words: list[str] = []
    flags: dict[str, Any] = {}
    for arg in argv:
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            val: Any = value if sep else True
            if key in flags:
                prev = flags[key]
                flags[key] = [*prev, val] if isinstance(prev, list) else [prev, val]
            else:
                flags[key] = val
        else:
            words.append(arg)
    return words, flags


def short(name: str) -> str:
    name = name.removeprefix("gs://").rstrip("/")
    return name.rsplit("/", 1)[-1]


def lookup(record: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, list):
        return ";".join(render(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def formatted(records: list[Any], fmt: str | None) -> str:
    if not fmt:
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    match = re.fullmatch(r"value(?:\[separator='(.)'\])?\((.*)\)", fmt)
    if not match:
        raise Fail(f"fake gcloud: unsupported --format {fmt!r}", 3)
    sep = match.group(1) or "\t"
    fields = [f.strip() for f in match.group(2).split(",")]
    return "".join(sep.join(render(lookup(r, f)) for f in fields) + "\n" for r in records)


def labels_of(value: Any) -> dict[str, str]:
    values = value if isinstance(value, list) else [value]
    out: dict[str, str] = {}
    for item in values:
        for pair in str(item).split(","):
            key, _, val = pair.partition("=")
            out[key] = val
    return out


class Fake:
    def __init__(self, state: dict[str, Any], project: str, cwd: Path) -> None:
        self.state = state
        self.project = project
        self.cwd = cwd  # the caller's: relative paths in the arguments are relative to it
        self.res: dict[str, Any] = state.setdefault("resources", {})
        self.pol: dict[str, list[list[str]]] = state.setdefault("policies", {})

    def get(self, key: str) -> Any:
        if key not in self.res:
            raise Fail(f"ERROR: (gcloud) NOT_FOUND: Resource not found (resource={key}).")
        return self.res[key]

    def put(self, key: str, record: Any) -> None:
        if key in self.res:
            raise Fail(f"ERROR: (gcloud) ALREADY_EXISTS: Resource already exists ({key}).")
        self.res[key] = record

    # ------------------------------------------------------------------------------------
    def gcloud(self, argv: list[str]) -> str:
        words, flags = parse(argv)
        fmt = flags.get("format")
        p = self.project
        if words[:1] == ["meta"]:
            return list_files(self.cwd / (words[2] if len(words) > 2 else "."))
        if words == ["services", "list"]:
            return formatted([{"config": {"name": s}} for s in self.state["services"]], fmt)
        if words[:2] == ["services", "enable"]:
            self.state["services"] += [s for s in words[2:] if s not in self.state["services"]]
            return ""
        if words[:4] == ["beta", "services", "identity", "create"]:
            service = flags["service"].split(".")[0]
            agent = {"pubsub": "gcp-sa-pubsub", "eventarc": "gcp-sa-eventarc"}[service]
            member = f"serviceAccount:service-{PROJECT_NUMBER}@{agent}.iam.gserviceaccount.com"
            self.pol.setdefault(f"project/{p}", []).append([f"roles/{service}.serviceAgent", member])
            return ""
        if words == ["storage", "service-agent"]:
            return f"service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com\n"
        if words[:2] == ["storage", "rm"]:
            for url in words[2:]:
                self.get(f"bucket/{short(url)}")
                del self.res[f"bucket/{short(url)}"]
            return ""

        for size in (2, 1):
            kind = GROUPS.get(tuple(words[:size]))
            if kind:
                verb, names = words[size], words[size + 1 :]
                break
        else:
            raise Fail(f"fake gcloud: unsupported command {' '.join(words)}", 3)
        name = short(names[0]) if names else ""
        if kind == "sa" and verb == "create":
            name = f"{name}@{p}.iam.gserviceaccount.com"
        key = f"{kind}/{name}"

        if verb == "get-iam-policy":
            if flags.get("flatten") != "bindings[].members":
                raise Fail("fake gcloud: get-iam-policy is read flattened by member", 3)
            if fmt != "value(bindings.role,bindings.members)":
                raise Fail(f"fake gcloud: unexpected policy format {fmt!r}", 3)
            if kind not in ("project", "service"):
                self.get(key)
            return "".join(f"{r}\t{m}\n" for r, m in self.pol.get(key, []))
        if verb == "add-iam-policy-binding":
            if kind not in ("project", "service"):
                self.get(key)
            self.pol.setdefault(key, []).append([flags["role"], flags["member"]])
            return ""
        if verb == "remove-iam-policy-binding":
            binding = [flags["role"], flags["member"]]
            if binding not in self.pol.get(key, []):
                raise Fail("ERROR: (gcloud) Policy binding with the specified principal not found")
            self.pol[key].remove(binding)
            return ""

        if kind == "project" and verb == "describe":
            return formatted([{"projectId": name, "projectNumber": PROJECT_NUMBER}], fmt)
        if verb == "describe":
            return formatted([self.get(key)], fmt)
        handler = getattr(self, f"{kind}_{verb.replace('-', '_')}", None)
        if handler is None:
            raise Fail(f"fake gcloud: unsupported command {' '.join(words)}", 3)
        handler(key, name, flags)
        return ""

    # ------------------------------------------------------------------------------------
    def sa_create(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.put(key, {"email": name, "displayName": flags.get("display-name")})

    def sa_delete(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.get(key)
        del self.res[key]
        self.pol.pop(key, None)

    def role_create(self, key: str, name: str, flags: dict[str, Any]) -> None:
        perms = flags["permissions"].split(",")
        self.put(key, {"name": f"projects/{self.project}/roles/{name}", "includedPermissions": perms})

    def role_update(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.get(key)["includedPermissions"] = flags["permissions"].split(",")

    def role_undelete(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.get(key).pop("deleted", None)

    def role_delete(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.get(key)["deleted"] = True

    def topic_create(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.put(key, {"name": f"projects/{self.project}/topics/{name}"})

    def topic_delete(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.get(key)
        del self.res[key]
        self.pol.pop(key, None)

    def subscription_create(self, key: str, name: str, flags: dict[str, Any]) -> None:
        topic = f"projects/{self.project}/topics/{flags['topic']}"
        self.put(key, {"name": f"projects/{self.project}/subscriptions/{name}", "topic": topic})

    def subscription_update(self, key: str, name: str, flags: dict[str, Any]) -> None:
        record = self.get(key)
        if "dead-letter-topic" in flags:
            record["deadLetterPolicy"] = {
                "deadLetterTopic": f"projects/{self.project}/topics/{flags['dead-letter-topic']}",
                "maxDeliveryAttempts": int(flags["max-delivery-attempts"]),
            }

    subscription_delete = topic_delete

    def bucket_create(self, key: str, name: str, flags: dict[str, Any]) -> None:
        self.put(
            key,
            {
                "name": name,
                "location": flags["location"].upper(),
                "uniform_bucket_level_access": bool(flags.get("uniform-bucket-level-access")),
                "versioning_enabled": None,
                "public_access_prevention": (
                    "enforced" if flags.get("public-access-prevention") else "inherited"
                ),
                "labels": {},
            },
        )

    def bucket_update(self, key: str, name: str, flags: dict[str, Any]) -> None:
        record = self.get(key)
        if flags.get("versioning"):
            record["versioning_enabled"] = True
        if flags.get("uniform-bucket-level-access"):
            record["uniform_bucket_level_access"] = True
        if flags.get("public-access-prevention"):
            record["public_access_prevention"] = "enforced"
        if "update-labels" in flags:
            record.setdefault("labels", {}).update(labels_of(flags["update-labels"]))

    def _trigger(self, name: str, location: str, flags: dict[str, Any]) -> dict[str, Any]:
        sub = f"eventarc-{location}-{name}-sub-042"
        self.res[f"subscription/{sub}"] = {"name": f"projects/{self.project}/subscriptions/{sub}"}
        return {
            "name": f"projects/{self.project}/locations/{location}/triggers/{name}",
            "transport": {"pubsub": {"subscription": f"projects/{self.project}/subscriptions/{sub}"}},
            "labels": labels_of(flags["labels"]) if "labels" in flags else {},
        }

    def trigger_create(self, key: str, name: str, flags: dict[str, Any]) -> None:
        if key in self.res:
            self.put(key, None)
        record = self._trigger(name, flags["location"], flags)
        record.update(
            serviceAccount=flags.get("service-account"),
            destination={
                "cloudRun": {
                    "service": flags.get("destination-run-service"),
                    "region": flags.get("destination-run-region"),
                }
            },
        )
        self.res[key] = record

    def trigger_update(self, key: str, name: str, flags: dict[str, Any]) -> None:
        record = self.get(key)
        record.setdefault("labels", {}).update(labels_of(flags.get("update-labels", "")))

    def trigger_delete(self, key: str, name: str, flags: dict[str, Any]) -> None:
        record = self.get(key)
        self.res.pop(f"subscription/{short(record['transport']['pubsub']['subscription'])}", None)
        del self.res[key]

    def function_deploy(self, key: str, name: str, flags: dict[str, Any]) -> None:
        region = flags["region"]
        record = self.res.get(key)
        if record is None:
            trigger = f"{name}-417235"
            self.res[f"trigger/{trigger}"] = self._trigger(trigger, region, {})
            record = {
                "name": f"projects/{self.project}/locations/{region}/functions/{name}",
                "labels": {},
                "serviceConfig": {"service": f"projects/{self.project}/locations/{region}/services/{name}"},
                "eventTrigger": {
                    "trigger": f"projects/{self.project}/locations/{region}/triggers/{trigger}",
                    "pubsubTopic": f"projects/{self.project}/topics/{flags['trigger-topic']}",
                },
            }
            self.res[key] = record
        record["state"] = "ACTIVE"
        record["labels"].update(labels_of(flags.get("update-labels", "")))

    def function_delete(self, key: str, name: str, flags: dict[str, Any]) -> None:
        record = self.get(key)
        self.trigger_delete(f"trigger/{short(record['eventTrigger']['trigger'])}", "", {})
        del self.res[key]
        self.pol.pop(f"service/{name}", None)

    # ------------------------------------------------------------------------------------
    def bq(self, argv: list[str]) -> str:
        words, flags = parse(argv)
        command, ref = words[0], words[-1]
        name = ref.split(":")[-1]
        key = f"dataset/{name}"
        if ":" in ref and ref.split(":")[0] != self.project:
            raise Fail(f"fake bq: {ref} is not in --project_id={self.project}", 3)
        if command in ("show", "update", "rm") and key not in self.res:
            raise Fail(f"BigQuery error in {command} operation: Not found: Dataset {ref}", 2)
        if command == "show":
            record = self.res[key]
            return "" if flags.get("format") == "none" else json.dumps(record, sort_keys=True) + "\n"
        if command == "rm":
            del self.res[key]
            return ""
        if command == "mk" and flags.get("dataset"):
            if key in self.res:
                raise Fail(f"BigQuery error in mk operation: Dataset '{ref}' already exists.", 2)
            record = {
                "datasetReference": {"projectId": self.project, "datasetId": name},
                "id": f"{self.project}:{name}",
                "location": flags.get("location", "US"),
                "etag": "etag-1",
                "access": default_access(),
            }
            if "description" in flags:
                record["description"] = flags["description"]
            if "default_table_expiration" in flags:
                record["defaultTableExpirationMs"] = str(int(flags["default_table_expiration"]) * 1000)
            self.res[key] = record
            return f"Dataset '{ref}' successfully created.\n"
        if command == "update" and flags.get("dataset") and "source" in flags:
            self.bq_update_access(self.res[key], flags)
            return f"Dataset '{ref}' successfully updated.\n"
        raise Fail(f"fake bq: unsupported command {' '.join(argv)}", 3)

    def bq_update_access(self, record: dict[str, Any], flags: dict[str, Any]) -> None:
        if flags.get("update_mode") not in (None, "update_acl", "update_full"):
            raise Fail(f"fake bq: --update_mode={flags['update_mode']} does not update access", 3)
        if "etag" in flags and flags["etag"] != record.get("etag"):
            raise Fail("BigQuery error in update operation: Precondition check failed.")
        payload = json.loads((self.cwd / flags["source"]).read_text())
        if "access" not in payload:
            return
        access = []
        for entry in payload["access"]:
            entities = [k for k in ENTITY_KEYS if k in entry]
            if len(entities) != 1 or not entry.get("role"):
                raise Fail(f"BigQuery error in update operation: Invalid access entry {entry}")
            role = LEGACY_ROLES.get(entry["role"], entry["role"])
            custom = re.fullmatch(r"projects/([^/]+)/roles/(\w+)", role)
            if custom:
                found = self.res.get(f"role/{custom.group(2)}")
                if custom.group(1) != self.project or not found or found.get("deleted"):
                    raise Fail(f"BigQuery error in update operation: Role {role} not found")
            elif role not in ("OWNER", "WRITER", "READER") and not role.startswith("roles/"):
                raise Fail(f"BigQuery error in update operation: Invalid role {role}")
            email = entry.get("userByEmail", "")
            if email.endswith(f"@{self.project}.iam.gserviceaccount.com") and f"sa/{email}" not in self.res:
                raise Fail(f"BigQuery error in update operation: {email} does not exist")
            access.append({**entry, "role": role})
        if not [e for e in access if e["role"] == "OWNER"]:
            raise Fail("BigQuery error in update operation: a dataset needs at least one OWNER")
        mine = {"role": "OWNER", "userByEmail": DEPLOYER}
        if mine in record.get("access", []) and mine not in access:
            raise Fail("BigQuery error in update operation: you cannot remove your own OWNER role")
        record["access"] = access
        record["etag"] = f"etag-{int(str(record.get('etag', 'etag-0')).rsplit('-', 1)[-1]) + 1}"


def list_files(directory: Path) -> str:
    """`gcloud meta list-files-for-upload`: the repository's own .gcloudignore rules, which
    tests/deploy/test_deploy_upload.py checks against the real gcloud where it is installed."""
    import gcloudignore  # beside this file

    return "".join(f + "\n" for f in sorted(gcloudignore.upload_set(directory)))


# ---------------------------------------------------------------------------------------------
# One call


def answer(prog: str, argv: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str, str]:
    """What `PROG ARGV...` run in CWD with the FAKE_* variables ENV does: (exit status, stdout,
    stderr). An error of the fake itself is a traceback and exit 1, as a Python process of its
    own would show it."""
    out, err = io.StringIO(), io.StringIO()
    try:
        rc = _call(prog, argv, Path(cwd), env, out, err)
    except Exception:
        err.write(traceback.format_exc())
        rc = 1
    return rc, out.getvalue(), err.getvalue()


def _call(
    prog: str, argv: list[str], cwd: Path, env: dict[str, str], out: io.StringIO, err: io.StringIO
) -> int:
    log = env.get("FAKE_LOG")
    if log:
        with open(cwd / log, "a") as fh:
            fh.write(json.dumps({"prog": prog, "argv": argv, "cwd": str(cwd)}) + "\n")
    if prog == "python":
        return int(env.get("FAKE_SYNC_EXIT", "0"))

    # bq prints its errors on stdout; gcloud on stderr.
    errors = out if prog == "bq" else err
    fail = env.get("FAKE_FAIL")
    if fail and fail in " ".join(argv):
        who = "BigQuery error in operation:" if prog == "bq" else "ERROR: (gcloud)"
        errors.write(f"{who} PERMISSION_DENIED: fake failure of {fail!r}\n")
        return 1

    state_path = cwd / env["FAKE_STATE"]
    state = load_state(state_path) or empty_state()
    _, flags = parse(argv)
    project = flags.get("project") or flags.get("project_id") or "unset-project"
    fake = Fake(state, project, cwd)
    try:
        text = fake.bq(argv) if prog == "bq" else fake.gcloud(argv)
    except Fail as exc:
        errors.write(f"{exc}\n")
        return exc.code
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    out.write(text)
    return 0


# ---------------------------------------------------------------------------------------------
# The server and its wrappers
#
# A request is NUL-terminated fields: how many follow, then PROG, the working directory, how many
# FAKE_* variables follow, each as NAME=VALUE, then the arguments. The answer is three
# NUL-terminated fields: the exit status, stdout, stderr (the fake prints no NUL).

ENV_NAMES = ("FAKE_LOG", "FAKE_STATE", "FAKE_FAIL", "FAKE_SYNC_EXIT")


def _request(conn: socket.socket) -> list[str]:
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the wrapper closed the connection before its request was whole")
        data += chunk
        count, sep, rest = data.partition(b"\0")
        if sep and rest.count(b"\0") >= int(count):
            return [f.decode() for f in rest.split(b"\0")[: int(count)]]


def _serve_one(conn: socket.socket) -> None:
    fields = _request(conn)
    prog, cwd, n = fields[0], fields[1], int(fields[2])
    env = dict(pair.split("=", 1) for pair in fields[3 : 3 + n])
    rc, out, err = answer(prog, fields[3 + n :], cwd, env)
    if "\0" in out + err:
        rc, out, err = 3, "", f"fake {prog}: a NUL byte in its output cannot be sent\n"
    conn.sendall(f"{rc}\0{out}\0{err}\0".encode())


class Server:
    """The fake's one server in the test process, on a free loopback port. Calls are answered
    one at a time, in the order they connect (the scripts make one at a time)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, name="fake-gcloud", daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(60)
                try:
                    _serve_one(conn)
                except (OSError, ValueError) as exc:
                    print(f"fake gcloud server: a call was dropped: {exc!r}", file=sys.stderr)


_server: Server | None = None
_server_lock = threading.Lock()


def server() -> Server:
    """The server, started by the first harness of the test process."""
    global _server
    with _server_lock:
        if _server is None:
            _server = Server()
        return _server


def wrapper(prog: str, port: int, bash: str, python: str) -> str:
    """The script installed as PROG: bash (3.2 and later), for its /dev/tcp, and no other
    process. The python wrapper runs `python -m function settings` itself, with PYTHON (the
    interpreter running the tests)."""
    settings = ""
    if prog == "python":
        settings = (
            'if [ "$1" = -m ] && [ "$2" = function ] && [ "$3" = settings ]; then\n'
            f'  exec {shlex.quote(python)} "$@"\n'
            "fi\n"
        )
    names = " ".join(ENV_NAMES)
    return f"""#!{bash}
# {prog} for the deploy tests: the call is answered by tests/deploy/fake_gcloud.py's server.
{settings}cd -P . || exit 125
env=()
for name in {names}; do
  if [ -n "${{!name+set}}" ]; then env+=("$name=${{!name}}"); fi
done
exec 3<>/dev/tcp/127.0.0.1/{port} || exit 125
printf '%s\\0' "$((${{#env[@]}} + $# + 3))" {prog} "$PWD" "${{#env[@]}}" "${{env[@]}}" "$@" >&3
if ! {{ IFS= read -r -d '' rc && IFS= read -r -d '' out && IFS= read -r -d '' err; }} <&3; then
  echo "fake {prog}: no answer from the fake's server on port {port}" >&2
  exit 125
fi
printf '%s' "$out"
printf '%s' "$err" >&2
exit "$rc"
"""
