#!/usr/bin/env bash
# Runs Prism's real servers natively on 127.0.0.1 (installed by install.sh):
#   kafka    Tansu broker            ${PRISM_KAFKA_PORT:-9092}
#   s3       Garage S3 API           ${PRISM_S3_PORT:-9000}  (RPC ${PRISM_S3_RPC_PORT:-3901}), data in $PRISM_HOME/run/s3
#   couchdb  pouchdb-server          ${PRISM_COUCHDB_PORT:-5984}, data in $PRISM_HOME/run/couchdb
#
# Usage: servers.sh start|stop|restart|status [NAME...]   (no NAME: all three)
#        servers.sh kill [-SIGNAL] NAME...                 (fault tests: kill -9 s3, kill -STOP kafka)
#        servers.sh env                                    (export lines for clients: eval "$(servers.sh env)";
#                                                           AWS_ENDPOINT_URL lets aws/boto3 find S3 unaided)
#        servers.sh log NAME                               (last lines of its log)
#
# A private set beside the shared one (the fault test kills and restarts its own):
# PRISM_RUN_DIR=DIR plus other ports in PRISM_KAFKA_PORT, PRISM_S3_PORT,
# PRISM_S3_RPC_PORT and PRISM_COUCHDB_PORT.
#
# Kafka storage: PRISM_KAFKA_STORAGE=memory (default; a restart loses every
# topic) or s3 (topics kept in the Garage bucket prism-kafka, so they survive
# a broker restart; needs s3 up first).
#
# Quirks worth knowing:
# - Tansu: a new consumer group's first join waits about session.timeout.ms/2;
#   use session.timeout.ms=6000 in tests. Create topics with the admin API
#   before subscribing. Debian's kcat is too old to talk to it.
#   With partition.assignment.strategy=cooperative-sticky a member joining a
#   running group gets no partitions and a leaving member's partitions are
#   never reassigned (their messages stay unconsumed); range,roundrobin works.
#   A member that leaves while a rebalance started by a joiner is under way can
#   leave the group with no consumer for good (seen 2 runs in 8; in tansu-broker
#   0.6.0's source a leader that leaves a forming group stays its leader). The
#   crates.io 0.6.0 build, even with that fixed, fails our fault test (a member
#   replacing a killed one gets no partitions); this wheel's build passes it.
#   So tests scale a group one step at a time.
# - Tansu 0.6 with PRISM_KAFKA_STORAGE=s3 keeps the topics across a restart
#   but not the partitions' offsets: new messages are numbered from 0 again,
#   below what consumers committed. Idempotent producers also break within
#   seconds (OutOfOrderSequenceNumber, then ProducerFenced) and producers
#   starting together may get the same producer id. So the fault test freezes
#   the broker (kill -STOP, kill -CONT) instead of restarting it.
# - Garage: the access key must look like GK + 24 hex digits (secrets.env has
#   one). CreateBucket on an existing bucket answers BucketAlreadyOwnedByYou
#   (409), like MinIO. PutObject ignores If-None-Match: * (it overwrites).
#   HEAD without a stored Content-Type returns none (S3 says
#   binary/octet-stream). A wrong secret gets AccessDenied, not
#   SignatureDoesNotMatch (both 403).
# - pouchdb-server: new databases are open to anyone until their _security
#   names members (CouchDB 3 makes them admin-only); _find ignores _security;
#   an anonymous PUT /newdb crashes the process (a bug in 4.2.0), and so would
#   an anonymous DELETE /db without --unhandled-rejections=warn, used below.
#   require_valid_user is not supported. A document PUT without
#   Content-Type: application/json is stored with an empty body.
set -euo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ALL_SERVERS=(s3 couchdb kafka) # start order: Kafka may keep its data in S3
START_TIMEOUT="${PRISM_SERVER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${PRISM_SERVER_STOP_TIMEOUT:-10}"
KAFKA_STORAGE="${PRISM_KAFKA_STORAGE:-memory}"
KAFKA_BUCKET=prism-kafka
GARAGE_CONFIG="$RUN_DIR/s3/garage.toml"

usage() {
    sed -n '/^# Usage:/,/^# *$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

port_of() {
    case $1 in
        kafka) echo "$KAFKA_PORT" ;;
        s3) echo "$S3_PORT" ;;
        couchdb) echo "$COUCHDB_PORT" ;;
        *) die "unknown server '$1' (known: ${ALL_SERVERS[*]})" ;;
    esac
}

pid_file() { echo "$PID_DIR/$1.pid"; }
log_file() { echo "$LOG_DIR/$1.log"; }

# The pid of NAME when the process in its pid file is alive and is that
# server (a recycled pid belongs to someone else).
running_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f $file ]] || return 1
    pid="$(<"$file")"
    [[ -r /proc/$pid/cmdline ]] || return 1
    case $1 in
        kafka) tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$TANSU_BIN broker" ;;
        s3) tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$GARAGE_BIN -c $GARAGE_CONFIG server" ;;
        couchdb) tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$POUCHDB_MAIN" ;;
    esac || return 1
    echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

