"""Prism's own rules for compose.yaml, checked on the model Docker Compose renders (see validate.sh).

Compose itself checks the schema, interpolation and depends_on targets; this checks what it cannot
know: that the images it builds are real workspace binaries, that the services get only settings
Prism reads, that each reports its health through `prism probe`, that nothing is published beyond
loopback, that secrets are files on the credentials volumes only, that the observe profile's
Prometheus scrapes every Prism service and its Grafana shows the dashboard, that the S3 server
(MinIO, or RustFS with deploy/compose/rustfs.yaml) announces uploads on Prism's uploads topic to a
target that minio-init binds, and that MinIO built from source (deploy/compose/minio-from-source.yaml)
is a release with the fix for CVE-2025-62506. validate.sh runs it on compose.yaml alone and with
each override file, always with the observe profile on.

    python3 compose_policy.py ROOT RENDERED.json CARGO_METADATA.json
"""

import json
import re
import sys
from pathlib import Path

import yaml

DOCKERFILE = "deploy/docker/Dockerfile"
# Other images compose may build (the override files): only from these Dockerfiles.
OTHER_DOCKERFILES = {"minio": "deploy/docker/minio.Dockerfile"}
# The first MinIO release with the fix for CVE-2025-62506 (commit c1a49490c78e); release tags sort
# by time as strings.
MINIO_FIXED_RELEASE = "RELEASE.2025-10-15T17-29-55Z"
# The S3 server (whatever runs it) and the init container that binds its notification target.
S3_SERVICE, S3_INIT_SERVICE = "minio", "minio-init"
PROMETHEUS_CONFIG = "deploy/compose/prometheus.yml"
DASHBOARD = "deploy/grafana/prism-dashboard.json"
GRAFANA_PROVISIONING = "deploy/grafana/provisioning"
# The binary every Prism service runs; its `probe` subcommand is the healthcheck.
PRISM_BINARY = "prism"
OBSERVE_PROFILE = {"prometheus", "grafana"}

# Every variable the Prism services read (shared/core/src/runtime/config.rs, the AWS SDK's standard ones and
# OpenTelemetry's trace export, runtime/trace.rs). A name
# outside this list is a typo figment would ignore or, inside a section, reject at start-up.
SERVICE_ENVIRONMENT = {
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "PRISM_KAFKA__BROKERS",
    "PRISM_S3__ENDPOINT",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "PRISM_S3__ACCESS_KEY_ID",
    "PRISM_S3__SECRET_ACCESS_KEY_FILE",
    "PRISM_COUCHDB__URL",
    "PRISM_COUCHDB__DATABASE",
    "PRISM_COUCHDB__USERNAME",
    "PRISM_COUCHDB__PASSWORD",
    "PRISM_COUCHDB__PASSWORD_FILE",
    "PRISM_INPUT_BUCKET",
    "PRISM_OUTPUT_BUCKET",
    "PRISM_TOPICS__UPLOADS",
    "PRISM_TOPICS__THUMBNAIL_JOBS",
    "PRISM_TOPICS__DETECT_JOBS",
    "PRISM_TOPICS__CLASSIFY_JOBS",
    "PRISM_TOPICS__THUMBNAIL_RESULTS",
    "PRISM_TOPICS__DETECT_RESULTS",
    "PRISM_TOPICS__CLASSIFY_RESULTS",
    "PRISM_TOPICS__DEADLETTER",
    "PRISM_DETECT__WEIGHTS",
    "PRISM_CLASSIFY__WEIGHTS",
    "PRISM_CLASSIFY__LABELS",
    "PRISM_GATEWAY__ADMIN_TOKEN",
    "PRISM_GATEWAY__ADMIN_TOKEN_FILE",
    "PRISM_GATEWAY__ANNOUNCE_UPLOADS",
    "PRISM_OBSERVE__LISTEN",
}

# The model files each stage reads; they must come from a volume the service cannot write to.
MODEL_FILES = ["PRISM_DETECT__WEIGHTS", "PRISM_CLASSIFY__WEIGHTS", "PRISM_CLASSIFY__LABELS"]

# Only these may publish ports, and only on loopback: the user reaches MinIO and CouchDB, both
# behind their credentials, the gateway (its admin API behind a token), Prometheus and Grafana
# (anonymous viewers); Kafka has no authentication and stays on the compose network.
PUBLISHING_SERVICES = {"minio", "couchdb", "gateway"} | OBSERVE_PROFILE
LOOPBACK = "127.0.0.1"

