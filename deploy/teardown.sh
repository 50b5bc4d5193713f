#!/usr/bin/env bash
# deploy/teardown.sh: removes what deploy.sh created. The dataset, its backups and the buckets
# (which hold the schema history and the request ledger) are kept unless asked for by name.
set -euo pipefail

PROG=teardown.sh
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF
Usage: deploy/teardown.sh --project PROJECT_ID [settings] [switches]

Removes what deploy/deploy.sh created, each only if it exists: the Eventarc schema-upload
trigger, the function (with its own trigger and subscription), the dead-letter and completion
watch subscriptions, the three topics, the IAM grants (on the project, on the kept buckets, and
the runtime account's entries in the kept datasets' access lists), the four custom roles and the
three service accounts. Pass the same settings that deploy.sh was given.

Kept unless asked for explicitly:
  --delete-buckets      delete the schema bucket (every schema version) and the state bucket
  --delete-dataset      delete the BigQuery dataset and every table in it
  --delete-backups      delete the backup dataset and every backup in it

Also kept: the enabled APIs, and the Cloud Storage service agent's roles/pubsub.publisher grant on
the project (other Eventarc Cloud Storage triggers in the project may need it).

$SETTINGS_HELP

Switches:
  --dry-run             print every command, run none (needs no credentials)
  -h, --help            this text

Environment only:
  PYTHON                interpreter for 'python -m function settings --check', which checks the
                        settings the function reads, with requirements.txt installed (default:
                        .venv/bin/python if it exists, else python3)
EOF
}

load_settings
DELETE_BUCKETS=0
DELETE_DATASET=0
DELETE_BACKUPS=0

