"""Helpers for the monitoring tests: the manifests in manifests/monitoring and Prometheus' tools."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "manifests" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
SERVICE_MONITOR = MONITORING / "servicemonitor.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool" / "rules_test.yaml"

#: The scrape job the alert rules and the dashboard expect (the ServiceMonitor's jobLabel value).
JOB = "default-policy-operator"


def tool(name: str) -> str:
    """Path of a Prometheus binary; `make test` installs them (Debian package `prometheus`)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make tools` (apt-get install prometheus)")
    return path


def prometheus_rule() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(PROMETHEUS_RULE.read_text())
    return document


def write_rules_file(directory: Path) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rules file, as the operator would."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": prometheus_rule()["spec"]["groups"]}))
    return path


def rules() -> list[dict[str, Any]]:
    return [rule for group in prometheus_rule()["spec"]["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(board: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in (board or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every panel target."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in panels()
        for target in panel.get("targets", [])
    ]


_INTERVALS = re.compile(r"\$\{?(?:__rate_interval|__interval|__range)\}?")
_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")


def as_promql(expr: str, interval: str = "1m") -> str:
    """A Grafana expression as Prometheus would get it: intervals fixed, variables matching all."""
    return _VARIABLE.sub(".*", _INTERVALS.sub(interval, expr))
