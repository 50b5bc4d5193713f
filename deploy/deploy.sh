#!/usr/bin/env bash
# deploy/deploy.sh: from a clone to a running production deployment of the tenants bootstrap
# function in one command, safe to run again. `deploy/deploy.sh --help` lists the settings.
set -euo pipefail

PROG=deploy.sh
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR
# shellcheck source=steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

usage() {
  cat <<EOF
Usage: deploy/deploy.sh --project PROJECT_ID [settings] [switches]

Sets up everything the tenants bootstrap function needs in one Google Cloud project and deploys
it: the APIs; three service accounts (runtime, trigger, build) with least privilege; the BigQuery
dataset and backup dataset, whose access entries hold the function's BigQuery grants (it owns
neither); the requests, completion and dead-letter topics; the schema bucket (versioned, seeded
from schemas/) and the state bucket (versioned); the gen2 function with its Pub/Sub trigger on the
requests topic (retries on); an Eventarc trigger for schema uploads; dead-lettering on both
trigger subscriptions.

Every resource is described before it is created or changed, so a second run with the same code
and settings changes nothing. The function is redeployed only when its uploaded source (per
.gcloudignore) or its settings changed: a hash of both is kept in its label deploy_hash.

$SETTINGS_HELP
  --runtime RUNTIME           BOOTSTRAP_RUNTIME                 python311
  --memory SIZE               BOOTSTRAP_MEMORY                  512Mi
  --max-instances N           BOOTSTRAP_MAX_INSTANCES           10
  --timeout DURATION          BOOTSTRAP_TIMEOUT                 540s
  --ingress SETTING           BOOTSTRAP_INGRESS                 internal-only
  --max-delivery-attempts N   BOOTSTRAP_MAX_DELIVERY_ATTEMPTS   10 (5-100; then dead-lettered)
  --max-event-age SECONDS     BOOTSTRAP_MAX_EVENT_AGE           3600
  --retry-deadline SECONDS    BOOTSTRAP_RETRY_DEADLINE          60
  --concurrency N             BOOTSTRAP_CONCURRENCY             32

The settings the function reads (its environment, as deployed) are checked by the function's own
rules before any command: 'python -m function settings --check' lists every problem at once, with
what each setting allows.

Switches:
  --allow-destructive   deploy with ALLOW_DESTRUCTIVE=true and give the function what
                        force_recreate_* requests need: delete and row-read permissions on the
                        dataset, write permissions on the backup dataset, and on the project
                        only bigquery.jobs.create and bigquery.datasets.create (the backup copy
                        jobs, the dataset's recreation). Only this flag does it (an
                        ALLOW_DESTRUCTIVE variable in your shell is ignored); a later run
                        without it takes all of it back.
  --requester MEMBER    may publish bootstrap requests: roles/pubsub.publisher on the requests
                        topic only, for MEMBER (user:EMAIL, group:EMAIL, serviceAccount:EMAIL,
                        ...). Repeatable. Grants are added, never removed: revoke one with
                        gcloud pubsub topics remove-iam-policy-binding.
  --force-redeploy      redeploy the function even if its source and settings are unchanged
  --skip-schema-sync    leave the objects in the schema bucket as they are
  --dry-run             print every command, run none (needs no credentials)
  -h, --help            this text

Environment only:
  PYTHON                interpreter for 'python -m function settings --check' (every run,
                        --dry-run too) and 'python -m function sync', with requirements.txt
                        installed (default: .venv/bin/python if it exists, else python3)
EOF
}

# ---------------------------------------------------------------------------------------------
# Settings

load_settings
BOOTSTRAP_RUNTIME=${BOOTSTRAP_RUNTIME:-python311}
BOOTSTRAP_MEMORY=${BOOTSTRAP_MEMORY:-512Mi}
BOOTSTRAP_MAX_INSTANCES=${BOOTSTRAP_MAX_INSTANCES:-10}
BOOTSTRAP_TIMEOUT=${BOOTSTRAP_TIMEOUT:-540s}
BOOTSTRAP_INGRESS=${BOOTSTRAP_INGRESS:-internal-only}
BOOTSTRAP_MAX_DELIVERY_ATTEMPTS=${BOOTSTRAP_MAX_DELIVERY_ATTEMPTS:-10}
BOOTSTRAP_MAX_EVENT_AGE=${BOOTSTRAP_MAX_EVENT_AGE:-3600}
BOOTSTRAP_RETRY_DEADLINE=${BOOTSTRAP_RETRY_DEADLINE:-60}
BOOTSTRAP_CONCURRENCY=${BOOTSTRAP_CONCURRENCY:-32}
ALLOW_DESTRUCTIVE=false # only --allow-destructive sets it
FORCE_REDEPLOY=0
SKIP_SYNC=0
REQUESTERS=()