probe() { "$VENV/bin/python" "$LOCAL_DIR/probe.py" "$@"; }

garage() { NO_COLOR=1 "$GARAGE_BIN" -c "$GARAGE_CONFIG" "$@"; }

write_garage_config() {
    mkdir -p "$RUN_DIR/s3/meta" "$RUN_DIR/s3/data"
    (
        umask 077
        cat >"$GARAGE_CONFIG" <<EOF
metadata_dir = "$RUN_DIR/s3/meta"
data_dir = "$RUN_DIR/s3/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$S3_RPC_PORT"
rpc_public_addr = "127.0.0.1:$S3_RPC_PORT"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.localhost"
EOF
    )
}

# pouchdb-server rewrites its config with hashed admin passwords, so it is
# written afresh from secrets.env on every start.
write_couchdb_config() {
    mkdir -p "$RUN_DIR/couchdb/data"
    (
        umask 077
        "$VENV/bin/python" - >"$RUN_DIR/couchdb/config.json" <<EOF
import json, os
print(json.dumps({
    "admins": {os.environ["PRISM_COUCHDB__USERNAME"]: os.environ["PRISM_COUCHDB__PASSWORD"]},
    "log": {"file": "$RUN_DIR/couchdb/pouchdb-server.log"},
}, indent=2))
EOF
    )
}

# Runs a server in its own session, detached from any terminal, with all
# output in its log, so that a caller reading our output never waits on it.
launch() {
    local name=$1 dir=$2
    shift 2
    local log
    log="$(log_file "$name")"
    printf '\n==== %s starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
    (cd "$dir" && exec setsid "$@" </dev/null >>"$log" 2>&1 8>&- 9>&-) &
    echo $! >"$(pid_file "$name")"
}

launch_kafka() {
    local storage=memory://tansu/
    if [[ $KAFKA_STORAGE == s3 ]]; then
        running_pid s3 >/dev/null || die "PRISM_KAFKA_STORAGE=s3 needs the s3 server: servers.sh start s3"
        garage bucket info "$KAFKA_BUCKET" >/dev/null 2>&1 || garage bucket create "$KAFKA_BUCKET" >/dev/null
        garage bucket allow --read --write --owner "$KAFKA_BUCKET" --key "$AWS_ACCESS_KEY_ID" >/dev/null
        storage="s3://$KAFKA_BUCKET/"
    elif [[ $KAFKA_STORAGE != memory ]]; then
        die "PRISM_KAFKA_STORAGE must be memory or s3, not '$KAFKA_STORAGE'"
    fi
    local url="tcp://127.0.0.1:$KAFKA_PORT"
    AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_DEFAULT_REGION=us-east-1 \
        launch kafka "$RUN_DIR" "$TANSU_BIN" broker --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine "$storage"
}

launch_s3() {
    write_garage_config
    launch s3 "$RUN_DIR/s3" env NO_COLOR=1 "$GARAGE_BIN" -c "$GARAGE_CONFIG" server
}

launch_couchdb() {
    write_couchdb_config
    launch couchdb "$RUN_DIR/couchdb" node --unhandled-rejections=warn "$POUCHDB_MAIN" \
        --host 127.0.0.1 --port "$COUCHDB_PORT" --dir data --config config.json --no-color
}

# A fresh Garage node has no storage role and knows no key: give it both.
# Safe to repeat; the marker names the node so a wiped meta dir is redone.
# Called as `bootstrap_garage || ...`, where set -e is off: every step checks.
bootstrap_garage() {
    local deadline=$((SECONDS + START_TIMEOUT)) node_id keys
    until node_id="$(garage node id -q 2>/dev/null)"; do
        ((SECONDS < deadline)) && running_pid s3 >/dev/null || return 1
        sleep 0.2
    done
    node_id="${node_id%%@*}"
    local marker="$RUN_DIR/s3/layout-applied"
    if [[ ! -f $marker || "$(<"$marker")" != "$node_id" ]]; then
        garage layout assign -z local -c 10G "$node_id" >/dev/null || return 1
        local version
        version="$(garage layout show | sed -n 's/.*apply --version \([0-9]*\).*/\1/p' | head -n1)"
        garage layout apply --version "${version:-1}" >/dev/null || return 1
        echo "$node_id" >"$marker"
    fi
    # Right after a restart the key table may not answer yet.
    until keys="$(garage key list 2>/dev/null)"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    if ! grep -q "^$AWS_ACCESS_KEY_ID " <<<"$keys"; then
        garage key import --yes -n prism-local "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null || return 1
    fi
    garage key allow --create-bucket "$AWS_ACCESS_KEY_ID" >/dev/null
}

# Shows why NAME is not ready; a server this call launched is stopped again,
# one that was already running (perhaps paused on purpose) is left alone.
fail_start() {
    local name=$1 launched=$2 log
    log="$(log_file "$name")"
    say "$name did not become ready; last lines of $log:"
    tail -n 40 "$log" >&2 || true
    if [[ $launched == yes ]]; then
        stop_one "$name" >/dev/null 2>&1 || true
    fi
    die "$name is not ready"
}

