"""The monitoring manifests, checked offline: promtool on the alert rules and their unit tests,
the ServiceMonitor against the operator's Service, the kustomization and the Grafana dashboard.

tests/test_prometheus_e2e.py runs every expression against a real Prometheus scraping the
operator; this file needs only promtool and kubectl (for `kubectl kustomize`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from default_policy_operator import metrics
from dpo_dev.cluster import binary_paths
from tests.monitoring import (
    JOB,
    MONITORING,
    PROMTOOL_TESTS,
    REPO,
    alerts,
    as_promql,
    dashboard,
    dashboard_queries,
    panels,
    prometheus_rule,
    rules,
    tool,
    write_rules_file,
)

SEVERITIES = {"critical", "warning", "info"}


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = run(tool("promtool"), "check", "rules", write_rules_file(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    """promtool resolves rule_files next to the test file: both go into one directory."""
    write_rules_file(tmp_path)
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    result = run(tool("promtool"), "test", "rules", PROMTOOL_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names == firing, "alerts without a firing case, or tests of unknown alerts"
    assert names == silent, "alerts without a not-firing case"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    found = alerts()
    assert len(found) >= 7
    assert len({rule["alert"] for rule in found}) == len(found)
    for rule in found:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        for annotation in ("summary", "description", "runbook"):
            assert rule["annotations"].get(annotation, "").strip(), f"{name}: {annotation}"
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in found}
    assert severity["DPOOperatorAbsent"] == "critical"


def test_absent_alert_watches_the_job_the_service_monitor_produces() -> None:
    absent = next(rule for rule in alerts() if rule["alert"] == "DPOOperatorAbsent")
    assert absent["expr"] == f'absent(up{{job="{JOB}"}} == 1)'
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    service = _operator_service()
    # The Prometheus Operator names the job after the Service, or after the Service's label
    # that `jobLabel` names: that label's value is what the rule needs.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB


def _operator_service() -> dict[str, Any]:
    services = [
        document
        for path in sorted((REPO / "manifests" / "deploy").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document and document.get("kind") == "Service"
    ]
    assert len(services) == 1, services
    return services[0]


def test_service_monitor_selects_the_operator_service_metrics_port() -> None:
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": JOB}
    assert spec["namespaceSelector"]["matchNames"] == ["dpo-system"]
    assert [endpoint["port"] for endpoint in spec["endpoints"]] == ["metrics"]
    assert spec["endpoints"][0]["path"] == "/metrics"
    service = _operator_service()
    assert service["metadata"]["namespace"] == "dpo-system"
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert "metrics" in {port["name"] for port in service["spec"]["ports"]}


def test_kustomization_builds_with_the_dashboard_config_map(tmp_path: Path) -> None:
    kubectl = binary_paths().kubectl
    result = run(kubectl, "kustomize", MONITORING)
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    assert {d["metadata"]["namespace"] for d in documents} == {"dpo-system"}
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["name"] == "default-policy-operator-dashboard"  # no hash suffix
    (content,) = config_map["data"].values()
    assert json.loads(content) == dashboard()
    rule = next(d for d in documents if d["kind"] == "PrometheusRule")
    assert rule["spec"] == prometheus_rule()["spec"]


def test_dashboard_uses_the_datasource_variable_everywhere() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == expected, variable["name"]
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert "__inputs" not in board  # provisioned by the sidecar: nothing would fill them in
    # `up{job=~".*"}` would count every target of the Prometheus: one job at a time.
    assert not variables["job"]["includeAll"]
    assert not variables["job"]["multi"]


def test_dashboard_layout_is_consistent() -> None:
    board = dashboard()
    assert board["uid"] == "default-policy-operator"
    all_panels = list(panels(board))
    assert len({p["id"] for p in all_panels}) == len(all_panels)
    assert len({p["title"] for p in all_panels}) == len(all_panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[x, y] = panel["title"]
    for panel in all_panels:
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(set(refs)) == len(refs), panel["title"]


def test_dashboard_has_the_panels_operators_need() -> None:
    by_title = {p["title"]: p for p in panels()}
    headline = by_title["Uncovered namespaces"]
    assert headline["type"] == "stat"
    assert 'state="uncovered"' in headline["targets"][0]["expr"]
    table = by_title["Profiles"]
    assert table["type"] == "table"
    columns = set(table["transformations"][1]["options"]["renameByName"].values())
    assert columns >= {"Ready", "Governed", "Shadowed", "Excluded", "Managed objects"}
    assert {"Drifted (audit)", "Conflicts"} <= columns
    exprs = "\n".join(expr for _, _, expr in dashboard_queries())
    assert "histogram_quantile(0.99, sum by (le) (rate(dpo_repair_latency_seconds_bucket" in exprs
    assert "dpo_reconcile_duration_seconds_bucket" in exprs
    assert "dpo_last_full_resync_timestamp_seconds" in exprs


def test_dashboard_shows_every_metric_the_operator_exports() -> None:
    exprs = "\n".join(expr for _, _, expr in dashboard_queries())
    exported = {family.name for family in metrics.REGISTRY.collect()}
    assert exported, "no metrics registered?"
    missing = {name for name in exported if not re.search(rf"\b{name}", exprs)}
    assert not missing, f"metrics without a dashboard panel: {sorted(missing)}"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """promtool has no offline query parser, but it parses recording rules' expressions."""
    recording = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, _, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    result = run(tool("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_expressions_become_promql() -> None:
    expr = 'sum(rate(x{job=~"$job", p=~"${profile}"}[$__rate_interval])) [${__interval}]'
    assert as_promql(expr) == 'sum(rate(x{job=~".*", p=~".*"}[1m])) [1m]'