# A secret's name (an access key id is a user name, not a secret). Secrets are given as files,
# NAME_FILE (Grafana: NAME__FILE), on the volumes the credentials service fills.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY$")
CREDENTIALS_SERVICE = "credentials"
CREDENTIALS_VOLUME = re.compile(r"^credentials-")

# What the build context must never carry.
DOCKERIGNORE_REQUIRED = [".git", "**/target", ".env", "**/*.onnx", "**/*.safetensors"]


def binaries_by_package(cargo_metadata: dict) -> dict[str, set[str]]:
    return {
        package["name"]: {t["name"] for t in package["targets"] if "bin" in t["kind"]}
        for package in cargo_metadata["packages"]
    }


def is_prism_build(root: Path, service: dict) -> bool:
    build = service.get("build")
    if not build:
        return False
    dockerfile = (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).resolve()
    return dockerfile == (root / DOCKERFILE).resolve()


def check_other_build(name, service, root, problems):
    """An image built by an override file: a known Dockerfile, a pinned tag, a fixed release."""
    build = service["build"]
    dockerfile = (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).resolve()
    wanted = OTHER_DOCKERFILES.get(name)
    if wanted is None or dockerfile != (root / wanted).resolve():
        problems.append(f"{name}: builds {dockerfile}; compose builds only {DOCKERFILE} "
                        f"(Prism) and {', '.join(sorted(OTHER_DOCKERFILES.values()))}")
        return
    image = service.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        problems.append(f"{name}: the built image {image!r} has no release tag")
    release = (build.get("args") or {}).get("MINIO_RELEASE", "")
    if not release.startswith("RELEASE.") or release < MINIO_FIXED_RELEASE:
        problems.append(f"{name}: builds MinIO {release or '(no MINIO_RELEASE)'}, which predates "
                        f"{MINIO_FIXED_RELEASE} and its fix for CVE-2025-62506")
    elif release not in image:
        problems.append(f"{name}: image {image!r} is not tagged with the release it builds ({release})")


def check_s3_notifications(services: dict, problems: list[str]):
    """The S3 server's Kafka target publishes uploads where dedup reads them, and is the one bound."""
    server = services.get(S3_SERVICE) or {}
    environment = server.get("environment") or {}
    image = server.get("image", "")
    # (variable prefix, ARN of a target named NAME), by server; RustFS names a target by its
    # variables' suffix in lower case and puts the region (us-east-1 unless RUSTFS_REGION) in it.
    if "rustfs" in image:
        prefix = "RUSTFS_NOTIFY_KAFKA_"
        region = environment.get("RUSTFS_REGION") or "us-east-1"
        arn = lambda target: f"arn:rustfs:sqs:{region}:{target.lower()}:kafka"
        if str(environment.get("RUSTFS_NOTIFY_ENABLE", "")).lower() != "true":
            problems.append(f"{S3_SERVICE}: RUSTFS_NOTIFY_ENABLE is not true; RustFS would send no event")
    else:
        prefix = "MINIO_NOTIFY_KAFKA_"
        arn = lambda target: f"arn:minio:sqs::{target}:kafka"
    targets = sorted(v[len(prefix + "ENABLE_"):] for v in environment
                     if v.startswith(prefix + "ENABLE_") and str(environment[v]).lower() == "on")
    if not targets:
        problems.append(f"{S3_SERVICE} ({image}): no Kafka notification target enabled ({prefix}ENABLE_<NAME>: on)")
        return

    prism = next((s.get("environment") or {} for s in services.values() if s.get("build")
                  and "PRISM_TOPICS__UPLOADS" in (s.get("environment") or {})), {})
    bound = (services.get(S3_INIT_SERVICE, {}).get("environment") or {}).get("PRISM_NOTIFY_ARN")
    arns = {arn(target): target for target in targets}
    if bound not in arns:
        problems.append(f"{S3_INIT_SERVICE}: PRISM_NOTIFY_ARN={bound} is no notification target of "
                        f"{S3_SERVICE} ({', '.join(sorted(arns))})")
        return
    target = arns[bound]
    for key, want in (("TOPIC", prism.get("PRISM_TOPICS__UPLOADS")),
                      ("BROKERS", prism.get("PRISM_KAFKA__BROKERS"))):
        have = environment.get(f"{prefix}{key}_{target}")
        if have != want:
            problems.append(f"{S3_SERVICE}: {prefix}{key}_{target}={have} is not the Prism "
                            f"services' {want} (PRISM_TOPICS__UPLOADS, PRISM_KAFKA__BROKERS)")


