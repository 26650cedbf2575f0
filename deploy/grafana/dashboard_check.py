"""Checks deploy/grafana/prism-dashboard.json without Grafana (see validate.sh).

The dashboard must be a Grafana dashboard JSON model on built-in panels only, every panel querying
the Prometheus picked by its `datasource` variable, and every query must name only metrics and
labels the README's metrics table lists (the table is what shared/core/src/runtime/observe.rs
records; tests/metrics.rs then runs each query against a real Prometheus). Every metric of the
table is on the dashboard. The queries' syntax is promtool's to judge: this writes them into a
rules file that validate.sh hands to `promtool check rules`.

    python3 dashboard_check.py DASHBOARD.json README.md RULES_OUT.yml
"""

import json
import re
import sys
from pathlib import Path

# Panels Grafana ships with; anything else would need a plugin installed.
BUILTIN_PANELS = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap"}
DATASOURCE = "${datasource}"
# Grafana's interval variables, given a value promtool accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

# PromQL words that are not metric names: keywords and binary operators (functions and
# aggregations are recognised by the parenthesis that follows them).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
TABLE_ROW = re.compile(r"^\| `(prism_[a-z_]+)` \| (\w+) \| ([^|]*) \|")


def metrics_table(readme: str) -> dict[str, tuple[str, set[str]]]:
    """The README's metrics table: name -> (type, labels)."""
    table = {}
    for line in readme.splitlines():
        row = TABLE_ROW.match(line)
        if row:
            # Labels in backticks; a parenthesis lists a label's values, e.g. `by` (`watch`, …).
            labels = re.sub(r"\([^)]*\)", "", row[3])
            table[row[1]] = (row[2], set(re.findall(r"`([a-z_]+)`", labels)))
    return table


def series_metric(name: str, table: dict) -> str | None:
    """The table's metric a series name belongs to (a histogram's _bucket, _sum, _count too)."""
    if name in table:
        return name
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and table.get(base, ("",))[0] == "histogram":
            return base
    return None


def check_query(where: str, expr: str, table: dict, problems: list[str]) -> set[str]:
    """Problems with the names a query uses; returns the table's metrics it reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    used: set[str] = set()
    matched_labels: set[str] = set()
    for metric, matchers in MATCHERS.findall(text):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label == "__name__":
                problems.append(f"{where}: selects by __name__; name the metric")
            matched_labels.add(label)
    grouping_labels = {label.strip() for _, labels in GROUPING.findall(text)
                       for label in labels.split(",") if label.strip()}
    bare = GROUPING.sub(" ", MATCHERS.sub(lambda m: f" {m[1]} ", text))
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b\d[0-9.eE+]*[a-z]*", " ", bare)  # numbers and durations (offset 5m)
    for found in IDENTIFIER.finditer(bare):
        name = found[0]
        if name.lower() in KEYWORDS or bare[found.end():].lstrip().startswith("("):
            continue
        metric = series_metric(name, table)
        if metric is None:
            problems.append(f"{where}: {name} is not in the README's metrics table")
        else:
            used.add(metric)
    known = {"le"} | {label for metric in used for label in table[metric][1]}
    for label in sorted((matched_labels | grouping_labels) - known):
        problems.append(f"{where}: label {label} is not one of {', '.join(sorted(known))}")
    return used


def check(dashboard: dict, table: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """Problems, and every query as (a recording rule name, the expression)."""
    problems: list[str] = []
    queries: list[tuple[str, str]] = []
    if not table:
        problems.append("README.md: no metrics table found (rows like | `prism_…` | type | labels | what |)")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource", {})
    if datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.append("templating: no `datasource` variable of type datasource for prometheus")
    for key in ("uid", "title"):
        if not dashboard.get(key):
            problems.append(f"the dashboard has no {key}")
    for required in dashboard.get("__requires", []):
        if required.get("type") == "panel" and required.get("id") not in BUILTIN_PANELS:
            problems.append(f"__requires: panel plugin {required.get('id')} is not built in")

    used: set[str] = set()
    ids = set()
    for panel in dashboard.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problems.append(f"panel {title}: id {panel.get('id')} is not unique")
        ids.add(panel.get("id"))
        if panel.get("type") not in BUILTIN_PANELS:
            problems.append(f"panel {title}: type {panel.get('type')} is not a built-in panel")
        if panel.get("type") == "row":
            if panel.get("panels"):
                problems.append(f"row {title}: collapsed rows hide their panels from this check")
            continue
        if (panel.get("datasource") or {}).get("uid") != DATASOURCE:
            problems.append(f"panel {title}: datasource is not {DATASOURCE}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {title}: no queries")
        for target in targets:
            where = f"panel {title}, query {target.get('refId')}"
            expr = target.get("expr", "")
            if (target.get("datasource") or {}).get("uid") != DATASOURCE:
                problems.append(f"{where}: datasource is not {DATASOURCE}")
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                problems.append(f"{where}: a variable other than {', '.join(GRAFANA_VARIABLES)}")
            used |= check_query(where, expr, table, problems)
            queries.append((f"dashboard:panel_{panel.get('id')}:{target.get('refId')}", expr))
    for metric in sorted(set(table) - used):
        problems.append(f"{metric} (README's metrics table) is on no panel")
    return problems, queries


def main(argv: list[str]) -> int:
    dashboard_path, readme_path, rules_path = argv[1:4]
    try:
        dashboard = json.loads(Path(dashboard_path).read_text())
    except json.JSONDecodeError as error:
        print(f"{dashboard_path}: not JSON: {error}")
        return 1
    problems, queries = check(dashboard, metrics_table(Path(readme_path).read_text()))
    rules = {"groups": [{"name": "dashboard",
                         "rules": [{"record": name, "expr": expr} for name, expr in queries]}]}
    Path(rules_path).write_text(json.dumps(rules, indent=2))  # JSON is YAML to promtool
    for problem in problems:
        print(problem)
    print(f"{len(queries)} queries checked")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