start_one() {
    local name=$1 pid port launched=no
    port="$(port_of "$name")"
    if pid="$(running_pid "$name")"; then
        say "$name already running (pid $pid) on 127.0.0.1:$port"
    else
        rm -f "$(pid_file "$name")"
        port_in_use "$port" && die "port $port is taken by a process servers.sh did not start; stop it or set PRISM_${name^^}_PORT"
        say "starting $name on 127.0.0.1:$port (log: $(log_file "$name"))"
        "launch_$name"
        launched=yes
        pid="$(<"$(pid_file "$name")")"
        if [[ $name == s3 ]]; then
            bootstrap_garage || fail_start s3 yes
        fi
    fi
    probe ready "$name" --pid "$pid" --timeout "$START_TIMEOUT" || fail_start "$name" "$launched"
}

stop_one() {
    local name=$1 pid
    if ! pid="$(running_pid "$name")"; then
        rm -f "$(pid_file "$name")"
        say "$name is not running"
        return
    fi
    say "stopping $name (pid $pid)"
    signal_and_wait "$name" "$pid" TERM "$STOP_TIMEOUT" || signal_and_wait "$name" "$pid" KILL 5 ||
        die "$name (pid $pid) survived SIGKILL"
    rm -f "$(pid_file "$name")"
}

# Sends SIGNAL and waits up to TIMEOUT seconds for the process to be gone.
signal_and_wait() {
    local name=$1 pid=$2 signal=$3 timeout=$4
    kill "-$signal" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null; do
        # A killed child of this shell stays a zombie until reaped by init;
        # a zombie has already released its ports.
        [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# A server that just exited may hold its port a moment longer.
wait_port_free() {
    local port deadline=$((SECONDS + STOP_TIMEOUT))
    port="$(port_of "$1")"
    while port_in_use "$port" && ((SECONDS < deadline)); do
        sleep 0.1
    done
}

kill_cmd() {
    local signal=TERM
    if [[ ${1:-} == -* ]]; then
        signal="${1#-}"
        shift
    fi
    (($#)) || usage
    local name pid
    for name in "$@"; do
        port_of "$name" >/dev/null
        pid="$(running_pid "$name")" || die "$name is not running"
        say "sending SIG${signal#SIG} to $name (pid $pid)"
        case ${signal#SIG} in
            STOP | CONT | TSTP) kill "-$signal" "$pid" ;; # paused or resumed, not gone
            *)
                signal_and_wait "$name" "$pid" "$signal" "$STOP_TIMEOUT" || die "$name (pid $pid) still alive after SIG$signal"
                rm -f "$(pid_file "$name")"
                ;;
        esac
    done
}

status_cmd() {
    local name pid all_up=0
    for name in "$@"; do
        if pid="$(running_pid "$name")"; then
            local state=up
            [[ "$(awk '{print $3}' "/proc/$pid/stat")" == T ]] && state=paused
            printf '%-8s %-6s pid %-7s 127.0.0.1:%s\n' "$name" "$state" "$pid" "$(port_of "$name")"
        else
            printf '%-8s down\n' "$name"
            all_up=3
        fi
    done
    return $all_up
}

env_cmd() {
    local name
    for name in \
        "PRISM_KAFKA__BROKERS=127.0.0.1:$KAFKA_PORT" \
        "PRISM_S3__ENDPOINT=http://127.0.0.1:$S3_PORT" \
        "AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT" \
        "AWS_REGION=us-east-1" \
        "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" \
        "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" \
        "PRISM_COUCHDB__URL=http://127.0.0.1:$COUCHDB_PORT" \
        "PRISM_COUCHDB__USERNAME=$PRISM_COUCHDB__USERNAME" \
        "PRISM_COUCHDB__PASSWORD=$PRISM_COUCHDB__PASSWORD"; do
        printf 'export %s=%q\n' "${name%%=*}" "${name#*=}"
    done
}

main() {
    (($#)) || usage
    local command=$1
    shift
    load_secrets
    if [[ $command == env ]]; then
        env_cmd
        return
    fi
    local names=("$@") name
    ((${#names[@]})) || names=("${ALL_SERVERS[@]}")
    if [[ $command != kill ]]; then
        for name in "${names[@]}"; do port_of "$name" >/dev/null; done
    fi
    mkdir -p "$LOG_DIR" "$PID_DIR"
    # Probes need the same endpoints and credentials as any client.
    eval "$(env_cmd)"
    # One controller at a time: parallel test scripts may all call start.
    exec 8>"$RUN_DIR/servers.lock"
    flock 8
    local i
    case $command in
        start) for name in "${names[@]}"; do start_one "$name"; done ;;
        stop) for ((i = ${#names[@]} - 1; i >= 0; i--)); do stop_one "${names[i]}"; done ;;
        restart) for name in "${names[@]}"; do
            stop_one "$name"
            wait_port_free "$name"
            start_one "$name"
        done ;;
        status) status_cmd "${names[@]}" ;;
        kill) kill_cmd "$@" ;;
        log)
            ((${#names[@]} == 1)) || usage
            tail -n 50 "$(log_file "$1")"
            ;;
        *) usage ;;
    esac
}

main "$@"
