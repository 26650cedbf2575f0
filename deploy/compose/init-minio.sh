#!/bin/sh
# Prepares MinIO for Prism (run by the minio-init service, minio/mc image): the two buckets, the
# upload notification to Kafka, the services' own user, allowed into those buckets only, and the
# gateway's, which also writes uploads into the input bucket. The same script prepares RustFS
# (deploy/compose/rustfs.yaml), which serves MinIO's admin API and takes the notification binding
# as an S3 queue configuration; only the notification target's ARN differs.
# Idempotent. The mc image is minimal (no grep or cat), so only shell built-ins and mc are used.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD_FILE:?}" "${PRISM_S3__ENDPOINT:?}"
: "${PRISM_INPUT_BUCKET:?}" "${PRISM_OUTPUT_BUCKET:?}"
: "${SERVICE_ACCESS_KEY_ID:?}" "${SERVICE_SECRET_ACCESS_KEY_FILE:?}"
: "${GATEWAY_ACCESS_KEY_ID:?}" "${GATEWAY_SECRET_ACCESS_KEY_FILE:?}"
: "${PRISM_NOTIFY_ARN:?}"

# The secrets are files (the credentials service writes them); read with the shell's own `read`.
read -r root_password <"$MINIO_ROOT_PASSWORD_FILE"
read -r service_secret_key <"$SERVICE_SECRET_ACCESS_KEY_FILE"
read -r gateway_secret_key <"$GATEWAY_SECRET_ACCESS_KEY_FILE"

# The server's Kafka notification target: arn:minio:sqs::PRISM:kafka for MinIO's
# MINIO_NOTIFY_KAFKA_*_PRISM (compose.yaml), arn:rustfs:sqs:us-east-1:prism:kafka for RustFS's
# RUSTFS_NOTIFY_KAFKA_*_PRISM (deploy/compose/rustfs.yaml).
notify_arn="$PRISM_NOTIFY_ARN"

mc alias set local "$PRISM_S3__ENDPOINT" "$MINIO_ROOT_USER" "$root_password" >/dev/null

mc mb --ignore-existing "local/$PRISM_INPUT_BUCKET" "local/$PRISM_OUTPUT_BUCKET"

existing_events="$(mc event list "local/$PRISM_INPUT_BUCKET" "$notify_arn")"
case "$existing_events" in
    *"$notify_arn"*) echo "notification $notify_arn already on $PRISM_INPUT_BUCKET" ;;
    *) mc event add "local/$PRISM_INPUT_BUCKET" "$notify_arn" --event put ;;
esac

# grant POLICY USER SECRET EXTRA_STATEMENT: creates POLICY (read uploads, write outputs, plus
# EXTRA_STATEMENT when not empty) and USER with it. Adding an existing user sets its secret, so a
# changed secret file takes effect on the next run.
grant() {
    policy_file="/tmp/$1-policy.json"
    printf '%s\n' '{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::'"$PRISM_INPUT_BUCKET"'", "arn:aws:s3:::'"$PRISM_OUTPUT_BUCKET"'"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject"],
      "Resource": ["arn:aws:s3:::'"$PRISM_INPUT_BUCKET"'/*"]
    },'"$4"'
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::'"$PRISM_OUTPUT_BUCKET"'/*"]
    }
  ]
}' >"$policy_file"
    mc admin policy create local "$1" "$policy_file"
    mc admin user add local "$2" "$3"
    if ! attach_output="$(mc admin policy attach local "$1" --user "$2" 2>&1)"; then
        case "$attach_output" in
            *"already in effect"*) echo "policy $1 already attached to $2" ;;
            *) printf '%s\n' "$attach_output" >&2; exit 1 ;;
        esac
    fi
}

# The workers: read uploads, write outputs, nothing else; they never hold the root credentials.
grant prism-service "$SERVICE_ACCESS_KEY_ID" "$service_secret_key" ""
# The gateway also stores uploads (streamed as multipart uploads) in the input bucket.
grant prism-gateway "$GATEWAY_ACCESS_KEY_ID" "$gateway_secret_key" '
    {
      "Effect": "Allow",
      "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::'"$PRISM_INPUT_BUCKET"'/*"]
    },'