def check_built_service(name, service, root, binaries, problems):
    build = service["build"]
    dockerfile = (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).resolve()
    if dockerfile != (root / DOCKERFILE).resolve():
        problems.append(f"{name}: builds {dockerfile}, not the shared {DOCKERFILE}")
    args = build.get("args") or {}
    package = args.get("PACKAGE")
    binary = args.get("BINARY", package)
    if package not in binaries:
        problems.append(f"{name}: build arg PACKAGE={package!r} is not a workspace package "
                        f"(packages: {', '.join(sorted(binaries))})")
    elif binary not in binaries[package]:
        problems.append(f"{name}: package {package} has no binary {binary!r} "
                        f"(binaries: {', '.join(sorted(binaries[package])) or 'none yet'})")
    if binary != PRISM_BINARY:
        problems.append(f"{name}: builds {binary!r}, not {PRISM_BINARY!r}, whose probe is the healthcheck")

    # Scaling (`--scale NAME=4`) needs containers without fixed names or host ports.
    if "container_name" in service:
        problems.append(f"{name}: container_name would prevent scaling")
    if service.get("ports") and name not in PUBLISHING_SERVICES:
        problems.append(f"{name}: publishes ports; Prism's workers serve nothing to the host")
    if service.get("restart") != "unless-stopped":
        problems.append(f"{name}: restart is {service.get('restart')!r}, want 'unless-stopped'")
    if not service.get("stop_grace_period"):
        problems.append(f"{name}: no stop_grace_period to finish work after SIGTERM")
    if str(service.get("user", "")).split(":")[0] in ("0", "root"):
        problems.append(f"{name}: runs as root")

    environment = service.get("environment") or {}
    for variable in sorted(set(environment) - SERVICE_ENVIRONMENT):
        problems.append(f"{name}: environment variable {variable} is not one Prism reads")

    # Dependents (and `docker compose ps`) see readiness: connected, and in its consumer group.
    readyz = f"http://127.0.0.1:{observe_port(environment)}/readyz"
    healthcheck = service.get("healthcheck") or {}
    if healthcheck.get("test") != ["CMD", PRISM_BINARY, "probe", readyz]:
        problems.append(f"{name}: healthcheck {healthcheck.get('test')} does not probe {readyz} "
                        f"with `{PRISM_BINARY} probe`")
    elif not healthcheck.get("start_period"):
        problems.append(f"{name}: healthcheck has no start_period for connecting and loading models")

    # The model files come from a volume that the service cannot write to.
    for variable in MODEL_FILES:
        path = environment.get(variable)
        if path is None:
            continue
        holders = [v for v in service.get("volumes") or []
                   if path.startswith(v["target"].rstrip("/") + "/")]
        if not holders:
            problems.append(f"{name}: no volume holds {variable}={path}")
        elif not all(v.get("read_only") for v in holders):
            problems.append(f"{name}: the volume holding {path} is mounted writable")


def observe_port(environment: dict) -> str:
    return str(environment.get("PRISM_OBSERVE__LISTEN", "")).rpartition(":")[2]


def check_secret_files(name, service, problems):
    """Secrets only as files, on credentials volumes that only the credentials service writes."""
    for variable in service.get("environment") or {}:
        if SECRET_NAME.search(variable) and not variable.endswith("_FILE"):
            problems.append(f"{name}: {variable} is a secret given inline; give it as a file "
                            f"({variable}_FILE) from a credentials volume")
    mounts = service.get("volumes") or []
    for mount in mounts:
        if (mount.get("type") == "volume" and CREDENTIALS_VOLUME.match(mount.get("source", ""))
                and name != CREDENTIALS_SERVICE and not mount.get("read_only")):
            problems.append(f"{name}: mounts {mount['source']} writable")
    for variable, value in (service.get("environment") or {}).items():
        if not (SECRET_NAME.search(variable) and variable.endswith("_FILE")):
            continue
        holders = [m for m in mounts if m.get("type") == "volume" and m.get("read_only")
                   and CREDENTIALS_VOLUME.match(m.get("source", ""))
                   and str(value).startswith(m["target"].rstrip("/") + "/")]
        if not holders:
            problems.append(f"{name}: {variable}={value} is not on a read-only credentials volume")


