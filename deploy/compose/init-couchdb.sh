#!/bin/sh
# Prepares CouchDB for Prism (run by the couchdb-init service, in the couchdb image for its curl):
# the system databases a single node needs, Prism's database, and the services' own user, admin of
# that database only. Idempotent; a re-run sets the service user's password from its file again.
set -eu

: "${COUCHDB_ADMIN_USER:?}" "${COUCHDB_ADMIN_PASSWORD_FILE:?}" "${PRISM_COUCHDB__URL:?}"
: "${PRISM_COUCHDB__DATABASE:?}" "${PRISM_COUCHDB__USERNAME:?}" "${PRISM_COUCHDB__PASSWORD_FILE:?}"

# The passwords are files (the credentials service writes them).
read -r admin_password <"$COUCHDB_ADMIN_PASSWORD_FILE"
service_user="$PRISM_COUCHDB__USERNAME"
read -r service_password <"$PRISM_COUCHDB__PASSWORD_FILE"
# Both are written into JSON below as they are: refuse the characters that would need escaping.
for value in "$service_user" "$service_password"; do
    case "$value" in
        *'"'* | *\\*)
            echo "the CouchDB service user name and password must not contain \" or \\" >&2
            exit 1
            ;;
    esac
done

response=/tmp/couchdb-response

# Prints the HTTP status; the body is left in $response.
couch() {
    method="$1"
    path="$2"
    shift 2
    rm -f "$response"
    curl -sS -o "$response" -w '%{http_code}' -X "$method" -H 'Content-Type: application/json' \
        -u "$COUCHDB_ADMIN_USER:$admin_password" "$@" "$PRISM_COUCHDB__URL/$path"
}

# expect STATUS WHAT ALLOWED...: stop with CouchDB's answer unless STATUS is one of ALLOWED.
expect() {
    status="$1"
    what="$2"
    shift 2
    case " $* " in
        *" $status "*) ;;
        *)
            echo "$what: unexpected HTTP $status" >&2
            if [ -f "$response" ]; then sed 's/^/  /' "$response" >&2; fi
            exit 1
            ;;
    esac
}

# 412: the database already exists.
for database in _users _replicator "$PRISM_COUCHDB__DATABASE"; do
    expect "$(couch PUT "$database")" "create database $database" 201 202 412
done

user_path="_users/org.couchdb.user:$service_user"
status="$(couch GET "$user_path")"
expect "$status" "read user $service_user" 200 404
revision_field=""
if [ "$status" = 200 ]; then
    revision="$(sed -n 's/.*"_rev" *: *"\([^"]*\)".*/\1/p' "$response")"
    revision_field="\"_rev\": \"$revision\", "
fi
expect "$(couch PUT "$user_path" --data \
    "{$revision_field\"name\": \"$service_user\", \"password\": \"$service_password\", \"roles\": [], \"type\": \"user\"}")" \
    "write user $service_user" 201 202

# Database admin (not server admin): the services may create their indexes and design documents.
expect "$(couch PUT "$PRISM_COUCHDB__DATABASE/_security" --data \
    "{\"admins\": {\"names\": [\"$service_user\"], \"roles\": []}, \"members\": {\"names\": [\"$service_user\"], \"roles\": []}}")" \
    "set security of $PRISM_COUCHDB__DATABASE" 200

echo "CouchDB ready: database $PRISM_COUCHDB__DATABASE, user $service_user"
