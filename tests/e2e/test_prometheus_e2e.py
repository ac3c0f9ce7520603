"""End-to-end: a real Prometheus scrapes the operator while drift happens.

Prometheus runs on loopback with a 1 s scrape interval, the job name the ServiceMonitor gives
(``default-policy-operator``) and the PrometheusRule's groups loaded. The test causes each kind of
drift, reads the counters back through Prometheus' HTTP API, and then evaluates every expression
of the Grafana dashboard and of the alert rules against the live data.
"""

from __future__ import annotations

import atexit
import json
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import (
    JOB,
    as_promql,
    dashboard,
    dashboard_queries,
    rules,
    tool,
    write_rules_file,
)
from tests.support import MANAGED, Api, OperatorProcess, free_port, wait_for

pytestmark = pytest.mark.e2e

BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}


class PrometheusError(Exception):
    pass


class Prometheus:
    """``prometheus`` as a child process on 127.0.0.1, with its TSDB in a temporary directory."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        rules_file = write_rules_file(self.workdir)
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules_file)],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": [self.target]}]},
            ],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        command = [
            tool("prometheus"),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as log:
            # Its own session, like the control plane: a signal aimed at pytest reaches pytest,
            # whose teardown (or atexit) then stops Prometheus.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.ready, timeout=60, interval=0.2, what="Prometheus readiness")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"prometheus exited {self.process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400 (bad_data) and 422 (execution) carry JSON
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result

    def value(self, expr: str) -> float:
        """The value of a query that yields at most one sample; 0 for none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else 0.0

    def log_tail(self, limit: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-limit:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def prometheus(
    operator_process: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    server = Prometheus(
        tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{operator_process.metrics_port}"
    )
    atexit.register(server.stop)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        assert server.process is None or server.process.poll() is not None


def wait_value(prom: Prometheus, expr: str, accept: Any, what: str, timeout: float = 30) -> float:
    """Poll ``expr`` until ``accept(value)``; the failure message carries the last value."""
    last: list[float] = []

    def probe() -> bool:
        last[:] = [prom.value(expr)]
        return bool(accept(last[0]))

    try:
        wait_for(probe, timeout=timeout, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {expr} = {last}") from None
    return last[0]


def test_prometheus_sees_drift_conflicts_and_coverage(
    api: Api, operator_process: OperatorProcess, prometheus: Prometheus, unique_name: str
) -> None:
    tag = unique_name
    first, second, late = f"{tag}-a", f"{tag}-b", f"{tag}-late"
    api.namespace(first, {"dpo-test": tag})
    api.namespace(second, {"dpo-test": tag})
    api.namespace(late)  # not selected yet
    api.profile(tag, {"namespaceSelector": {"matchLabels": {"dpo-test": tag}}})
    for namespace in (first, second):
        wait_for(lambda ns=namespace: set(api.policies(ns, MANAGED)) == BUILTINS,
                 what=f"baseline in {namespace}")  # fmt: skip

    wait_value(prometheus, f'up{{job="{JOB}"}}', lambda v: v == 1, "the operator target up")
    wait_value(
        prometheus,
        f'dpo_profile_namespaces{{profile="{tag}", standing="governed"}}',
        lambda v: v == 2,
        "two governed namespaces scraped",
    )
    detected = f'dpo_drift_detected_total{{profile="{tag}", kind="%s"}}'
    repaired = f'dpo_drift_repaired_total{{profile="{tag}", kind="%s"}}'
    before = {
        expr % kind: prometheus.value(expr % kind)
        for expr in (detected, repaired)
        for kind in ("deleted", "modified", "foreign")
    }
    latency = f'dpo_repair_latency_seconds_count{{job="{JOB}"}}'
    repairs_before = prometheus.value(latency)

    # Deleted: a managed policy removed by someone else comes back.
    path = api.policy_path(first, "dpo-allow-dns")
    old_uid = api.get(path)["metadata"]["uid"]
    api.delete(path)
    wait_for(
        lambda: (api.get(path) or {}).get("metadata", {}).get("uid") not in (None, old_uid),
        what="dpo-allow-dns to be re-created",
    )

    # Modified: a merge patch of the spec is undone.
    path = api.policy_path(second, "dpo-deny-all")
    original = api.get(path)["spec"]
    api.patch(path, {"spec": {"policyTypes": ["Ingress"]}})
    wait_for(lambda: api.get(path)["spec"] == original, what="dpo-deny-all to be restored")

    # Foreign: the name is taken before the namespace is labelled in; it is left alone.
    foreign = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "dpo-deny-all", "namespace": late, "labels": {"team": "mine"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    created = api.create(api.policy_path(late, "")[:-1], foreign)
    api.label_namespace(late, {"dpo-test": tag})
    wait_for(
        lambda: set(api.policies(late, MANAGED)) == BUILTINS - {"dpo-deny-all"},
        what=f"the rest of the baseline in {late}",
    )

    for kind in ("deleted", "modified", "foreign"):
        expr = detected % kind
        wait_value(prometheus, expr, lambda v, e=expr: v > before[e], f"{kind} drift detected")
    for kind in ("deleted", "modified"):
        expr = repaired % kind
        wait_value(prometheus, expr, lambda v, e=expr: v > before[e], f"{kind} drift repaired")
    assert prometheus.value(repaired % "foreign") == 0, "a foreign object is never repaired"
    wait_value(
        prometheus,
        f'dpo_profile_namespaces{{profile="{tag}", standing="governed"}}',
        lambda v: v == 3,
        "three governed namespaces",
    )
    wait_value(prometheus, f'dpo_conflicts{{profile="{tag}"}}', lambda v: v == 1, "one conflict")
    wait_value(
        prometheus, f'dpo_managed_objects{{profile="{tag}"}}', lambda v: v == 8, "8 managed objects"
    )
    wait_value(prometheus, f'up{{job="{JOB}"}}', lambda v: v == 1, "the operator target up")
    wait_value(prometheus, latency, lambda v: v >= repairs_before + 2, "two repair latencies")
    live = api.get(api.policy_path(late, "dpo-deny-all"))
    assert live["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    # The operator is up: the absent() alert's expression must be empty, i.e. the job label
    # matches what the rules expect.
    absent = next(r["expr"] for r in rules() if r.get("alert") == "DPOOperatorAbsent")
    wait_for(lambda: prometheus.query(absent) == [], what=f"{absent} to be empty")


def test_every_dashboard_and_rule_expression_evaluates(prometheus: Prometheus) -> None:
    wait_value(prometheus, f'up{{job="{JOB}"}}', lambda v: v == 1, "the operator target up")
    wait_value(  # two scrapes at least, so that rate() has two samples to work with
        prometheus, f'count_over_time(up{{job="{JOB}"}}[5m])', lambda v: v >= 2, "two scrapes"
    )
    failures = []
    results: dict[str, int] = {}
    expressions = [
        (f"{title} [{ref}]", as_promql(expr)) for title, ref, expr in dashboard_queries()
    ]
    expressions += [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]
    for name, expr in expressions:
        try:
            results[name] = len(prometheus.query(expr))
        except PrometheusError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
    # Series the operator exports from its start: these panels return data, not just no error.
    for name in ("Uncovered namespaces", "Governed namespaces", "Version", "Operator up / leaders"):
        assert results[f"{name} [A]"] >= 1, f"{name} returned no series"

    # The template variables' label_values(selector, label) queries find the operator.
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"])
        assert found, variable["query"]
        selector, label = as_promql(found[1]), found[2]
        values = prometheus.api(f"label/{label}/values", **{"match[]": selector})
        if variable["name"] == "job":  # profiles exist only if another test made one
            assert values == [JOB]

    def rules_loaded() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        settled = loaded and all(rule["health"] != "unknown" for rule in loaded)
        return loaded if settled else None

    loaded = wait_for(rules_loaded, timeout=30, what="the alert rules to be evaluated")
    assert len(loaded) == len(rules())
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in loaded] == [
        (rule.get("alert") or rule["record"], "ok", "") for rule in rules()
    ]


def test_a_malformed_expression_is_reported_as_an_error(prometheus: Prometheus) -> None:
    """The check above means something: a bad expression is reported as an error."""
    assert prometheus.query("dpo_no_such_metric") == []
    with pytest.raises(PrometheusError, match="parse error"):
        prometheus.query("sum(rate(dpo_api_writes_total[1m])")
