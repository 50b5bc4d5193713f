#!/usr/bin/env bash
# deploy/deploy.sh: from a clone to a running production deployment of the tenants bootstrap
# function in one command, safe to run again. `deploy/deploy.sh --help` lists the settings.
set -euo pipefail

PROG=deploy.sh
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
# The function's environment, exactly as section 7 deploys it.
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
STORAGE_EVENT=google.cloud.storage.object.v1.finalized

# The runtime service account's custom roles. deploy.sh creates both datasets, so the account
# owns neither; these are its only BigQuery grants (README: "Roles, and why each one").
#
# On the dataset, always: metadata only.
ROLE_PERMISSIONS=(
  bigquery.datasets.get    # read the dataset's metadata
  bigquery.datasets.update # patch its description and labels
  bigquery.tables.create   # create missing tables
  bigquery.tables.get      # read table metadata and schema
  bigquery.tables.list     # see which tables exist
  bigquery.tables.update   # patch schema, description, labels, partitioning, clustering
)
# On the dataset, only with --allow-destructive: what force_recreate_* does to it.
DESTRUCTIVE_ROLE_PERMISSIONS=(
  bigquery.datasets.delete # force_recreate_dataset
  bigquery.tables.delete   # force_recreate_tables
  bigquery.tables.getData  # the source of each backup copy job
)
# On the backup dataset, only with --allow-destructive: what a backup does there.
BACKUP_ROLE_PERMISSIONS=(
  bigquery.datasets.get      # find the backup dataset
  bigquery.tables.create     # the copy job's destination table
  bigquery.tables.get        # read the copy
  bigquery.tables.list       # list the backups
  bigquery.tables.update     # set each copy's expiration, labels and description
  bigquery.tables.updateData # the copy job writes the rows
)
# On the project, only with --allow-destructive: what cannot be granted on a dataset. Neither
# reads nor changes any existing data.
JOBS_ROLE_PERMISSIONS=(
  bigquery.jobs.create     # a copy job runs in a project, not in a dataset
  bigquery.datasets.create # force_recreate_dataset makes the dataset again
)

if ((DRY_RUN)); then
  echo "# deploy.sh --dry-run: the commands a first run on an empty project would run, reads"
  echo "# included. Values known only at run time are shown as <...>."
fi
log "project $P, region $R, function $BOOTSTRAP_FUNCTION, dataset $BOOTSTRAP_DATASET" \
  "($BOOTSTRAP_LOCATION), allow destructive: $ALLOW_DESTRUCTIVE"

# ---------------------------------------------------------------------------------------------
# 1. APIs

APIS=(
  artifactregistry.googleapis.com bigquery.googleapis.com cloudbuild.googleapis.com
  cloudfunctions.googleapis.com cloudresourcemanager.googleapis.com eventarc.googleapis.com
  iam.googleapis.com logging.googleapis.com pubsub.googleapis.com run.googleapis.com
  storage.googleapis.com
)
query services list --enabled --format='value(config.name)'
missing=()
for api in "${APIS[@]}"; do
  grep -Fxq "$api" <<<"$OUT" || missing+=("$api")
