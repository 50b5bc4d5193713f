# shellcheck shell=bash disable=SC2034  # the variables set here are used by the sourcing scripts
# deploy/lib.sh: the settings and helpers that deploy.sh and teardown.sh share. It is sourced,
# never run. Written for bash 3.2 and later (no associative arrays, no mapfile, no namerefs).
# Over 400 lines: every helper both scripts need (settings and their checks, the idempotent gcloud
# and bq wrappers, IAM bindings, dataset access); a second shared file would only cut one list.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${PROG:-$(basename "$0")}
DRY_RUN=0
OUT=""

# gcloud must never stop to ask: a missing answer is an error, not a hang.
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

# ---------------------------------------------------------------------------------------------
# Messages. Progress and errors go to stderr; stdout carries only the --dry-run command listing.

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}
usage_error() {
  printf '%s: error: %s\nRun %s --help for the settings.\n' "$PROG" "$*" "$PROG" >&2
  exit 2
}

# Prints a command so that it can be pasted back into a shell.
quote_cmd() {
  local out="" a safe='^[A-Za-z0-9_@%+=:,./-]+$' q="'"
  for a in "$@"; do
    if [[ $a =~ $safe ]]; then
      out+=" $a"
    else
      out+=" '${a//$q/$q\\$q$q}'"
    fi
  done
  printf '%s\n' "${out# }"
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum | cut -d' ' -f1
  else
    shasum -a 256 | cut -d' ' -f1
  fi
}

lower() { tr '[:upper:]' '[:lower:]' <<<"$1"; }

# ---------------------------------------------------------------------------------------------
# Settings: each is a flag and an environment variable of the same meaning; the flag wins.
#
# The settings the function reads are checked by the function's own rules
# (check_function_settings); the scripts check only what the function never sees.

SETTINGS_HELP='Settings (flag, environment variable, default):
  --project ID                GOOGLE_CLOUD_PROJECT              required
  --region REGION             BOOTSTRAP_REGION                  us-central1
  --function NAME             BOOTSTRAP_FUNCTION                tenants-bootstrap
  --dataset ID                BOOTSTRAP_DATASET                 tenants
  --location LOC              BOOTSTRAP_LOCATION                US
  --backup-dataset ID         BOOTSTRAP_BACKUP_DATASET          <dataset>_backups
  --schema-bucket NAME        BOOTSTRAP_SCHEMA_BUCKET           <project>-tenant-schemas
  --state-bucket NAME         BOOTSTRAP_STATE_BUCKET            <project>-bootstrap-state
  --requests-topic NAME       BOOTSTRAP_REQUESTS_TOPIC          bootstrap-requests
  --completion-topic NAME     COMPLETION_TOPIC                  bootstrap-completed
  --dead-letter-topic NAME    BOOTSTRAP_DEAD_LETTER_TOPIC       bootstrap-dead-letter'

load_settings() {
  GOOGLE_CLOUD_PROJECT=${GOOGLE_CLOUD_PROJECT:-}
  BOOTSTRAP_REGION=${BOOTSTRAP_REGION:-us-central1}
  BOOTSTRAP_FUNCTION=${BOOTSTRAP_FUNCTION:-tenants-bootstrap}
  BOOTSTRAP_DATASET=${BOOTSTRAP_DATASET:-tenants}
  BOOTSTRAP_LOCATION=${BOOTSTRAP_LOCATION:-US}
  BOOTSTRAP_BACKUP_DATASET=${BOOTSTRAP_BACKUP_DATASET:-}
  BOOTSTRAP_SCHEMA_BUCKET=${BOOTSTRAP_SCHEMA_BUCKET:-}
  BOOTSTRAP_STATE_BUCKET=${BOOTSTRAP_STATE_BUCKET:-}
  BOOTSTRAP_REQUESTS_TOPIC=${BOOTSTRAP_REQUESTS_TOPIC:-bootstrap-requests}
  COMPLETION_TOPIC=${COMPLETION_TOPIC:-bootstrap-completed}
  BOOTSTRAP_DEAD_LETTER_TOPIC=${BOOTSTRAP_DEAD_LETTER_TOPIC:-bootstrap-dead-letter}
}

# The project's Python, for `python -m function settings --check` and `python -m function sync`.
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then
    PYTHON=$ROOT/.venv/bin/python
  else
    PYTHON=python3
  fi
fi

