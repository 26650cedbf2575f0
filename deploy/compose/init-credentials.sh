#!/bin/sh
# Creates the random credentials of the compose deployment (run by the `credentials` service): one
# file per secret, in the volume of the containers that use it (mounted at /credentials/<volume>).
# A file that exists is kept, so the servers keep the credentials they were set up with; delete
# the volumes (`docker compose down -v`) for new ones. Nothing is printed but the files' names.
set -eu

# create FILE: a random hex secret (hex: no quoting needed in URLs, JSON or ini files) in FILE,
# readable by the non-root users of the containers that mount its volume, unless FILE exists.
create() {
    if [ -s "$1" ]; then
        return
    fi
    secret="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s\n' "$secret" >"$1.new"
    chmod 0444 "$1.new"
    mv "$1.new" "$1"
    echo "created $1"
}

create /credentials/minio-root/password
create /credentials/couchdb-admin/password
create /credentials/services/s3-service-secret-key
create /credentials/services/couchdb-service-password
create /credentials/gateway/s3-secret-key
create /credentials/gateway/admin-token
create /credentials/grafana/admin-password