while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) DRY_RUN=1 ;;
    --delete-buckets) DELETE_BUCKETS=1 ;;
    --delete-dataset) DELETE_DATASET=1 ;;
    --delete-backups) DELETE_BACKUPS=1 ;;
    --*=*) set_common_flag "${1%%=*}" "${1#*=}" || usage_error "unknown option '${1%%=*}'" ;;
    --*)
      (($# >= 2)) || usage_error "$1 needs a value"
      set_common_flag "$1" "$2" || usage_error "unknown option '$1'"
      shift
      ;;
    *) usage_error "unexpected argument '$1'" ;;
  esac
  shift
done

resolve_common_settings
check_function_settings "GOOGLE_CLOUD_PROJECT=$GOOGLE_CLOUD_PROJECT" \
  "BOOTSTRAP_DATASET=$BOOTSTRAP_DATASET" "BOOTSTRAP_BACKUP_DATASET=$BOOTSTRAP_BACKUP_DATASET" \
  "BOOTSTRAP_LOCATION=$BOOTSTRAP_LOCATION" "COMPLETION_TOPIC=$COMPLETION_TOPIC"
validate_common_settings
if ((!DRY_RUN)); then
  require_tool gcloud "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  require_tool bq "it comes with the Google Cloud CLI (gcloud components install bq)"
  require_tool python3 "deploy/dataset_access.py edits the datasets' access entries with it"
fi
P=$GOOGLE_CLOUD_PROJECT
R=$BOOTSTRAP_REGION
if ((DRY_RUN)); then
  echo "# teardown.sh --dry-run: the commands a run would use when everything exists."
fi

# 1. The schema-upload trigger. It lives where the schema bucket lives (deploy.sh put it there).
TRIGGER_LOCATION=$R
if exists storage buckets describe "gs://$BOOTSTRAP_SCHEMA_BUCKET" --format='value(location)'; then
  TRIGGER_LOCATION=$(lower "$OUT")
fi
if exists eventarc triggers describe "$STORAGE_TRIGGER" --location="$TRIGGER_LOCATION" \
  --format='value(name)' || ((DRY_RUN)); then
  mutate eventarc triggers delete "$STORAGE_TRIGGER" --location="$TRIGGER_LOCATION"
fi

# 2. The function (its Pub/Sub trigger and that trigger's subscription go with it).
if exists functions describe "$BOOTSTRAP_FUNCTION" --region="$R" --format='value(name)' ||
  ((DRY_RUN)); then
  mutate functions delete "$BOOTSTRAP_FUNCTION" --region="$R"
fi

# 3. Subscriptions and topics.
for subscription in "$DEAD_LETTER_SUBSCRIPTION" "$COMPLETION_SUBSCRIPTION"; do
  if exists pubsub subscriptions describe "$subscription" --format='value(name)' || ((DRY_RUN)); then
    mutate pubsub subscriptions delete "$subscription"
  fi
done
for topic in "$BOOTSTRAP_REQUESTS_TOPIC" "$COMPLETION_TOPIC" "$BOOTSTRAP_DEAD_LETTER_TOPIC"; do
  if exists pubsub topics describe "$topic" --format='value(name)' || ((DRY_RUN)); then
    mutate pubsub topics delete "$topic"
  fi
done

# 4. Grants on the project, on the kept buckets and in the kept datasets' access lists (those on
# the topics, subscriptions and service went with them), the custom roles, the accounts.
remove_binding projects "$P" "$JOBS_ROLE" "serviceAccount:$RUNTIME_SA"
# Granted on the project by earlier versions of deploy.sh.
remove_binding projects "$P" "$CUSTOM_ROLE" "serviceAccount:$RUNTIME_SA"
remove_binding projects "$P" roles/bigquery.jobUser "serviceAccount:$RUNTIME_SA"
remove_binding projects "$P" roles/eventarc.eventReceiver "serviceAccount:$TRIGGER_SA"
remove_binding projects "$P" roles/cloudbuild.builds.builder "serviceAccount:$BUILD_SA"
if ((!DELETE_BUCKETS)); then
  for grant in "$BOOTSTRAP_SCHEMA_BUCKET roles/storage.objectViewer" \
    "$BOOTSTRAP_STATE_BUCKET roles/storage.objectUser"; do
    read -r bucket role <<<"$grant"
    if exists storage buckets describe "gs://$bucket" --format='value(name)' || ((DRY_RUN)); then
      remove_binding "storage buckets" "gs://$bucket" "$role" "serviceAccount:$RUNTIME_SA"
    fi
  done
fi

# The runtime account's entries in the datasets that are kept (whatever roles they name: also an
# OWNER entry left by a function that created the dataset itself).
DRY_RUN_ROLES="<the roles $RUNTIME_SA holds there>"
for grant in "$DELETE_DATASET $BOOTSTRAP_DATASET" "$DELETE_BACKUPS $BOOTSTRAP_BACKUP_DATASET"; do
  read -r deleted dataset <<<"$grant"
  if ((!deleted)) && { describe_dataset "$dataset" || ((DRY_RUN)); }; then
    set_access "$dataset"
  fi
done

for role in "${CUSTOM_ROLE_IDS[@]}"; do
  if exists iam roles describe "$role" --project="$P" --format='value(deleted)' || ((DRY_RUN)); then
    if [[ $OUT != True ]]; then
      # A deleted custom role can be undeleted for 7 days; deploy.sh does so if run again.
      mutate iam roles delete "$role" --project="$P"
    fi
  fi
done

for account in "$RUNTIME_SA" "$TRIGGER_SA" "$BUILD_SA"; do
  if exists iam service-accounts describe "$account" --format='value(email)' || ((DRY_RUN)); then
    mutate iam service-accounts delete "$account"
  fi
done

# 5. Data: only when asked.
for bucket in "$BOOTSTRAP_SCHEMA_BUCKET" "$BOOTSTRAP_STATE_BUCKET"; do
  if ((DELETE_BUCKETS)); then
    if exists storage buckets describe "gs://$bucket" --format='value(name)' || ((DRY_RUN)); then
      mutate storage rm --recursive --all-versions "gs://$bucket"
    fi
  else
    log "kept gs://$bucket (pass --delete-buckets to delete it with every object version)"
  fi
done

if ((DELETE_DATASET)); then
  delete_dataset "$BOOTSTRAP_DATASET"
else
  log "kept dataset $P:$BOOTSTRAP_DATASET (pass --delete-dataset to delete it and its tables)"
fi
if ((DELETE_BACKUPS)); then
  delete_dataset "$BOOTSTRAP_BACKUP_DATASET"
else
  log "kept dataset $P:$BOOTSTRAP_BACKUP_DATASET (pass --delete-backups to delete it)"
fi

log "done"