# set_common_flag FLAG VALUE: returns 1 if FLAG is not a common setting.
set_common_flag() {
  case $1 in
    --project) GOOGLE_CLOUD_PROJECT=$2 ;;
    --region) BOOTSTRAP_REGION=$2 ;;
    --function) BOOTSTRAP_FUNCTION=$2 ;;
    --dataset) BOOTSTRAP_DATASET=$2 ;;
    --location) BOOTSTRAP_LOCATION=$2 ;;
    --backup-dataset) BOOTSTRAP_BACKUP_DATASET=$2 ;;
    --schema-bucket) BOOTSTRAP_SCHEMA_BUCKET=$2 ;;
    --state-bucket) BOOTSTRAP_STATE_BUCKET=$2 ;;
    --requests-topic) BOOTSTRAP_REQUESTS_TOPIC=$2 ;;
    --completion-topic) COMPLETION_TOPIC=$2 ;;
    --dead-letter-topic) BOOTSTRAP_DEAD_LETTER_TOPIC=$2 ;;
    *) return 1 ;;
  esac
}

# check NAME VALUE REGEX WHAT: a clear message naming the flag and the variable, before any command.
check() {
  local re=$3
  [[ $2 =~ $re ]] || usage_error "invalid $1 '$2': $4"
}

# resolve_common_settings: a project is given, and the names that default to ones made from it
# (or from the dataset) are filled in.
resolve_common_settings() {
  [[ -n $GOOGLE_CLOUD_PROJECT ]] ||
    usage_error "no project: pass --project PROJECT_ID or set GOOGLE_CLOUD_PROJECT"
  : "${BOOTSTRAP_BACKUP_DATASET:=${BOOTSTRAP_DATASET}_backups}"
  : "${BOOTSTRAP_SCHEMA_BUCKET:=${GOOGLE_CLOUD_PROJECT}-tenant-schemas}"
  : "${BOOTSTRAP_STATE_BUCKET:=${GOOGLE_CLOUD_PROJECT}-bootstrap-state}"
}

# check_function_settings NAME=VALUE...: the function's own rules judge the settings it is given,
# before any command. `python -m function settings --check` sees exactly these variables, none
# of the shell's (PATH and HOME only find the interpreter), and lists every problem, each with
# its variable, its value and what is allowed.
check_function_settings() {
  require_tool "$PYTHON" "set PYTHON to an interpreter with requirements.txt installed (make venv)"
  (cd "$ROOT" && env -i PATH="$PATH" HOME="${HOME:-}" "$@" \
    "$PYTHON" -m function settings --check >/dev/null) ||
    usage_error "the function would refuse the settings above ($PYTHON -m function settings" \
      "--check); if that check could not run at all, set PYTHON to the project's environment" \
      "(make venv)"
}

