# shellcheck shell=bash
# deploy/steps.sh: the steps of deploy.sh, one function each, in the order deploy.sh runs them,
# each with the helpers only it uses. Sourced by deploy.sh (after lib.sh), never run. A file of its
# own rather than part of lib.sh: lib.sh holds what deploy.sh and teardown.sh share and is long
# enough already; these are deploy.sh's alone. Each step reads the settings deploy.sh resolved
# (P, R and the BOOTSTRAP_* variables) and what earlier steps set, as noted above each one.
# Written for bash 3.2 and later, like lib.sh. Over 400 lines: these steps are the whole list of
# what a deployment is, and cut in two the list would be too.

# ---------------------------------------------------------------------------------------------
# 1. APIs

APIS=(
  artifactregistry.googleapis.com bigquery.googleapis.com cloudbuild.googleapis.com
  cloudfunctions.googleapis.com cloudresourcemanager.googleapis.com eventarc.googleapis.com
  iam.googleapis.com logging.googleapis.com pubsub.googleapis.com run.googleapis.com
  storage.googleapis.com
)

enable_apis() {
  local missing=() api
  query services list --enabled --format='value(config.name)'
  for api in "${APIS[@]}"; do
    grep -Fxq "$api" <<<"$OUT" || missing+=("$api")
  done
  if ((${#missing[@]})); then
    mutate services enable "${missing[@]}"
  fi
}

# read_project_number: sets PROJECT_NUMBER, PUBSUB_AGENT and EVENTARC_AGENT.
read_project_number() {
  query projects describe "$P" --format='value(projectNumber)'
  PROJECT_NUMBER=$OUT
  if ((DRY_RUN)); then
    PROJECT_NUMBER='<PROJECT_NUMBER>'
  fi
  [[ -n $PROJECT_NUMBER ]] || die "could not read the number of project $P"
  PUBSUB_AGENT="service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
  EVENTARC_AGENT="service-${PROJECT_NUMBER}@gcp-sa-eventarc.iam.gserviceaccount.com"
}

# The datasets are read here, before anything but the APIs has been changed, so that one in
# another location stops the run cleanly. ensure_datasets creates those that are missing (from
# what describe_dataset left in $WORK).
check_dataset_locations() {
  local dataset
  for dataset in "$BOOTSTRAP_DATASET" "$BOOTSTRAP_BACKUP_DATASET"; do
    if describe_dataset "$dataset" && [[ $(lower "$DATASET_LOCATION") != $(lower "$BOOTSTRAP_LOCATION") ]]; then
      die "dataset $P:$dataset exists in $DATASET_LOCATION, not in $BOOTSTRAP_LOCATION (--location," \
        "BOOTSTRAP_LOCATION): deploy with --location $DATASET_LOCATION, or name other datasets" \
        "(--dataset, --backup-dataset). Nothing was changed but the enabled APIs."
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# 2. Identities and their grants

ensure_service_account() { # EMAIL DISPLAY-NAME DESCRIPTION
  if ! exists iam service-accounts describe "$1" --format='value(email)'; then
    mutate iam service-accounts create "${1%%@*}" --display-name="$2" --description="$3"
  fi
}

ensure_service_accounts() {
  ensure_service_account "$RUNTIME_SA" "$BOOTSTRAP_FUNCTION runtime" \
    "Identity of the $BOOTSTRAP_FUNCTION function: BigQuery, schema and state buckets, completion topic"
  ensure_service_account "$TRIGGER_SA" "$BOOTSTRAP_FUNCTION triggers" \
    "Identity of the Eventarc triggers that invoke $BOOTSTRAP_FUNCTION"
  ensure_service_account "$BUILD_SA" "$BOOTSTRAP_FUNCTION build" \
    "Identity of the Cloud Build runs that build $BOOTSTRAP_FUNCTION"
}

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

ensure_custom_roles() {
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
}

# No BigQuery role on the project but the jobs role, and that only with --allow-destructive.
# Earlier versions of this script granted the first custom role and roles/bigquery.jobUser on
# the project: an upgrade takes them back.
ensure_project_grants() {
  remove_binding projects "$P" "$CUSTOM_ROLE" "serviceAccount:$RUNTIME_SA"
  remove_binding projects "$P" roles/bigquery.jobUser "serviceAccount:$RUNTIME_SA"
  if [[ $ALLOW_DESTRUCTIVE == true ]]; then
    ensure_binding projects "$P" "$JOBS_ROLE" "serviceAccount:$RUNTIME_SA"
  else
    remove_binding projects "$P" "$JOBS_ROLE" "serviceAccount:$RUNTIME_SA"
  fi
  ensure_binding projects "$P" roles/eventarc.eventReceiver "serviceAccount:$TRIGGER_SA"
  ensure_binding projects "$P" roles/cloudbuild.builds.builder "serviceAccount:$BUILD_SA"
}

# Google's service agents. Pub/Sub's and Eventarc's hold their service-agent role on the project
# once they exist; create them only if they do not. Reads PUBSUB_AGENT and EVENTARC_AGENT.
ensure_service_agents() {
  local storage_agent
  if ! has_binding projects "$P" roles/pubsub.serviceAgent "serviceAccount:$PUBSUB_AGENT"; then
    mutate beta services identity create --service=pubsub.googleapis.com --project="$P"
  fi
  if ! has_binding projects "$P" roles/eventarc.serviceAgent "serviceAccount:$EVENTARC_AGENT"; then
    mutate beta services identity create --service=eventarc.googleapis.com --project="$P"
  fi
  query storage service-agent
  storage_agent=$OUT
  if ((DRY_RUN)); then
    storage_agent="service-${PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
  fi
  [[ -n $storage_agent ]] || die "could not read the Cloud Storage service agent of project $P"
  # Eventarc's Cloud Storage triggers: the bucket's notifications are published by this agent.
  ensure_binding projects "$P" roles/pubsub.publisher "serviceAccount:$storage_agent"
  # Push subscriptions sign their requests as the trigger account; projects whose Pub/Sub agent
  # predates April 2021 need this grant for it (on this one account, not the project).
  ensure_binding "iam service-accounts" "$TRIGGER_SA" roles/iam.serviceAccountTokenCreator \
    "serviceAccount:$PUBSUB_AGENT"
}

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

# After check_dataset_locations.
ensure_datasets() {
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
}

# ---------------------------------------------------------------------------------------------
# 4. Topics and the subscriptions that keep their messages readable

ensure_pull_subscription() { # SUBSCRIPTION TOPIC
  if ! exists pubsub subscriptions describe "$1" --format='value(name)'; then
    mutate pubsub subscriptions create "$1" --topic="$2" \
      --message-retention-duration=7d --expiration-period=never
  fi
}

# Reads REQUESTERS and PUBSUB_AGENT.
ensure_topics() {
  local topic requester
  for topic in "$BOOTSTRAP_REQUESTS_TOPIC" "$COMPLETION_TOPIC" "$BOOTSTRAP_DEAD_LETTER_TOPIC"; do
    if ! exists pubsub topics describe "$topic" --format='value(name)'; then
      mutate pubsub topics create "$topic"
    fi
  done

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
}

# ---------------------------------------------------------------------------------------------
# 5. Buckets
#
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

# ensure_buckets: sets SCHEMA_BUCKET_LOCATION (lower case) and SCHEMA_DIGEST_LABEL.
ensure_buckets() {
  ensure_bucket "$BOOTSTRAP_SCHEMA_BUCKET"
  SCHEMA_BUCKET_LOCATION=$(lower "$BUCKET_LOCATION")
  SCHEMA_DIGEST_LABEL=$BUCKET_DIGEST_LABEL
  ensure_bucket "$BOOTSTRAP_STATE_BUCKET"

  ensure_binding "storage buckets" "gs://$BOOTSTRAP_SCHEMA_BUCKET" roles/storage.objectViewer \
    "serviceAccount:$RUNTIME_SA"
  ensure_binding "storage buckets" "gs://$BOOTSTRAP_STATE_BUCKET" roles/storage.objectUser \
    "serviceAccount:$RUNTIME_SA"
}

# ---------------------------------------------------------------------------------------------
# 6. Seed the schema bucket from schemas/ with the project's own sync (it validates every file
# first and uploads nothing if one is invalid). Skipped while schemas/ is what was last synced,
# so a second run neither re-uploads (each upload is a new generation and a new event) nor
# overwrites schemas uploaded to the bucket since.

# Reads SKIP_SYNC, SCHEMA_SOURCE and SCHEMA_DIGEST_LABEL.
sync_schemas() {
  local schema_digest sync
  if ((SKIP_SYNC)); then
    log "schema sync skipped (--skip-schema-sync)"
    return 0
  fi
  [[ -d $ROOT/schemas ]] || die "$ROOT/schemas not found: nothing to seed the schema bucket with"
  schema_digest=$(
    cd "$ROOT" || exit
    find schemas -type f ! -name '.*' | LC_ALL=C sort | while IFS= read -r f; do
      printf '%s %s\n' "$(sha256 <"$f")" "$f"
    done | sha256 | cut -c1-40
  )
  if [[ $SCHEMA_DIGEST_LABEL == "$schema_digest" ]]; then
    log "schema bucket already holds schemas/ (digest $schema_digest): not synced again"
    return 0
  fi
  # Seeding happens before the upload trigger exists: nothing to plan, and the deploying
  # account need not read BigQuery.
  sync=("$PYTHON" -m function sync --from schemas --to "$SCHEMA_SOURCE" --skip-plan)
  if ((DRY_RUN)); then
    quote_cmd "${sync[@]}"
  else
    log "+ $(quote_cmd "${sync[@]}")"
    (cd "$ROOT" && GOOGLE_CLOUD_PROJECT=$P "${sync[@]}" >&2) ||
      die "the schema sync failed (nothing is uploaded while any schema is invalid): fix schemas/ and run again"
  fi
  mutate storage buckets update "gs://$BOOTSTRAP_SCHEMA_BUCKET" \
    --update-labels="schema_digest=$schema_digest"
}

# ---------------------------------------------------------------------------------------------
# 7. The function, with its Pub/Sub trigger on the requests topic. Redeployed only when the hash
# of what would be uploaded (the same .gcloudignore rules as the deploy) and of every deploy
# setting changed, or with --force-redeploy. The source path is left out of the hash: another
# clone of the same commit is no change.

# deploy_function: reads FUNCTION_ENV and FORCE_REDEPLOY; sets SERVICE (the function's Cloud Run
# service) and FUNCTION_TRIGGER (its Eventarc trigger).
deploy_function() {
  local env_vars deploy_args upload_files needed deploy_hash state hash deployed=0
  local fields="value[separator='|'](state,labels.deploy_hash,serviceConfig.service,eventTrigger.trigger)"
  # No value holds a comma: deploy.sh's checks refuse any that would.
  env_vars=$(
    IFS=,
    printf '%s' "${FUNCTION_ENV[*]}"
  )
  deploy_args=(
    functions deploy "$BOOTSTRAP_FUNCTION" --gen2 --region="$R"
    --runtime="$BOOTSTRAP_RUNTIME" --entry-point=bootstrap
    --trigger-topic="$BOOTSTRAP_REQUESTS_TOPIC" --retry
    --service-account="$RUNTIME_SA" --trigger-service-account="$TRIGGER_SA"
    --build-service-account="projects/$P/serviceAccounts/$BUILD_SA"
    --memory="$BOOTSTRAP_MEMORY" --max-instances="$BOOTSTRAP_MAX_INSTANCES"
    --timeout="$BOOTSTRAP_TIMEOUT" --ingress-settings="$BOOTSTRAP_INGRESS"
    --no-allow-unauthenticated --serve-all-traffic-latest-revision
    --set-env-vars="$env_vars"
  )

  if ((DRY_RUN)); then
    quote_cmd gcloud meta list-files-for-upload "$ROOT"
    deploy_hash='<hash of the upload set and settings>'
  else
    upload_files=$(cd "$ROOT" && gcloud meta list-files-for-upload .) ||
      die "gcloud meta list-files-for-upload failed in $ROOT"
    for needed in main.py requirements.txt; do
      grep -Fxq "$needed" <<<"$upload_files" ||
        die "$needed is not in the upload set: check $ROOT/.gcloudignore"
    done
    deploy_hash=$(
      cd "$ROOT" || exit
      {
        printf '%s\n' "${deploy_args[@]}"
        LC_ALL=C sort <<<"$upload_files" | while IFS= read -r f; do
          printf '%s %s\n' "$(sha256 <"$f")" "$f"
        done
      } | sha256 | cut -c1-40
    )
  fi

  if exists functions describe "$BOOTSTRAP_FUNCTION" --region="$R" --format="$fields"; then
    IFS='|' read -r state hash _ _ <<<"$OUT"
    if [[ $state == ACTIVE && $hash == "$deploy_hash" ]] && ((!FORCE_REDEPLOY)); then
      log "function $BOOTSTRAP_FUNCTION is ACTIVE with this source and these settings: not redeployed"
    else
      deployed=1
    fi
  else
    deployed=1
  fi
  if ((deployed)); then
    mutate "${deploy_args[@]}" --source="$ROOT" --update-labels="deploy_hash=$deploy_hash"
  fi
  query functions describe "$BOOTSTRAP_FUNCTION" --region="$R" --format="$fields"
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
}

# ---------------------------------------------------------------------------------------------
# 8. Schema uploads: an Eventarc Cloud Storage trigger to the same service. (A gen2 function has
# one trigger of its own; this second one targets its Cloud Run service.) It must live where the
# bucket lives.

STORAGE_EVENT=google.cloud.storage.object.v1.finalized

# Reads SERVICE and SCHEMA_BUCKET_LOCATION.
ensure_schema_trigger() {
  local trigger_hash trigger_args
  trigger_hash=$(
    printf '%s\n' "$BOOTSTRAP_SCHEMA_BUCKET" "$SERVICE" "$R" "$TRIGGER_SA" "$STORAGE_EVENT" |
      sha256 | cut -c1-40
  )
  trigger_args=(
    --location="$SCHEMA_BUCKET_LOCATION"
    --destination-run-service="$SERVICE" --destination-run-region="$R"
    --event-filters="type=$STORAGE_EVENT" --event-filters="bucket=$BOOTSTRAP_SCHEMA_BUCKET"
    --service-account="$TRIGGER_SA"
  )
  if exists eventarc triggers describe "$STORAGE_TRIGGER" --location="$SCHEMA_BUCKET_LOCATION" \
    --format='value(labels.deploy_hash)'; then
    if [[ $OUT != "$trigger_hash" ]]; then
      mutate_retry eventarc triggers update "$STORAGE_TRIGGER" "${trigger_args[@]}" \
        --update-labels="deploy_hash=$trigger_hash"
    fi
  else
    # Retried: the grants above can take a minute to reach Eventarc and Cloud Storage.
    mutate_retry eventarc triggers create "$STORAGE_TRIGGER" "${trigger_args[@]}" \
      --labels="deploy_hash=$trigger_hash"
  fi
}

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

# Reads FUNCTION_TRIGGER and SCHEMA_BUCKET_LOCATION.
ensure_dead_lettering() {
  ensure_dead_letter requests "$FUNCTION_TRIGGER"
  ensure_dead_letter schema-upload "$STORAGE_TRIGGER" --location="$SCHEMA_BUCKET_LOCATION"
}
