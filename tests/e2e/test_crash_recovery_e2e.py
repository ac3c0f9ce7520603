"""kill -9 during a rollout, changes while down, restart: nothing lost (issue #7, part 1).

A control plane and operators of this module's own (``--resync-period 30``). The operator is
killed with SIGKILL three times while it converges a profile set over ``SCALE`` namespaces --
once at a random moment early on (often before its first write), twice when a random share of
the objects exists -- and restarted straight away after the first two kills. While it is down
after the third, the world changes: a profile's policies are edited, another profile is deleted
(its finalizer is pending), namespaces are labelled out, in and exempt, managed policies are
deleted and edited, namespaces are added. After the final restart the cluster must converge to
exactly what an offline render says (``tests.nothing_lost``), with no duplicate, no orphan, no
write to anything the operator does not own (the apiserver's audit log, by User-Agent) and
foreign objects untouched. The convergence time after the final restart is printed (``-s``).

``SCALE`` is 300 in ``make test`` (about a minute on two cores); set ``DPO_RESILIENCE_SCALE=1000``
for the full-size run, and ``DPO_RESILIENCE_SEED`` to replay a run's kill points.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from default_policy_operator.core.labels import POLICY_LABEL, PROFILE_LABEL
from dpo_dev.cluster import ADMIN_USER, ControlPlane
from tests.nothing_lost import check, wait_nothing_lost
from tests.resilience import create_namespaces, managed_count
from tests.support import GNPS, MANAGED, Api, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

SCALE = int(os.environ.get("DPO_RESILIENCE_SCALE", "300"))
SEED = int(os.environ.get("DPO_RESILIENCE_SEED", str(random.SystemRandom().randrange(10**6))))
#: Every mutating request, with its User-Agent: the operator's are ``kopf/..`` (finalizers and
#: kopf's bookkeeping) and ``default-policy-operator/..`` (its own client); the test's
#: ``Python-urllib``.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "users": [ADMIN_USER],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"level": "None"},
    ],
}
OPERATOR_RESOURCES = {"networkpolicies", "globalnetworkpolicies", "defaultpolicyprofiles", "events"}

MONITORING = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector:
    matchLabels:
      team: {{ namespace.name }}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: monitoring
      ports:
        - port: {{ params.port | default(9090) }}
"""


def name(i: int) -> str:
    return f"app-{i:04d}"


def labels_of(i: int) -> dict[str, str]:
    """90% env=prod (alpha), 10% env=dev; every fifth also tier=web (beta, higher priority)."""
    labels = {"env": "dev" if i % 10 == 9 else "prod"}
    if i % 5 == 0:
        labels["tier"] = "web"
    return labels


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(
        tmp_path_factory.mktemp("crash-plane"), audit_policy=AUDIT_POLICY
    ) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def cluster(plane: ControlPlane) -> Api:
    return Api(plane)


def is_operator(event: dict[str, Any]) -> bool:
    agent = str(event.get("userAgent", ""))
    return agent.startswith(("kopf/", "default-policy-operator/"))


class Operator:
    """An ``OperatorProcess`` that can be started without waiting for readiness, and killed."""

    def __init__(self, plane: ControlPlane, log: Path) -> None:
        self.process = OperatorProcess(plane.kubeconfig, log, "--resync-period", "30")
        self._starter: threading.Thread | None = None

    def spawn(self) -> float:
        """Start in the background (``start`` blocks until ready); returns the spawn time."""
        self.process.process = None

        def start() -> None:
            with contextlib.suppress(AssertionError):  # "exited -9": we killed it
                self.process.start()

        self._starter = threading.Thread(target=start, daemon=True)
        self._starter.start()
        wait_for(lambda: self.process.process is not None, timeout=10, what="the operator process")
        return time.monotonic()

    def kill(self) -> None:
        popen = self.process.process
        assert popen is not None
        assert popen.poll() is None, f"the operator died by itself:\n{self.process.log_tail()}"
        os.kill(popen.pid, signal.SIGKILL)
        popen.wait(10)
        if self._starter is not None:
            self._starter.join(70)

    def wait_ready(self) -> None:
        assert self._starter is not None
        self._starter.join(120)
        wait_for(self.process.ready, timeout=30, what=f"readyz\n{self.process.log_tail()}")


