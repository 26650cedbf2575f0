"""Prism's own rules for compose.yaml, checked on the model Docker Compose renders (see validate.sh).

Compose itself checks the schema, interpolation and depends_on targets; this checks what it cannot
know: that the images it builds are real workspace binaries, that the services get only settings
Prism reads, that nothing is published beyond loopback, that secrets come from the env file only.

    python3 compose_policy.py ROOT RENDERED.json UNINTERPOLATED.json CARGO_METADATA.json
"""

import json
import re
import sys
from pathlib import Path

DOCKERFILE = "deploy/docker/Dockerfile"

# Every variable the Prism services read (shared/core/src/runtime/config.rs and the AWS SDK's standard ones). A name
# outside this list is a typo figment would ignore or, inside a section, reject at start-up.
SERVICE_ENVIRONMENT = {
    "RUST_LOG",
    "PRISM_KAFKA__BROKERS",
    "PRISM_S3__ENDPOINT",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
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
    "PRISM_GATEWAY__ANNOUNCE_UPLOADS",
    "PRISM_OBSERVE__LISTEN",
}

# The model files each stage reads; they must come from a volume the service cannot write to.
MODEL_FILES = ["PRISM_DETECT__WEIGHTS", "PRISM_CLASSIFY__WEIGHTS", "PRISM_CLASSIFY__LABELS"]

# Only these may publish ports, and only on loopback: the user reaches MinIO and CouchDB, both
# behind their credentials, and the gateway (its admin API behind a token); Kafka has no
# authentication and stays on the compose network.
PUBLISHING_SERVICES = {"minio", "couchdb", "gateway"}
LOOPBACK = "127.0.0.1"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN")
# A required substitution: compose refuses to start without the value, and there is no default.
REQUIRED_SUBSTITUTION = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]*\}$")

# What the build context must never carry.
DOCKERIGNORE_REQUIRED = [".git", "**/target", ".env", "**/*.onnx", "**/*.safetensors"]


def binaries_by_package(cargo_metadata: dict) -> dict[str, set[str]]:
    return {
        package["name"]: {t["name"] for t in package["targets"] if "bin" in t["kind"]}
        for package in cargo_metadata["packages"]
    }


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


def check(root: Path, rendered: dict, uninterpolated: dict, cargo_metadata: dict) -> list[str]:
    problems: list[str] = []
    binaries = binaries_by_package(cargo_metadata)
    services = rendered["services"]

    for name, service in services.items():
        if "build" in service:
            check_built_service(name, service, root, binaries, problems)
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

        # A one-shot container that others wait for must not be restarted into a loop.
        for dependency, condition in (service.get("depends_on") or {}).items():
            if condition.get("condition") == "service_completed_successfully":
                restart = services.get(dependency, {}).get("restart", "no")
                if restart != "no":
                    problems.append(f"{dependency}: one-shot (awaited by {name}) but restart is {restart!r}")

    for name, service in uninterpolated["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable) and not variable.endswith("_FILE"):
                if value is None or not REQUIRED_SUBSTITUTION.match(str(value)):
                    problems.append(f"{name}: {variable} must be a required ${{VAR:?...}} from .env, "
                                    f"not {value!r}")

    dockerignore = root / ".dockerignore"
    patterns = dockerignore.read_text().split("\n") if dockerignore.is_file() else []
    for pattern in DOCKERIGNORE_REQUIRED:
        if pattern not in patterns:
            problems.append(f".dockerignore: {pattern} missing; the build context would carry it")

    gitignore = root / ".gitignore"
    if ".env" not in (gitignore.read_text().split("\n") if gitignore.is_file() else []):
        problems.append(".gitignore: .env missing; generated credentials could be committed")

    return problems


def main(argv: list[str]) -> int:
    root, rendered, uninterpolated, cargo_metadata = argv[1:5]
    problems = check(
        Path(root),
        json.loads(Path(rendered).read_text()),
        json.loads(Path(uninterpolated).read_text()),
        json.loads(Path(cargo_metadata).read_text()),
    )
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