done
if ((${#missing[@]})); then
  mutate services enable "${missing[@]}"
fi

query projects describe "$P" --format='value(projectNumber)'
PROJECT_NUMBER=$OUT
if ((DRY_RUN)); then
  PROJECT_NUMBER='<PROJECT_NUMBER>'
fi
[[ -n $PROJECT_NUMBER ]] || die "could not read the number of project $P"
PUBSUB_AGENT="service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
EVENTARC_AGENT="service-${PROJECT_NUMBER}@gcp-sa-eventarc.iam.gserviceaccount.com"

# The datasets are read here, before anything but the APIs has been changed, so that one in
# another location stops the run cleanly. Section 3 creates those that are missing.
lower() { tr '[:upper:]' '[:lower:]' <<<"$1"; }
for dataset in "$BOOTSTRAP_DATASET" "$BOOTSTRAP_BACKUP_DATASET"; do
  if describe_dataset "$dataset" && [[ $(lower "$DATASET_LOCATION") != $(lower "$BOOTSTRAP_LOCATION") ]]; then
    die "dataset $P:$dataset exists in $DATASET_LOCATION, not in $BOOTSTRAP_LOCATION (--location," \
      "BOOTSTRAP_LOCATION): deploy with --location $DATASET_LOCATION, or name other datasets" \
      "(--dataset, --backup-dataset). Nothing was changed but the enabled APIs."
  fi
done

# ---------------------------------------------------------------------------------------------
# 2. Identities and their grants

ensure_service_account() { # EMAIL DISPLAY-NAME DESCRIPTION
  if ! exists iam service-accounts describe "$1" --format='value(email)'; then
    mutate iam service-accounts create "${1%%@*}" --display-name="$2" --description="$3"
  fi
}
ensure_service_account "$RUNTIME_SA" "$BOOTSTRAP_FUNCTION runtime" \
  "Identity of the $BOOTSTRAP_FUNCTION function: BigQuery, schema and state buckets, completion topic"
ensure_service_account "$TRIGGER_SA" "$BOOTSTRAP_FUNCTION triggers" \
  "Identity of the Eventarc triggers that invoke $BOOTSTRAP_FUNCTION"
ensure_service_account "$BUILD_SA" "$BOOTSTRAP_FUNCTION build" \
  "Identity of the Cloud Build runs that build $BOOTSTRAP_FUNCTION"

# ensure_role ID TITLE DESCRIPTION PERMISSION...: the custom role exists (undeleted if teardown
# deleted it less than 7 days ago) with exactly these permissions. All four are defined on every
# run; only their grants depend on --allow-destructive.
ensure_role() {
  local id=$1 title=$2 description=$3 want have deleted permissions
  shift 3
  want=$(printf '%s\n' "$@" | LC_ALL=C sort | paste -sd, -)
  if exists iam roles describe "$id" --project="$P" \
    --format="value[separator='|'](deleted,includedPermissions)"; then
    IFS='|' read -r deleted permissions <<<"$OUT"
    if [[ $deleted == True ]]; then
      mutate iam roles undelete "$id" --project="$P"
    fi
    have=$(tr ';' '\n' <<<"$permissions" | LC_ALL=C sort | paste -sd, -)
    if [[ $have != "$want" ]]; then
      mutate iam roles update "$id" --project="$P" --permissions="$want"
    fi
  else
    mutate iam roles create "$id" --project="$P" --stage=GA --title="$title" \
      --description="$description" --permissions="$want"
  fi
}
ensure_role "$CUSTOM_ROLE_ID" "Tenants bootstrap ($BOOTSTRAP_FUNCTION)" \
  "Granted on dataset $BOOTSTRAP_DATASET: the metadata $BOOTSTRAP_FUNCTION reads and patches" \
  "${ROLE_PERMISSIONS[@]}"
ensure_role "$DESTRUCTIVE_ROLE_ID" "Tenants bootstrap, destructive ($BOOTSTRAP_FUNCTION)" \
  "Granted on dataset $BOOTSTRAP_DATASET with --allow-destructive: drops and backup sources" \
  "${DESTRUCTIVE_ROLE_PERMISSIONS[@]}"
ensure_role "$BACKUP_ROLE_ID" "Tenants bootstrap, backups ($BOOTSTRAP_FUNCTION)" \
  "Granted on dataset $BOOTSTRAP_BACKUP_DATASET with --allow-destructive: the backup copies" \
  "${BACKUP_ROLE_PERMISSIONS[@]}"
ensure_role "$JOBS_ROLE_ID" "Tenants bootstrap, jobs ($BOOTSTRAP_FUNCTION)" \
  "Granted on the project with --allow-destructive: copy jobs, and the dataset's recreation" \
  "${JOBS_ROLE_PERMISSIONS[@]}"

# No BigQuery role on the project but the jobs role, and that only with --allow-destructive.
# Earlier versions of this script granted the first custom role and roles/bigquery.jobUser on
# the project: an upgrade takes them back.
remove_binding projects "$P" "$CUSTOM_ROLE" "serviceAccount:$RUNTIME_SA"
remove_binding projects "$P" roles/bigquery.jobUser "serviceAccount:$RUNTIME_SA"
if [[ $ALLOW_DESTRUCTIVE == true ]]; then
  ensure_binding projects "$P" "$JOBS_ROLE" "serviceAccount:$RUNTIME_SA"
else
  remove_binding projects "$P" "$JOBS_ROLE" "serviceAccount:$RUNTIME_SA"
fi
ensure_binding projects "$P" roles/eventarc.eventReceiver "serviceAccount:$TRIGGER_SA"
ensure_binding projects "$P" roles/cloudbuild.builds.builder "serviceAccount:$BUILD_SA"

# Google's service agents. Pub/Sub's and Eventarc's hold their service-agent role on the project
# once they exist; create them only if they do not.
if ! has_binding projects "$P" roles/pubsub.serviceAgent "serviceAccount:$PUBSUB_AGENT"; then
  mutate beta services identity create --service=pubsub.googleapis.com --project="$P"
fi
if ! has_binding projects "$P" roles/eventarc.serviceAgent "serviceAccount:$EVENTARC_AGENT"; then
  mutate beta services identity create --service=eventarc.googleapis.com --project="$P"
fi
query storage service-agent
STORAGE_AGENT=$OUT
if ((DRY_RUN)); then
  STORAGE_AGENT="service-${PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
fi
[[ -n $STORAGE_AGENT ]] || die "could not read the Cloud Storage service agent of project $P"
# Eventarc's Cloud Storage triggers: the bucket's notifications are published by this agent.
ensure_binding projects "$P" roles/pubsub.publisher "serviceAccount:$STORAGE_AGENT"
# Push subscriptions sign their requests as the trigger account; projects whose Pub/Sub agent
# predates April 2021 need this grant for it (on this one account, not the project).
ensure_binding "iam service-accounts" "$TRIGGER_SA" roles/iam.serviceAccountTokenCreator \
  "serviceAccount:$PUBSUB_AGENT"

# ---------------------------------------------------------------------------------------------
# 3. The datasets, made by this script so that the function's account owns neither (BigQuery
# makes a dataset's creator its OWNER: "Basic roles and permissions",
# https://cloud.google.com/bigquery/docs/access-control-basic-roles). bq mk cannot set access
# entries, so each new dataset gets BigQuery's default ones (the project's basic-role groups and
# the account running this script), and set_access then writes the function's entries, as on
# every run: exactly the roles below, whatever earlier versions or the function left there (a
# function that created the dataset itself is its OWNER until this runs).

ensure_dataset() { # DATASET [bq mk flags...]: creates it unless describe_dataset found none
  local dataset=$1
  shift
  if [[ ! -s $WORK/$dataset.json ]]; then
    mutate bq --location="$BOOTSTRAP_LOCATION" mk --dataset "$@" "$P:$dataset"
    query bq show --format=json --dataset "$P:$dataset"
    printf '%s\n' "$OUT" >"$WORK/$dataset.json"
  fi
}
ensure_dataset "$BOOTSTRAP_DATASET" \
  --description="Tenant registry, kept in its declared state by $BOOTSTRAP_FUNCTION"
# The function's own default for the backups (BOOTSTRAP_BACKUP_TTL_DAYS, 7 days); each backup
# also gets its own expiration.
ensure_dataset "$BOOTSTRAP_BACKUP_DATASET" --default_table_expiration=604800 \
  --description="Backups taken before forced recreations; each table expires on its own."

if [[ $ALLOW_DESTRUCTIVE == true ]]; then
  set_access "$BOOTSTRAP_DATASET" "$CUSTOM_ROLE" "$DESTRUCTIVE_ROLE"
  set_access "$BOOTSTRAP_BACKUP_DATASET" "$BACKUP_ROLE"
else
  set_access "$BOOTSTRAP_DATASET" "$CUSTOM_ROLE"
  set_access "$BOOTSTRAP_BACKUP_DATASET"
fi

# ---------------------------------------------------------------------------------------------
# 4. Topics and the subscriptions that keep their messages readable

for topic in "$BOOTSTRAP_REQUESTS_TOPIC" "$COMPLETION_TOPIC" "$BOOTSTRAP_DEAD_LETTER_TOPIC"; do
  if ! exists pubsub topics describe "$topic" --format='value(name)'; then
    mutate pubsub topics create "$topic"
  fi
done

ensure_pull_subscription() { # SUBSCRIPTION TOPIC
  if ! exists pubsub subscriptions describe "$1" --format='value(name)'; then
    mutate pubsub subscriptions create "$1" --topic="$2" \
      --message-retention-duration=7d --expiration-period=never
  fi
}
# Messages published to a topic without subscriptions are lost: one for the dead letters, one
# to watch completion events (downstream services add their own).
ensure_pull_subscription "$DEAD_LETTER_SUBSCRIPTION" "$BOOTSTRAP_DEAD_LETTER_TOPIC"
ensure_pull_subscription "$COMPLETION_SUBSCRIPTION" "$COMPLETION_TOPIC"

ensure_binding "pubsub topics" "$COMPLETION_TOPIC" roles/pubsub.publisher \
  "serviceAccount:$RUNTIME_SA"
# Who may send bootstrap requests, besides those with pubsub.topics.publish on the whole project.
for requester in ${REQUESTERS[@]+"${REQUESTERS[@]}"}; do
  ensure_binding "pubsub topics" "$BOOTSTRAP_REQUESTS_TOPIC" roles/pubsub.publisher "$requester"
done
ensure_binding "pubsub topics" "$BOOTSTRAP_DEAD_LETTER_TOPIC" roles/pubsub.publisher \
  "serviceAccount:$PUBSUB_AGENT"

# ---------------------------------------------------------------------------------------------
# 5. Buckets

# Both buckets: uniform bucket-level access, public access prevention enforced, object
# versioning on (every uploaded schema, every ledger entry stays in the bucket's history). A
# bucket made earlier, by an older version of this script or by hand, gets what it lacks.
BUCKET_FIELDS="value[separator='|'](location,versioning_enabled,uniform_bucket_level_access,public_access_prevention,labels.schema_digest)"
ensure_bucket() { # BUCKET: sets BUCKET_LOCATION and BUCKET_DIGEST_LABEL
  local bucket=gs://$1 versioning uniform pap
  BUCKET_LOCATION=$R
  BUCKET_DIGEST_LABEL=""
  if exists storage buckets describe "$bucket" --format="$BUCKET_FIELDS"; then
    IFS='|' read -r BUCKET_LOCATION versioning uniform pap BUCKET_DIGEST_LABEL <<<"$OUT"
    if [[ $uniform != True ]]; then
      mutate storage buckets update "$bucket" --uniform-bucket-level-access
    fi
    if [[ $pap != enforced ]]; then
      mutate storage buckets update "$bucket" --public-access-prevention
    fi
  else
    mutate storage buckets create "$bucket" --location="$R" \
      --uniform-bucket-level-access --public-access-prevention
  fi
  if [[ ${versioning:-} != True ]]; then
    mutate storage buckets update "$bucket" --versioning
  fi
}
ensure_bucket "$BOOTSTRAP_SCHEMA_BUCKET"
SCHEMA_BUCKET_LOCATION=$(lower "$BUCKET_LOCATION")
SCHEMA_DIGEST_LABEL=$BUCKET_DIGEST_LABEL
ensure_bucket "$BOOTSTRAP_STATE_BUCKET"

ensure_binding "storage buckets" "gs://$BOOTSTRAP_SCHEMA_BUCKET" roles/storage.objectViewer \
  "serviceAccount:$RUNTIME_SA"
ensure_binding "storage buckets" "gs://$BOOTSTRAP_STATE_BUCKET" roles/storage.objectUser \
  "serviceAccount:$RUNTIME_SA"

# ---------------------------------------------------------------------------------------------
# 6. Seed the schema bucket from schemas/ with the project's own sync (it validates every file
# first and uploads nothing if one is invalid). Skipped while schemas/ is what was last synced,
# so a second run neither re-uploads (each upload is a new generation and a new event) nor
# overwrites schemas uploaded to the bucket since.

if ((SKIP_SYNC)); then
  log "schema sync skipped (--skip-schema-sync)"
else
  [[ -d $ROOT/schemas ]] || die "$ROOT/schemas not found: nothing to seed the schema bucket with"
  SCHEMA_DIGEST=$(
    cd "$ROOT"
    find schemas -type f ! -name '.*' | LC_ALL=C sort | while IFS= read -r f; do
      printf '%s %s\n' "$(sha256 <"$f")" "$f"
    done | sha256 | cut -c1-40
  )
  if [[ $SCHEMA_DIGEST_LABEL == "$SCHEMA_DIGEST" ]]; then
    log "schema bucket already holds schemas/ (digest $SCHEMA_DIGEST): not synced again"
  else
    # Seeding happens before the upload trigger exists: nothing to plan, and the deploying
    # account need not read BigQuery.
    SYNC=("$PYTHON" -m function sync --from schemas --to "$SCHEMA_SOURCE" --skip-plan)
    if ((DRY_RUN)); then
      quote_cmd "${SYNC[@]}"
    else
      log "+ $(quote_cmd "${SYNC[@]}")"
      (cd "$ROOT" && GOOGLE_CLOUD_PROJECT=$P "${SYNC[@]}" >&2) ||
        die "the schema sync failed (nothing is uploaded while any schema is invalid): fix schemas/ and run again"
    fi
    mutate storage buckets update "gs://$BOOTSTRAP_SCHEMA_BUCKET" \
      --update-labels="schema_digest=$SCHEMA_DIGEST"
  fi
fi

# ---------------------------------------------------------------------------------------------
# 7. The function, with its Pub/Sub trigger on the requests topic

# No value holds a comma: the checks above refuse any that would.
ENV_VARS=$(
  IFS=,
  printf '%s' "${FUNCTION_ENV[*]}"
)
DEPLOY_ARGS=(
  functions deploy "$BOOTSTRAP_FUNCTION" --gen2 --region="$R"
  --runtime="$BOOTSTRAP_RUNTIME" --entry-point=bootstrap
  --trigger-topic="$BOOTSTRAP_REQUESTS_TOPIC" --retry
  --service-account="$RUNTIME_SA" --trigger-service-account="$TRIGGER_SA"
  --build-service-account="projects/$P/serviceAccounts/$BUILD_SA"
  --memory="$BOOTSTRAP_MEMORY" --max-instances="$BOOTSTRAP_MAX_INSTANCES"
  --timeout="$BOOTSTRAP_TIMEOUT" --ingress-settings="$BOOTSTRAP_INGRESS"
  --no-allow-unauthenticated --serve-all-traffic-latest-revision
  --set-env-vars="$ENV_VARS"
)

# The hash of what would be uploaded (the same .gcloudignore rules as the deploy) and of every
# deploy setting. The source path is left out: another clone of the same commit is no change.
if ((DRY_RUN)); then
  quote_cmd gcloud meta list-files-for-upload "$ROOT"
  DEPLOY_HASH='<hash of the upload set and settings>'
else
  UPLOAD_FILES=$(cd "$ROOT" && gcloud meta list-files-for-upload .) ||
    die "gcloud meta list-files-for-upload failed in $ROOT"
  for needed in main.py requirements.txt; do
    grep -Fxq "$needed" <<<"$UPLOAD_FILES" ||
      die "$needed is not in the upload set: check $ROOT/.gcloudignore"
  done
  DEPLOY_HASH=$(
    cd "$ROOT"
    {
      printf '%s\n' "${DEPLOY_ARGS[@]}"
      LC_ALL=C sort <<<"$UPLOAD_FILES" | while IFS= read -r f; do
        printf '%s %s\n' "$(sha256 <"$f")" "$f"
      done
    } | sha256 | cut -c1-40
  )
fi

FUNCTION_FIELDS="value[separator='|'](state,labels.deploy_hash,serviceConfig.service,eventTrigger.trigger)"
deployed=0
if exists functions describe "$BOOTSTRAP_FUNCTION" --region="$R" --format="$FUNCTION_FIELDS"; then
  IFS='|' read -r state hash _ _ <<<"$OUT"
  if [[ $state == ACTIVE && $hash == "$DEPLOY_HASH" ]] && ((!FORCE_REDEPLOY)); then
    log "function $BOOTSTRAP_FUNCTION is ACTIVE with this source and these settings: not redeployed"
  else
    deployed=1
  fi
else
  deployed=1
fi
if ((deployed)); then
  mutate "${DEPLOY_ARGS[@]}" --source="$ROOT" --update-labels="deploy_hash=$DEPLOY_HASH"
fi
query functions describe "$BOOTSTRAP_FUNCTION" --region="$R" --format="$FUNCTION_FIELDS"
IFS='|' read -r state _ SERVICE FUNCTION_TRIGGER <<<"$OUT"
if ((DRY_RUN)); then
  SERVICE=$BOOTSTRAP_FUNCTION
  FUNCTION_TRIGGER="projects/$P/locations/$R/triggers/<trigger of the function>"
fi
SERVICE=${SERVICE##*/}
[[ -n $SERVICE && -n $FUNCTION_TRIGGER ]] ||
  die "function $BOOTSTRAP_FUNCTION (state ${state:-unknown}) has no Cloud Run service or trigger"

# The trigger identity may invoke the function's Cloud Run service, nothing else.
ensure_binding "run services" "$SERVICE" roles/run.invoker "serviceAccount:$TRIGGER_SA" \
  --region="$R"

# ---------------------------------------------------------------------------------------------
# 8. Schema uploads: an Eventarc Cloud Storage trigger to the same service. (A gen2 function has
# one trigger of its own; this second one targets its Cloud Run service.) It must live where the
# bucket lives.

TRIGGER_HASH=$(
  printf '%s\n' "$BOOTSTRAP_SCHEMA_BUCKET" "$SERVICE" "$R" "$TRIGGER_SA" "$STORAGE_EVENT" |
    sha256 | cut -c1-40
)
TRIGGER_ARGS=(
  --location="$SCHEMA_BUCKET_LOCATION"
  --destination-run-service="$SERVICE" --destination-run-region="$R"
  --event-filters="type=$STORAGE_EVENT" --event-filters="bucket=$BOOTSTRAP_SCHEMA_BUCKET"
  --service-account="$TRIGGER_SA"
)
if exists eventarc triggers describe "$STORAGE_TRIGGER" --location="$SCHEMA_BUCKET_LOCATION" \
  --format='value(labels.deploy_hash)'; then
  if [[ $OUT != "$TRIGGER_HASH" ]]; then
    mutate_retry eventarc triggers update "$STORAGE_TRIGGER" "${TRIGGER_ARGS[@]}" \
      --update-labels="deploy_hash=$TRIGGER_HASH"
  fi
else
  # Retried: the grants above can take a minute to reach Eventarc and Cloud Storage.
  mutate_retry eventarc triggers create "$STORAGE_TRIGGER" "${TRIGGER_ARGS[@]}" \
    --labels="deploy_hash=$TRIGGER_HASH"
fi

# ---------------------------------------------------------------------------------------------
# 9. Dead-lettering on both trigger subscriptions (Google creates them; their names are read
# from the triggers).

ensure_dead_letter() { # LABEL EVENTARC-TRIGGER [--location=LOC]
  local label=$1 trigger=$2 subscription
  shift 2
  query eventarc triggers describe "$trigger" "$@" --format='value(transport.pubsub.subscription)'
  subscription=$OUT
  if ((DRY_RUN)); then
    subscription="<subscription of the $label trigger>"
  fi
  [[ -n $subscription ]] || die "Eventarc trigger $trigger has no Pub/Sub subscription"
  local want="projects/$P/topics/$BOOTSTRAP_DEAD_LETTER_TOPIC|$BOOTSTRAP_MAX_DELIVERY_ATTEMPTS"
  query pubsub subscriptions describe "$subscription" \
    --format="value[separator='|'](deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts)"
  if [[ $OUT != "$want" ]]; then
    mutate pubsub subscriptions update "$subscription" \
      --dead-letter-topic="$BOOTSTRAP_DEAD_LETTER_TOPIC" \
      --max-delivery-attempts="$BOOTSTRAP_MAX_DELIVERY_ATTEMPTS"
  fi
  # Pub/Sub forwards to the dead-letter topic as its service agent, which must be able to
  # acknowledge on the source subscription.
  ensure_binding "pubsub subscriptions" "$subscription" roles/pubsub.subscriber \
    "serviceAccount:$PUBSUB_AGENT"
}
ensure_dead_letter requests "$FUNCTION_TRIGGER"
ensure_dead_letter schema-upload "$STORAGE_TRIGGER" --location="$SCHEMA_BUCKET_LOCATION"

# ---------------------------------------------------------------------------------------------

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