def test_kill_nine_during_a_rollout_then_change_everything(
    plane: ControlPlane, cluster: Api, tmp_path_factory: pytest.TempPathFactory
) -> None:
    api = cluster
    rng = random.Random(SEED)
    print(f"\n  scale {SCALE} namespaces, seed {SEED} (DPO_RESILIENCE_SEED to replay)")

    # -- the world before the first start ------------------------------------------------
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: api.namespace(name(i), labels_of(i)), range(SCALE)))
    calico = [f"cal-{i:02d}" for i in range(10)]
    create_namespaces(api, calico, {"calico": "yes"})
    print(f"  {SCALE + len(calico)} namespaces created in {time.monotonic() - started:.1f}s")
    api.profile(
        "alpha",
        {
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "priority": 10,
            "customPolicies": [{"name": "allow-monitoring", "template": MONITORING}],
        },
    )
    api.profile(
        "beta",
        {
            "namespaceSelector": {"matchLabels": {"tier": "web"}},
            "priority": 20,
            "policies": {"allowSameNamespace": {"enabled": True}},
        },
    )
    api.profile(
        "gamma",
        {
            "namespaceSelector": {"matchLabels": {"calico": "yes"}},
            "flavor": "CalicoGlobalNetworkPolicy",
            "excludeNamespaces": ["cal-0[0-1]"],
        },
    )
    foreign = plant_foreign(api, [name(i) for i in (1, 2, 3, 5, 10)])
    before = check(api)
    total = sum(1 for p in before.problems if p.startswith("missing: "))
    assert total == len(before.problems), before
    print(f"  {total} objects to create")

    # -- three kills while it converges -----------------------------------------------------
    log = tmp_path_factory.mktemp("crash-operator") / "operator.log"
    operator = Operator(plane, log)
    try:
        scenario(plane, api, operator, rng, total, foreign, log)
    finally:
        operator.process.stop(signal.SIGKILL)


def scenario(
    plane: ControlPlane,
    api: Api,
    operator: Operator,
    rng: random.Random,
    total: int,
    foreign: dict[str, str],
    log: Path,
) -> None:
    kills = []
    spawned = operator.spawn()
    delay = rng.uniform(0.5, 3.0)
    time.sleep(delay)
    operator.kill()
    kills.append(f"kill 1 at {delay:.2f}s after start: {managed_count(api)}/{total - 3} policies")
    created = CreateCounter(plane.audit_log)
    for low, high in ((0.15, 0.45), (0.55, 0.85)):
        target = int(rng.uniform(low, high) * (total - 3))  # (3 of the objects are Calico's)
        spawned = operator.spawn()
        wait_for(
            lambda t=target: created.count() >= t,  # type: ignore[misc]
            timeout=180,
            interval=0.02,
            what=f"{target} policies",
        )
        operator.kill()
        kills.append(
            f"kill at {time.monotonic() - spawned:.2f}s after start, {target} policies "
            f"created: {managed_count(api)}/{total - 3} exist after the kill"
        )
    for line in kills:
        print(f"  {line}")
    time.sleep(0.5)  # requests the dead process had in flight have landed by now

    # -- the world changes while it is down -------------------------------------------------
    changes = change_everything(api, rng)
    for line in changes:
        print(f"  while down: {line}")
    needed = check(api, other_kinds=False)
    print(f"  {len(needed.problems)} differences to repair after the final restart")
    mark = len(plane.audit_events())

    # -- final restart ----------------------------------------------------------------------
    spawned = operator.spawn()
    verdict = wait_nothing_lost(api, timeout=240, interval=0.5)
    converged = time.monotonic() - spawned
    operator.wait_ready()
    print(f"  CONVERGED {converged:.1f}s after the final restart: {verdict.summary()}")
    wait_for(lambda: api.get_profile("beta") is None, timeout=60, what="beta's finalizer")
    settle(plane)
    wait_nothing_lost(api, timeout=30)

    # -- and nothing else happened ------------------------------------------------------------
    no_duplicates(api)
    for path, version in foreign.items():
        live = api.get(path)
        assert live is not None, f"{path} was deleted"
        assert live["metadata"]["resourceVersion"] == version, f"{path} was modified"
    events = plane.audit_events()
    writes = audit_summary(events, mark)
    print(f"  operator writes after the final restart: {dict(writes)}")
    repaired = sum(n for (verb, resource), n in writes.items() if resource == "networkpolicies")
    # One write per difference, plus beta's objects that another profile takes over in place
    # (an update, counted once as "orphan" and once as "missing" by the check): never more.
    assert repaired <= len(needed.problems), (repaired, len(needed.problems))
    assert_owned_writes_only(events)
    text = log.read_text(errors="replace")
    print(f"  operator log: {len(text.splitlines())} lines, {text.count('Traceback')} tracebacks")
    assert "Traceback" not in text, text[text.index("Traceback") - 200 :][:3000]