# validate_common_settings: the shared settings the function never sees, and the names derived
# from the settings.
validate_common_settings() {
  check "region (--region, BOOTSTRAP_REGION)" "$BOOTSTRAP_REGION" \
    '^[a-z]+-[a-z]+[0-9]+$' 'a Cloud Functions region such as us-central1'
  check "function name (--function, BOOTSTRAP_FUNCTION)" "$BOOTSTRAP_FUNCTION" \
    '^[a-z][a-z0-9-]{0,47}[a-z0-9]$' 'lower-case letters, digits and hyphens, at most 49'
  local bucket='^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$' topic='^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$'
  check "schema bucket (--schema-bucket, BOOTSTRAP_SCHEMA_BUCKET)" "$BOOTSTRAP_SCHEMA_BUCKET" \
    "$bucket" 'a bucket name: 3-63 lower-case letters, digits, hyphens, underscores'
  check "state bucket (--state-bucket, BOOTSTRAP_STATE_BUCKET)" "$BOOTSTRAP_STATE_BUCKET" \
    "$bucket" 'a bucket name: 3-63 lower-case letters, digits, hyphens, underscores'
  [[ $BOOTSTRAP_SCHEMA_BUCKET != "$BOOTSTRAP_STATE_BUCKET" ]] ||
    usage_error "the schema bucket and the state bucket must differ (both are $BOOTSTRAP_STATE_BUCKET)"
  check "requests topic (--requests-topic, BOOTSTRAP_REQUESTS_TOPIC)" \
    "$BOOTSTRAP_REQUESTS_TOPIC" "$topic" 'a Pub/Sub topic ID'
  check "dead-letter topic (--dead-letter-topic, BOOTSTRAP_DEAD_LETTER_TOPIC)" \
    "$BOOTSTRAP_DEAD_LETTER_TOPIC" "$topic" 'a Pub/Sub topic ID'

  # Names derived from the function name (service account IDs: 6-30 characters).
  local prefix=${BOOTSTRAP_FUNCTION:0:21}
  prefix=${prefix%-}
  RUNTIME_SA="${prefix}-run@${GOOGLE_CLOUD_PROJECT}.iam.gserviceaccount.com"
  TRIGGER_SA="${prefix}-trigger@${GOOGLE_CLOUD_PROJECT}.iam.gserviceaccount.com"
  BUILD_SA="${prefix}-build@${GOOGLE_CLOUD_PROJECT}.iam.gserviceaccount.com"
  # The function's custom roles (IDs: letters, digits, underscores; at most 64). Each is granted
  # where the README's "Roles, and why each one" says: the first on the dataset, always; the
  # others only with --allow-destructive (the destructive one on the dataset, the backups one on
  # the backup dataset, the jobs one on the project). Earlier versions granted the first on the
  # project.
  CUSTOM_ROLE_ID=${BOOTSTRAP_FUNCTION//-/_}
  DESTRUCTIVE_ROLE_ID=${CUSTOM_ROLE_ID}_destructive
  BACKUP_ROLE_ID=${CUSTOM_ROLE_ID}_backups
  JOBS_ROLE_ID=${CUSTOM_ROLE_ID}_jobs
  CUSTOM_ROLE_IDS=("$CUSTOM_ROLE_ID" "$DESTRUCTIVE_ROLE_ID" "$BACKUP_ROLE_ID" "$JOBS_ROLE_ID")
  CUSTOM_ROLE="projects/${GOOGLE_CLOUD_PROJECT}/roles/${CUSTOM_ROLE_ID}"
  DESTRUCTIVE_ROLE="projects/${GOOGLE_CLOUD_PROJECT}/roles/${DESTRUCTIVE_ROLE_ID}"
  BACKUP_ROLE="projects/${GOOGLE_CLOUD_PROJECT}/roles/${BACKUP_ROLE_ID}"
  JOBS_ROLE="projects/${GOOGLE_CLOUD_PROJECT}/roles/${JOBS_ROLE_ID}"
  STORAGE_TRIGGER="${BOOTSTRAP_FUNCTION}-schema-uploads"
  DEAD_LETTER_SUBSCRIPTION="${BOOTSTRAP_DEAD_LETTER_TOPIC}-sub"
  COMPLETION_SUBSCRIPTION="${COMPLETION_TOPIC}-watch"
}

require_tool() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH: $2"
}

# ---------------------------------------------------------------------------------------------
# gcloud and bq wrappers. Every gcloud call gets --project; a call whose first word is bq runs
# BigQuery's CLI (it comes with gcloud) with --project_id instead. Three kinds:
#   exists ARGS...   a describe: returns 0 (found, output in OUT) or 1 (NOT_FOUND); any other
#                    failure (permission, disabled API, network) stops the script.
#   query ARGS...    a read that must succeed; output in OUT.
#   mutate ARGS...   a change.
# With --dry-run each prints the command and runs nothing: exists answers "missing" and query
# answers "", so the listing is what a first run on an empty project would do.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bootstrap-deploy.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ERR_FILE="$WORK/stderr"
GCLOUD_ARGV=()

_argv() {
  if [[ $1 == bq ]]; then
    shift
    GCLOUD_ARGV=(bq "--project_id=$GOOGLE_CLOUD_PROJECT" "$@")
    return 0
  fi
  GCLOUD_ARGV=(gcloud "$@")
  local a
  for a in "$@"; do
    [[ $a == --project=* ]] && return 0
  done
  GCLOUD_ARGV+=("--project=$GOOGLE_CLOUD_PROJECT")
}

# bq prints its errors on stdout, gcloud on stderr: both are shown, and searched for NOT_FOUND.
_failed() {
  [[ -z $OUT ]] || printf '%s\n' "$OUT" >&2
  cat "$ERR_FILE" >&2
  die "this command failed (exit $1): $(quote_cmd "${GCLOUD_ARGV[@]}")"
}

# _printed_instead: in a dry run, the command is printed instead of run (and this succeeds).
_printed_instead() {
  ((DRY_RUN)) || return 1
  quote_cmd "${GCLOUD_ARGV[@]}"
}

