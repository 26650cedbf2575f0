"""Prism's rules for the Helm chart's rendered manifests (deploy/validate.sh runs it on `helm
template` output): what Kubernetes' schemas cannot say. Prints each problem; exits 1 if any.

    python chart_policy.py RENDERED.yaml...
"""

import re
import sys

import yaml

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
AUTOSCALERS = {"HorizontalPodAutoscaler", "ScaledObject"}


def containers(pod):
    for kind in ("initContainers", "containers"):
        for container in pod.get(kind) or []:
            yield kind, container


def check_container(where, kind, container, problems):
    name = f"{where}/{container['name']}"
    context = container.get("securityContext") or {}
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation is not false")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: the root filesystem is writable")
    if context.get("privileged"):
        problems.append(f"{name}: privileged")
    if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
        problems.append(f"{name}: capabilities are not all dropped")

    image = container.get("image", "")
    if "@sha256:" not in image:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            problems.append(f"{name}: image {image!r} has no fixed tag or digest")

    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    if not {"cpu", "memory"} <= requests.keys():
        problems.append(f"{name}: requests lack cpu or memory")
    if "memory" not in limits:
        problems.append(f"{name}: no memory limit")

    if kind == "containers":
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            got = ((container.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path:
                problems.append(f"{name}: {probe} is not an HTTP GET of {path} (got {got!r})")

    for variable in container.get("env") or []:
        if SECRET_NAME.search(variable["name"]) and not variable["name"].endswith("_FILE") \
                and "valueFrom" not in variable:
            problems.append(f"{name}: {variable['name']} is inline; secrets come from Secrets")


def check(documents):
    problems = []
    by_kind = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    if by_kind.get("Secret"):
        problems.append("the chart renders Secrets: credentials come from existing Secrets")

    budgets = [d["spec"]["selector"]["matchLabels"] for d in by_kind.get("PodDisruptionBudget", [])]
    scaled = {d["spec"]["scaleTargetRef"]["name"] for k in AUTOSCALERS for d in by_kind.get(k, [])}
    for deployment in by_kind.get("Deployment", []):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        pod = template["spec"]
        context = pod.get("securityContext") or {}
        if context.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if (context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token it does not use")
        for kind, container in containers(pod):
            check_container(name, kind, container, problems)
        labels = template["metadata"]["labels"]
        if not any(all(labels.get(k) == v for k, v in budget.items()) for budget in budgets):
            problems.append(f"{name}: no PodDisruptionBudget selects its pods")
        if name not in scaled and "replicas" not in deployment["spec"]:
            problems.append(f"{name}: neither an autoscaler nor a replica count")
        if name in scaled and "replicas" in deployment["spec"]:
            problems.append(f"{name}: a fixed replica count fights its autoscaler")
    return problems


def main(paths):
    documents = []
    for path in paths:
        with open(path) as file:
            documents += [d for d in yaml.safe_load_all(file) if d]
    problems = check(documents)
    for problem in problems:
        print(problem)
    print(f"chart policy: {len(documents)} manifests, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