def check_observe_profile(root: Path, services: dict, problems: list[str]):
    """Prometheus scrapes every Prism service on its observe port; Grafana shows the dashboard."""
    for name in sorted(OBSERVE_PROFILE):
        if name not in services:
            problems.append(f"the observe profile has no {name} service")
        elif services[name].get("profiles") != ["observe"]:
            problems.append(f"{name}: not in the observe profile (profiles: {services[name].get('profiles')})")
    for name, service in services.items():
        if name not in OBSERVE_PROFILE and service.get("profiles"):
            problems.append(f"{name}: in profiles {service['profiles']}; `docker compose up` would skip it")

    config = yaml.safe_load((root / PROMETHEUS_CONFIG).read_text())
    scraped = {}
    for job in config.get("scrape_configs") or []:
        for discovery in job.get("dns_sd_configs") or []:
            for dns_name in discovery.get("names") or []:
                scraped[dns_name] = (discovery.get("type"), str(discovery.get("port")))
    for name, service in sorted(services.items()):
        if not is_prism_build(root, service):
            continue
        want = ("A", observe_port(service.get("environment") or {}))
        if name not in scraped:
            problems.append(f"{name} is not scraped by {PROMETHEUS_CONFIG} (dns_sd_configs names)")
        elif scraped[name] != want:
            problems.append(f"{name}: {PROMETHEUS_CONFIG} looks it up as {scraped[name]}, want {want}")
    for dns_name in sorted(set(scraped) - set(services)):
        problems.append(f"{PROMETHEUS_CONFIG}: {dns_name} is no compose service")

    grafana = services.get("grafana") or {}
    binds = {Path(m["source"]).resolve(): m["target"] for m in grafana.get("volumes") or []
             if m.get("type") == "bind"}
    for wanted in (DASHBOARD, GRAFANA_PROVISIONING):
        if (root / wanted).resolve() not in binds:
            problems.append(f"grafana: does not mount {wanted}")
    dashboard_target = binds.get((root / DASHBOARD).resolve(), "")
    providers = yaml.safe_load((root / GRAFANA_PROVISIONING / "dashboards/prism.yml").read_text())
    paths = [p.get("options", {}).get("path", "").rstrip("/") for p in providers.get("providers") or []]
    if dashboard_target.rpartition("/")[0] not in paths:
        problems.append(f"grafana: the dashboard is mounted at {dashboard_target or 'nowhere'}, "
                        f"outside the provisioned folders {paths}")


def check(root: Path, rendered: dict, cargo_metadata: dict) -> list[str]:
    problems: list[str] = []
    binaries = binaries_by_package(cargo_metadata)
    services = rendered["services"]
    check_observe_profile(root, services, problems)
    check_s3_notifications(services, problems)

    for name, service in services.items():
        if is_prism_build(root, service):
            check_built_service(name, service, root, binaries, problems)
        elif "build" in service:
            check_other_build(name, service, root, problems)
        else:
            image = service.get("image", "")
            if "@" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                problems.append(f"{name}: image {image!r} is not pinned to a tag")

        for port in service.get("ports") or []:
            if name not in PUBLISHING_SERVICES:
                problems.append(f"{name}: publishes port {port.get('target')}; only "
                                f"{', '.join(sorted(PUBLISHING_SERVICES))} may")
            elif port.get("host_ip") != LOOPBACK:
                problems.append(f"{name}: port {port.get('target')} is published on "
                                f"{port.get('host_ip') or 'all interfaces'}, not {LOOPBACK}")

        check_secret_files(name, service, problems)

        # A one-shot container that others wait for must not be restarted into a loop.
        for dependency, condition in (service.get("depends_on") or {}).items():
            if condition.get("condition") == "service_completed_successfully":
                restart = services.get(dependency, {}).get("restart", "no")
                if restart != "no":
                    problems.append(f"{dependency}: one-shot (awaited by {name}) but restart is {restart!r}")

    dockerignore = root / ".dockerignore"
    patterns = dockerignore.read_text().split("\n") if dockerignore.is_file() else []
    for pattern in DOCKERIGNORE_REQUIRED:
        if pattern not in patterns:
            problems.append(f".dockerignore: {pattern} missing; the build context would carry it")

    gitignore = root / ".gitignore"
    if ".env" not in (gitignore.read_text().split("\n") if gitignore.is_file() else []):
        problems.append(".gitignore: .env missing; local settings could be committed")

    return problems


def main(argv: list[str]) -> int:
    root, rendered, cargo_metadata = argv[1:4]
    problems = check(
        Path(root),
        json.loads(Path(rendered).read_text()),
        json.loads(Path(cargo_metadata).read_text()),
    )
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