# _captured: runs the command, its output in OUT and its errors in ERR_FILE; its exit status.
_captured() {
  OUT=$("${GCLOUD_ARGV[@]}" 2>"$ERR_FILE")
}

exists() {
  _argv "$@"
  OUT=""
  if _printed_instead; then
    return 1
  fi
  local rc=0
  _captured || rc=$?
  if ((rc == 0)); then
    return 0
  fi
  if grep -Eqi 'not[ _]?found|does not exist|404' "$ERR_FILE" ||
    grep -Eqi 'not[ _]?found|does not exist|404' <<<"$OUT"; then
    OUT=""
    return 1
  fi
  _failed "$rc"
}

query() {
  _argv "$@"
  OUT=""
  if _printed_instead; then
    return 0
  fi
  local rc=0
  _captured || rc=$?
  ((rc == 0)) || _failed "$rc"
}

mutate() {
  _argv "$@"
  if _printed_instead; then
    return 0
  fi
  log "+ $(quote_cmd "${GCLOUD_ARGV[@]}")"
  local rc=0
  "${GCLOUD_ARGV[@]}" >&2 || rc=$?
  ((rc == 0)) || die "this command failed (exit $rc): $(quote_cmd "${GCLOUD_ARGV[@]}")"
}

# A change that may race IAM propagation (a service account or grant made seconds ago): tried
# up to 7 times, 2, 4, ... 64 seconds apart (BOOTSTRAP_RETRY_SLEEP sets the first wait).
mutate_retry() {
  _argv "$@"
  if _printed_instead; then
    return 0
  fi
  log "+ $(quote_cmd "${GCLOUD_ARGV[@]}")"
  local attempt=1 wait=${BOOTSTRAP_RETRY_SLEEP:-2} rc
  while :; do
    rc=0
    "${GCLOUD_ARGV[@]}" >&2 || rc=$?
    ((rc == 0)) && return 0
    ((attempt < 7)) ||
      die "this command failed $attempt times (exit $rc): $(quote_cmd "${GCLOUD_ARGV[@]}")"
    log "attempt $attempt failed (IAM changes take a moment to propagate); retrying in ${wait}s"
    sleep "$wait"
    attempt=$((attempt + 1))
    wait=$((wait * 2))
  done
}

# IAM: the policy of one resource, flattened to "ROLE<TAB>MEMBER" lines, read once per resource.
POLICY_KEY=""
POLICY=""

# _policy "GROUP WORDS" RESOURCE [FLAGS...]: loads the policy into POLICY unless cached.
_policy() {
  local -a group
  read -r -a group <<<"$1"
  local res=$2
  shift 2
  local key="$*"
  key="${group[*]}|$res|$key"
  if [[ $POLICY_KEY != "$key" ]]; then
    query "${group[@]}" get-iam-policy "$res" "$@" \
      --flatten='bindings[].members' --format='value(bindings.role,bindings.members)'
    POLICY=$OUT
    POLICY_KEY=$key
  fi
}

# has_binding "GROUP WORDS" RESOURCE ROLE MEMBER [FLAGS...]: the policy grants ROLE to MEMBER.
has_binding() {
  local words=$1 res=$2 role=$3 member=$4
  shift 4
  _policy "$words" "$res" "$@"
  grep -Fxq -- "$role"$'\t'"$member" <<<"$POLICY"
}

# ensure_binding "GROUP WORDS" RESOURCE ROLE MEMBER [FLAGS...]: grants ROLE to MEMBER on
# RESOURCE unless the policy already holds it. FLAGS (e.g. --region=R) go to both calls.
ensure_binding() {
  if has_binding "$@"; then
    return 0
  fi
  _change_binding mutate_retry add-iam-policy-binding "$@"
  POLICY+=$'\n'"$3"$'\t'"$4"
}

# remove_binding "GROUP WORDS" RESOURCE ROLE MEMBER [FLAGS...]: the reverse, for teardown.
remove_binding() {
  if ! has_binding "$@"; then
    return 0
  fi
  _change_binding mutate remove-iam-policy-binding "$@"
  POLICY=$(grep -Fxv -- "$3"$'\t'"$4" <<<"$POLICY" || true)
}