set_flag() {
  set_common_flag "$1" "$2" && return 0
  case $1 in
    --runtime) BOOTSTRAP_RUNTIME=$2 ;;
    --memory) BOOTSTRAP_MEMORY=$2 ;;
    --max-instances) BOOTSTRAP_MAX_INSTANCES=$2 ;;
    --timeout) BOOTSTRAP_TIMEOUT=$2 ;;
    --ingress) BOOTSTRAP_INGRESS=$2 ;;
    --max-delivery-attempts) BOOTSTRAP_MAX_DELIVERY_ATTEMPTS=$2 ;;
    --max-event-age) BOOTSTRAP_MAX_EVENT_AGE=$2 ;;
    --retry-deadline) BOOTSTRAP_RETRY_DEADLINE=$2 ;;
    --concurrency) BOOTSTRAP_CONCURRENCY=$2 ;;
    --requester) REQUESTERS+=("$2") ;;
    *) usage_error "unknown option '$1'" ;;
  esac
}

while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) DRY_RUN=1 ;;
    --allow-destructive) ALLOW_DESTRUCTIVE=true ;;
    --force-redeploy) FORCE_REDEPLOY=1 ;;
    --skip-schema-sync) SKIP_SYNC=1 ;;
    --*=*) set_flag "${1%%=*}" "${1#*=}" ;;
    --*)
      (($# >= 2)) || usage_error "$1 needs a value"
      set_flag "$1" "$2"
      shift
      ;;
    *) usage_error "unexpected argument '$1'" ;;
  esac
  shift
done

resolve_common_settings
SCHEMA_SOURCE="gs://${BOOTSTRAP_SCHEMA_BUCKET}/schemas/"
# The function's environment, exactly as deploy_function deploys it.
FUNCTION_ENV=(
  "GOOGLE_CLOUD_PROJECT=$GOOGLE_CLOUD_PROJECT"
  "BOOTSTRAP_DATASET=$BOOTSTRAP_DATASET"
  "BOOTSTRAP_LOCATION=$BOOTSTRAP_LOCATION"
  "SCHEMA_SOURCE=$SCHEMA_SOURCE"
  "COMPLETION_TOPIC=$COMPLETION_TOPIC"
  "ALLOW_DESTRUCTIVE=$ALLOW_DESTRUCTIVE"
  "BOOTSTRAP_STATE_BUCKET=$BOOTSTRAP_STATE_BUCKET"
  "BOOTSTRAP_BACKUP_DATASET=$BOOTSTRAP_BACKUP_DATASET"
  "BOOTSTRAP_MAX_EVENT_AGE=$BOOTSTRAP_MAX_EVENT_AGE"
  "BOOTSTRAP_RETRY_DEADLINE=$BOOTSTRAP_RETRY_DEADLINE"
  "BOOTSTRAP_CONCURRENCY=$BOOTSTRAP_CONCURRENCY"
  "BOOTSTRAP_TIMEOUT=$BOOTSTRAP_TIMEOUT" # the request ledger's lease outlives it
)
check_function_settings "${FUNCTION_ENV[@]}"
validate_common_settings
positive='^[1-9][0-9]*$'
check "runtime (--runtime, BOOTSTRAP_RUNTIME)" "$BOOTSTRAP_RUNTIME" '^python3[0-9]{1,2}$' \
  'a Python runtime such as python311 or python312'
check "memory (--memory, BOOTSTRAP_MEMORY)" "$BOOTSTRAP_MEMORY" '^[1-9][0-9]*(k|M|G|Ki|Mi|Gi)$' \
  'a size such as 512Mi or 1Gi'
check "max instances (--max-instances, BOOTSTRAP_MAX_INSTANCES)" "$BOOTSTRAP_MAX_INSTANCES" \
  "$positive" 'a positive integer'
# Also the function's setting (checked above, 10 to 3600 seconds); gcloud's spelling here.
check "timeout (--timeout, BOOTSTRAP_TIMEOUT)" "$BOOTSTRAP_TIMEOUT" '^[1-9][0-9]*s$' \
  'seconds with an s, such as 540s'
check "ingress (--ingress, BOOTSTRAP_INGRESS)" "$BOOTSTRAP_INGRESS" \
  '^(all|internal-only|internal-and-gclb)$' 'all, internal-only or internal-and-gclb'
check "max delivery attempts (--max-delivery-attempts, BOOTSTRAP_MAX_DELIVERY_ATTEMPTS)" \
  "$BOOTSTRAP_MAX_DELIVERY_ATTEMPTS" "$positive" 'an integer from 5 to 100'
((BOOTSTRAP_MAX_DELIVERY_ATTEMPTS >= 5 && BOOTSTRAP_MAX_DELIVERY_ATTEMPTS <= 100)) ||
  usage_error "invalid max delivery attempts '$BOOTSTRAP_MAX_DELIVERY_ATTEMPTS': Pub/Sub allows 5 to 100"
for requester in ${REQUESTERS[@]+"${REQUESTERS[@]}"}; do
  check "requester (--requester)" "$requester" \
    '^(user|group|serviceAccount|domain|principal|principalSet):[^[:space:],]+$' \
    'an IAM member such as user:EMAIL, group:EMAIL or serviceAccount:EMAIL'
done

if ((!DRY_RUN)); then
  require_tool gcloud "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  require_tool bq "it comes with the Google Cloud CLI (gcloud components install bq)"
  require_tool python3 "deploy/dataset_access.py edits the datasets' access entries with it"
fi
[[ -f $ROOT/main.py ]] || ((DRY_RUN)) ||
  die "$ROOT/main.py not found: the function's entry point must be in the repository root"

P=$GOOGLE_CLOUD_PROJECT
R=$BOOTSTRAP_REGION

# ---------------------------------------------------------------------------------------------
# The deployment, in order. Each step is a function in deploy/steps.sh, described there.

if ((DRY_RUN)); then
  echo "# deploy.sh --dry-run: the commands a first run on an empty project would run, reads"
  echo "# included. Values known only at run time are shown as <...>."
fi
log "project $P, region $R, function $BOOTSTRAP_FUNCTION, dataset $BOOTSTRAP_DATASET" \
  "($BOOTSTRAP_LOCATION), allow destructive: $ALLOW_DESTRUCTIVE"

# 1. APIs, and what the rest needs to know about the project
enable_apis
read_project_number
check_dataset_locations # before anything but the APIs has been changed
# 2. Identities and their grants
ensure_service_accounts
ensure_custom_roles
ensure_project_grants
ensure_service_agents
# 3. The datasets, and the function's entries in their access lists
ensure_datasets
# 4. Topics and the subscriptions that keep their messages readable
ensure_topics
# 5. The schema and state buckets
ensure_buckets
# 6. The schema bucket seeded from schemas/
sync_schemas
# 7. The function, with its Pub/Sub trigger on the requests topic
deploy_function
# 8. Schema uploads: an Eventarc trigger on the schema bucket
ensure_schema_trigger
# 9. Dead-lettering on both triggers' subscriptions
ensure_dead_lettering

if ((DRY_RUN)); then
  log "dry run: nothing was changed"
  exit 0
fi
cat >&2 <<EOF

$PROG: done. $BOOTSTRAP_FUNCTION is deployed in $P ($R).
  requests:     gcloud pubsub topics publish $BOOTSTRAP_REQUESTS_TOPIC --project=$P --message='{}'
  completions:  gcloud pubsub subscriptions pull $COMPLETION_SUBSCRIPTION --project=$P --auto-ack --limit=10
  dead letters: gcloud pubsub subscriptions pull $DEAD_LETTER_SUBSCRIPTION --project=$P --limit=10
  logs:         gcloud functions logs read $BOOTSTRAP_FUNCTION --gen2 --project=$P --region=$R --limit=50
  schemas:      $SCHEMA_SOURCE (every upload is applied; the bucket keeps each version)
EOF