class CreateCounter:
    """Counts the operator's successful NetworkPolicy creates by tailing the audit log: cheap
    enough to poll every few milliseconds, so a kill lands close to its target."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.total = 0

    def count(self) -> int:
        with self.path.open("rb") as file:
            file.seek(self.offset)
            chunk = file.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            if b'"networkpolicies"' not in line or b'"create"' not in line:
                continue
            event = json.loads(line)
            if (
                is_operator(event)
                and event.get("stage") == "ResponseComplete"
                and event.get("responseStatus", {}).get("code") == 201
            ):
                self.total += 1
        return self.total


def plant_foreign(api: Api, namespaces: list[str]) -> dict[str, str]:
    """A NetworkPolicy and a ConfigMap the operator does not own, in governed namespaces."""
    versions = {}
    for namespace in namespaces:
        policy = api.create(
            f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "team-own", "labels": {"team": "a"}},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
            },
        )
        versions[api.policy_path(namespace, "team-own")] = policy["metadata"]["resourceVersion"]
        config = api.create(
            f"/api/v1/namespaces/{namespace}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "team-config"}},
        )
        path = f"/api/v1/namespaces/{namespace}/configmaps/team-config"
        versions[path] = config["metadata"]["resourceVersion"]
    return versions


def change_everything(api: Api, rng: random.Random) -> list[str]:
    done = []
    api.patch_profile(
        "alpha",
        {
            "policies": {"allowKubeSystem": {"enabled": False}},
            "customPolicies": [
                {"name": "allow-monitoring", "template": MONITORING.replace("9090", "9100")}
            ],
        },
    )
    done.append("alpha: allow-kube-system off, allow-monitoring port 9090 -> 9100")
    api.delete_profile("beta")
    done.append("beta deleted (its finalizer waits for the operator)")
    prod = [i for i in range(SCALE) if labels_of(i)["env"] == "prod"]
    dev = [i for i in range(SCALE) if labels_of(i)["env"] == "dev"]
    out = rng.sample(prod, max(3, SCALE // 20))
    for i in out:
        api.label_namespace(name(i), {"env": "dev"})
    into = rng.sample(dev, max(3, SCALE // 40))
    for i in into:
        api.label_namespace(name(i), {"env": "prod"})
    done.append(f"{len(out)} namespaces labelled out, {len(into)} labelled in")
    keep = [i for i in prod if i not in out]
    exempt = rng.choice(keep)
    api.label_namespace(name(exempt), {"defaultpolicy.dev/exempt": "true"})
    done.append(f"{name(exempt)} exempt")
    deleted = edited = 0
    for i in rng.sample(keep, 20):
        present = api.policies(name(i), MANAGED)
        if "dpo-deny-all" in present and deleted < 5:
            api.delete(api.policy_path(name(i), "dpo-deny-all"))
            deleted += 1
        elif "dpo-allow-dns" in present and edited < 3:
            api.patch(api.policy_path(name(i), "dpo-allow-dns"), {"spec": {"egress": [{}]}})
            edited += 1
    done.append(f"{deleted} managed policies deleted, {edited} edited")
    new = [f"new-{i}" for i in range(5)]
    create_namespaces(api, new, {"env": "prod"})
    api.namespace("new-web", {"env": "prod", "tier": "web"})
    api.namespace("cal-new", {"calico": "yes"})
    done.append(f"{len(new) + 2} namespaces added")
    api.patch_profile("gamma", {"excludeNamespaces": ["cal-0[0-2]"]})
    done.append("gamma excludes one more namespace")
    return done


def settle(plane: ControlPlane, quiet: float = 3.0, timeout: float = 60.0) -> None:
    """Wait until the operator has made no write for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = sum(1 for e in plane.audit_events() if is_operator(e))
        if now == last:
            return
        last = now
        time.sleep(quiet)
    raise AssertionError("the operator kept writing")


def no_duplicates(api: Api) -> None:
    """One object per (namespace, policy) and per Calico policy; no two share a label pair."""
    items = api.request(
        "GET", f"/apis/networking.k8s.io/v1/networkpolicies?labelSelector={MANAGED}"
    )["items"]
    seen = Counter(
        (i["metadata"]["namespace"], i["metadata"]["labels"][POLICY_LABEL]) for i in items
    )
    assert max(seen.values(), default=1) == 1, [k for k, n in seen.items() if n > 1][:10]
    gnps = api.request("GET", f"{GNPS}?labelSelector={MANAGED}")["items"]
    pairs = Counter(
        (g["metadata"]["labels"][PROFILE_LABEL], g["metadata"]["labels"][POLICY_LABEL])
        for g in gnps
    )
    assert max(pairs.values(), default=1) == 1, pairs


def audit_summary(events: list[dict[str, Any]], since: int) -> Counter[tuple[str, str]]:
    return Counter(
        (e["verb"], e["objectRef"].get("resource", ""))
        for e in events[since:]
        if is_operator(e) and e.get("stage") == "ResponseComplete"
    )


def assert_owned_writes_only(events: list[dict[str, Any]]) -> None:
    """Every write the operator ever made here went to its own kinds and its own names."""
    operator = [e for e in events if is_operator(e) and e.get("stage") == "ResponseComplete"]
    assert operator, "no operator writes in the audit log"
    kinds = Counter(e["objectRef"].get("resource", "") for e in operator)
    assert set(kinds) <= OPERATOR_RESOURCES, kinds
    for event in operator:
        ref = event["objectRef"]
        if ref.get("resource") == "networkpolicies" and ref.get("name"):
            assert ref["name"].startswith("dpo-"), ref
    conflicts = sum(
        1
        for e in operator
        if e["verb"] == "create" and e.get("responseStatus", {}).get("code") == 409
    )
    print(f"  operator writes over the whole run: {dict(kinds)}; creates refused 409: {conflicts}")