# _change_binding MUTATOR VERB "GROUP WORDS" RESOURCE ROLE MEMBER [FLAGS...]: one IAM binding
# added or removed by MUTATOR (mutate, mutate_retry).
_change_binding() {
  local mutator=$1 verb=$2 words=$3 res=$4 role=$5 member=$6 group
  read -r -a group <<<"$words"
  shift 6
  if [[ ${group[0]} == projects ]]; then
    # A project policy that holds conditional bindings refuses an unconditional change without it.
    "$mutator" "${group[@]}" "$verb" "$res" "$@" --member="$member" --role="$role" --condition=None
  else
    "$mutator" "${group[@]}" "$verb" "$res" "$@" --member="$member" --role="$role"
  fi
}

# ---------------------------------------------------------------------------------------------
# BigQuery datasets and the runtime account's entries in their access lists.
#
# The function's BigQuery grants are entries in its two datasets' access lists, not bindings on
# the project. BigQuery's documented way to change them with bq ("Control access to resources
# with IAM", https://cloud.google.com/bigquery/docs/control-access-to-resources-iam, Grant
# access to a dataset, bq): `bq show --format=prettyjson` the dataset, edit its "access"
# section, apply it with `bq update --source FILE`. An entry's role is "an IAM role ID" (the
# Dataset resource's reference, https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets),
# custom roles included. deploy/dataset_access.py does the editing, and touches only the runtime
# account's entries.

DATASET_LOCATION=""
DATASET_ETAG=""
DATASET_ROLES="" # the runtime account's roles in the access list, sorted, comma-separated
# What set_access takes the account to hold in a dataset under --dry-run, which reads nothing.
DRY_RUN_ROLES=""

# _access DATASET [dataset_access.py flags...]: DATASET_LOCATION, DATASET_ETAG and DATASET_ROLES
# from $WORK/DATASET.json (what bq show printed).
_access() {
  local ds=$1 line
  shift
  line=$(python3 "$ROOT/deploy/dataset_access.py" --email "$RUNTIME_SA" "$@" <"$WORK/$ds.json") ||
    die "could not read the access entries of dataset $GOOGLE_CLOUD_PROJECT:$ds"
  IFS='|' read -r DATASET_LOCATION DATASET_ETAG DATASET_ROLES <<<"$line"
}

# describe_dataset DATASET: 0 if it exists (what bq show printed in $WORK/DATASET.json, and
# DATASET_LOCATION, DATASET_ETAG, DATASET_ROLES set), 1 if not (all of them empty).
describe_dataset() {
  DATASET_LOCATION="" DATASET_ETAG="" DATASET_ROLES=""
  if exists bq show --format=json --dataset "$GOOGLE_CLOUD_PROJECT:$1"; then
    printf '%s\n' "$OUT" >"$WORK/$1.json"
    _access "$1"
    return 0
  fi
  : >"$WORK/$1.json"
  return 1
}

# set_access DATASET ROLE...: the runtime account holds exactly ROLE... in DATASET's access list
# (no ROLE: no entry at all); every other entry stays as it is. Reads $WORK/DATASET.json, so
# describe the dataset (or create it and show it) first. The update is made only if something
# differs, and carries the etag that was read: a change made to the dataset in between makes it
# fail instead of being overwritten. Retried: a service account or custom role made seconds ago
# may not be known to BigQuery yet.
set_access() {
  local ds=$1 want source="$WORK/$1.access.json" role
  shift
  want=$(printf '%s\n' "$@" | LC_ALL=C sort -u | paste -sd, -)
  local flags=(--out "$source")
  for role in "$@"; do
    flags+=(--want "$role")
  done
  if ((DRY_RUN)); then
    DATASET_ETAG='<etag>'
    DATASET_ROLES=$DRY_RUN_ROLES
    source="<$ds's access entries as bq show printed them, with $RUNTIME_SA's replaced by: ${want:-none}>"
  else
    _access "$ds" "${flags[@]}"
  fi
  [[ $DATASET_ROLES != "$want" ]] || return 0
  mutate_retry bq update --dataset --update_mode=update_acl --source="$source" \
    --etag="$DATASET_ETAG" "$GOOGLE_CLOUD_PROJECT:$ds"
}

# delete_dataset DATASET: deletes it with every table in it, if it exists (for teardown).
delete_dataset() {
  if exists bq show --format=none --dataset "$GOOGLE_CLOUD_PROJECT:$1" || ((DRY_RUN)); then
    mutate bq rm --recursive --force --dataset "$GOOGLE_CLOUD_PROJECT:$1"
  fi
}
