"""Hostile input against the running operator (issue #7, parts 6 and 7).

Sandbox-escape payloads from the published Jinja2 CVEs, resource exhaustion in templates, YAML
injection through namespace labels and annotations, label values at their maximum length,
thousands of exclusions, and exclusion patterns that look like globs (or like regexes). Each
case lives under its own profile and label on the session's operator; each must end in a clear
error on its profile (or work correctly), quickly, with the operator alive, answering
``/healthz``, under a memory bound, and still converging the next profile within seconds.
Every test ends with a "nothing lost" check scoped to its own namespaces and profiles, plus a
cluster-wide one: no object of any other kind was created, planted foreign objects are
untouched.

The cases of a group are created back to back once the operator is quiet, and the canary right
after them. Templates render in the operator's worker processes, under their OS limits.

Figures (time to Degraded, canary convergence, operator RSS) are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import MANAGED_SELECTOR, PROFILE_LABEL
from default_policy_operator.core.model import Flavor, ProfileError, parse_profile
from default_policy_operator.core.objects import (
    ObjectKey,
    calico_policy_name,
    key_of,
    network_policy_name,
)
from default_policy_operator.core.world import World
from default_policy_operator.rendering.offline import admit, render_scopes
from default_policy_operator.rendering.pool import RenderPool
from tests.calico_selector import evaluate
from tests.nothing_lost import ALLOWED_KINDS, Verdict, _compare, listable_resources, with_kinds
from tests.support import (
    GNPS,
    MANAGED,
    PROFILES,
    Api,
    ApiStatus,
    OperatorProcess,
    condition,
    wait_for,
)

pytestmark = pytest.mark.e2e

BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}
NETPOLS = "/apis/networking.k8s.io/v1/networkpolicies"
RSS_LIMIT_MB = 300.0
QUICK = 5.0  # seconds from a hostile profile's creation to its Degraded condition
CANARY_LIMIT = 10.0  # seconds for a fresh profile to converge right after a hostile one
#: Kinds whose objects the tests (or the apiserver) create and delete on their own.
#: (GlobalNetworkPolicies too: the Calico cases create them, and the scoped check covers them.)
CHURNING = {
    "events",
    "leases",
    "namespaces",
    "networkpolicies",
    "globalnetworkpolicies",
    "defaultpolicyprofiles",
}
#: Where a successful escape would leave its mark (checked after every escape case).
PWNED = Path("/tmp")

HEAD = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec:\n  podSelector: {}\n"
    "  policyTypes: [Ingress]\n"
)


def probe(expression: str) -> str:
    """A policy that puts ``expression`` where a value goes."""
    return (
        HEAD + "  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n"
        f"              x: {expression}\n"
    )


#: name -> (template, what the Degraded message must say). ``MARK`` becomes a file path that a
#: successful escape would create.
ESCAPES: dict[str, tuple[str, str]] = {
    # CVE-2016-10745: str.format reaches attributes the sandbox refuses to getattr
    "cve-2016-10745": (
        probe("{{ '{0.__class__.__init__.__globals__}'.format(namespace) }}"),
        "blocked by the template sandbox",
    ),
    "cve-2016-10745-mro": (
        probe("{{ '{0.__class__.__mro__[1].__subclasses__}'.format('') }}"),
        "blocked by the template sandbox",
    ),
    # CVE-2019-10906: the same through str.format_map
    "cve-2019-10906": (
        probe("{{ '{x.__class__.__init__.__globals__}'.format_map({'x': namespace}) }}"),
        "blocked by the template sandbox",
    ),
    # CVE-2024-56326: an indirect reference to str.format escapes the call-site check
    "cve-2024-56326": (
        "{% set f = '{0.__class__.__init__.__globals__}'.format %}" + probe("{{ f(namespace) }}"),
        "blocked by the template sandbox",
    ),
    "cve-2024-56326-map": (
        "{% set f = '{x.__class__}'.format_map %}" + probe("{{ f({'x': ''}) }}"),
        "blocked by the template sandbox",
    ),
    # CVE-2025-27516: |attr fetches str.format without the sandbox's format wrapper
    "cve-2025-27516": (
        probe("{{ '{0.__class__.__init__.__globals__}'|attr('format')(namespace) }}"),
        "No filter named 'attr'",
    ),
    "mro-subclasses": (
        probe("{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        "blocked by the template sandbox",
    ),
    "tuple-bases": (
        probe("{{ ().__class__.__bases__[0].__subclasses__() }}"),
        "blocked by the template sandbox",
    ),
    "self-globals-open": (
        probe("{{ self.__init__.__globals__.__builtins__.open('MARK', 'w') }}"),
        "blocked by the template sandbox",
    ),
    "lipsum-popen": (
        probe("{{ lipsum.__globals__['os'].popen('touch MARK').read() }}"),
        "undefined variable",
    ),
    "cycler-popen": (
        probe("{{ cycler.__init__.__globals__.os.popen('touch MARK').read() }}"),
        "blocked by the template sandbox",
    ),
    "range-globals": (probe("{{ range.__init__.__globals__ }}"), "blocked by the template sandbox"),
    "loop-globals": (
        "{% for i in [1] %}" + probe("{{ loop.__class__.__init__.__globals__ }}") + "{% endfor %}",
        "blocked by the template sandbox",
    ),
    "params-subclasses": (
        probe("{{ params.__class__.__base__.__subclasses__() }}"),
        "blocked by the template sandbox",
    ),
    "mutate-namespace": (
        probe("{{ namespace.labels.update({'dpo-test': 'hijacked'}) }}"),
        "blocked by the template sandbox",
    ),
    "python-yaml-tag": (
        HEAD + "x: !!python/object/apply:os.system ['touch MARK']\n",
        "could not determine a constructor",
    ),
}

EXHAUSTION: dict[str, tuple[str, str]] = {
    "huge-string": (probe("{{ 'x' * 100000000 }}"), "template exceeded"),
    "huge-concat": (probe("{{ 'x' * 60000 ~ 'y' * 60000 }}"), "a value longer than"),
    "huge-output": (
        HEAD + "{% for i in range(100000) %}#xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n{% endfor %}",
        "characters of output",
    ),
    "nested-loops": (
        HEAD + "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "the time limit",
    ),
    "recursive-macro": (
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}" + probe("{{ f(1) }}"),
        "recursed too deeply",
    ),
    "fan-out-macro": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        + probe("{{ f(40) }}"),
        "template exceeded",
    ),
    "huge-power": (probe("{{ 10 ** 100000000 }}"), "template exceeded"),  # seconds of CPU
    "format-width": (probe("{{ '{:>100000000}'.format(1) }}"), "template exceeded"),
    "join-bomb": (probe("{{ ('x' * 60000)|join('y' * 60000) }}"), "template exceeded"),
    "deep-nesting": (probe("{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}"), "nests too deeply"),
}


# -- helpers ---------------------------------------------------------------------------------


def rss_mb(process: OperatorProcess) -> float:
    assert process.process is not None
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def healthz(process: OperatorProcess) -> int:
    try:
        url = f"http://127.0.0.1:{process.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


class HealthLatency:
    """Polls ``/healthz`` in the background and keeps the slowest answer's latency."""

    def __init__(self, process: OperatorProcess) -> None:
        self.process = process
        self.max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthLatency:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            healthz(self.process)
            self.max = max(self.max, time.monotonic() - started)
            self._stop.wait(0.1)


def assert_healthy(process: OperatorProcess) -> None:
    assert process.process is not None
    assert process.process.poll() is None, process.log_tail()
    assert healthz(process) == 200
    rss = rss_mb(process)
    assert rss < RSS_LIMIT_MB, f"operator RSS {rss:.0f} MB"


def quiesce(process: OperatorProcess, quiet: float = 0.6, timeout: float = 60.0) -> None:
    """Wait until the operator finished no reconcile batch for ``quiet`` seconds."""

    def batches() -> float:
        return process.metric("dpo_reconcile_duration_seconds_count", trigger="events")

    deadline = time.monotonic() + timeout
    last, since = batches(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError("the operator never went quiet")
        time.sleep(0.1)
        now = batches()
        if now != last:
            last, since = now, time.monotonic()


def selector(label: str) -> dict[str, Any]:
    return {"matchLabels": {"dpo-test": label}}


def degraded(api: Api, name: str, fragment: str) -> dict[str, Any] | None:
    found = condition(api.get_profile(name), "Degraded")
    ok = found.get("status") == "True" and fragment in found.get("message", "")
    return found if ok else None


def canary(api: Api, process: OperatorProcess, name: str, settle: bool = False) -> float:
    """A fresh profile and namespace: seconds until its policies exist (right away, or once the
    operator has gone quiet)."""
    if settle:
        quiesce(process)
    started = time.monotonic()
    api.namespace(name, {"dpo-test": name})
    api.profile(name, {"namespaceSelector": selector(name)})
    wait_for(
        lambda: set(api.policies(name, MANAGED)) == BUILTINS,
        timeout=60,
        what=f"the canary {name} to converge",
    )
    elapsed = time.monotonic() - started
    print(f"  canary {name}: converged in {elapsed:.2f}s")
    assert elapsed < CANARY_LIMIT, f"canary took {elapsed:.1f}s"
    return elapsed


def hostile_batch(
    api: Api, process: OperatorProcess, cases: dict[str, tuple[str, str]]
) -> dict[str, float]:
    """One hostile profile per case, each over its own namespace, created back to back: seconds
    from each profile's creation until its Degraded condition says what went wrong."""
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: api.namespace(name, {"dpo-test": name}), cases))
    quiesce(process)
    created = {}
    for name, (template, _) in cases.items():
        api.profile(
            name,
            {
                "namespaceSelector": selector(name),
                "customPolicies": [{"name": "hostile", "template": template}],
            },
        )
        created[name] = time.monotonic()
    seen: dict[str, float] = {}
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(cases):
        assert time.monotonic() < deadline, f"never Degraded: {sorted(set(cases) - set(seen))}"
        for profile in api.request("GET", PROFILES)["items"]:
            name = profile["metadata"]["name"]
            if name not in cases or name in seen:
                continue
            fragment = cases[name][1]
            state = condition(profile, "Degraded")
            if state.get("status") == "True" and fragment in state.get("message", ""):
                seen[name] = time.monotonic() - created[name]
                found[name] = profile
        time.sleep(0.1)
    for name, profile in found.items():
        state, ready = condition(profile, "Degraded"), condition(profile, "Ready")
        assert state["reason"] == "InvalidSpec", state
        assert "policy 'hostile'" in state["message"], state
        assert ready["status"] == "False", ready
        assert api.policies(name, MANAGED) == {}, "an invalid profile writes nothing"
        print(f"  {name}: Degraded in {seen[name]:.2f}s: {state['message'][:200]}")
    assert_healthy(process)
    return seen


# -- the "nothing lost" check, scoped to one test's names ---------------------------------------


def list_items(api: Api, path: str) -> list[dict[str, Any]]:
    """A list, retrying the 429 an apiserver answers while it warms up a kind's watch cache
    (the first list of a kind nobody watched yet)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return with_kinds(api.request("GET", path))
        except ApiStatus as exc:
            if exc.code != 429 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _managed_items(api: Api, path: str) -> list[dict[str, Any]]:
    return list_items(api, f"{path}?labelSelector={urllib.parse.quote(MANAGED_SELECTOR)}")


def scoped_check(api: Api, tag: str, expect_missing: frozenset[str] = frozenset()) -> Verdict:
    """The nothing-lost check for the namespaces and profiles named ``tag*`` on a shared cluster.

    Like :func:`tests.nothing_lost.check`, but other tests' profiles (some invalid on purpose)
    are ignored unless they select one of our namespaces, a policy that fails to render for a
    namespace may stay as it was (the operator holds it), and ``expect_missing`` names objects
    (``namespace/name``) the apiserver refused.
    """
    verdict = Verdict()
    world = World(protected_namespaces("dpo-system"))
    mine: set[str] = set()
    for body in api.request("GET", "/api/v1/namespaces")["items"]:
        meta = body["metadata"]
        world.set_namespace(
            Namespace(meta["name"], dict(meta.get("labels") or {}), meta.get("annotations") or {})
        )
        if meta["name"].startswith(tag):
            mine.add(meta["name"])
    profiles = []
    for body in api.request("GET", PROFILES)["items"]:
        name = body["metadata"]["name"]
        if not name.startswith(tag):
            try:
                chooser = parse_profile(body).namespace_selector
            except ProfileError:
                continue
            if not any(chooser.matches(world.namespaces[n].labels) for n in mine):
                continue
        profiles.append(body)
    with RenderPool() as pool:  # the operator's renders, with the operator's limits
        for body in profiles:
            admit(world, pool, body)
        render_scopes(world, pool, sorted(mine))
    verdict.namespaces = len(mine)

    live: dict[str, dict[ObjectKey, dict[str, Any]]] = {}
    for item in _managed_items(api, NETPOLS):
        meta = item["metadata"]
        profile = meta["labels"].get(PROFILE_LABEL, "")
        if meta["namespace"] in mine or profile.startswith(tag):
            live.setdefault(meta["namespace"], {})[key_of(item)] = item
    verdict.objects = sum(len(v) for v in live.values())

    for name in sorted(mine | set(live)):
        namespace = world.namespaces.get(name)
        governor = world.governor(namespace) if namespace is not None else None
        have = dict(live.get(name, {}))
        wanted = []
        if governor is not None and governor.flavor is Flavor.NETWORK_POLICY:
            assert namespace is not None
            verdict.governed += 1
            rendered, errors = world.wanted_in(governor, namespace) or ([], [])
            held = {network_policy_name(e.policy) for e in errors}
            for key in list(have):
                labels = have[key]["metadata"]["labels"]
                if key.name in held and labels.get(PROFILE_LABEL) == governor.name:
                    del have[key]  # a policy that cannot render here keeps what it had
            wanted = [o for o in rendered if f"{name}/{o.key.name}" not in expect_missing]
            for o in rendered:
                if f"{name}/{o.key.name}" in expect_missing and o.key in have:
                    verdict.problems.append(f"expected the apiserver to refuse {name}/{o.key.name}")
        _compare(verdict, wanted, have, world)

    gnps = {
        key_of(item): item
        for item in _managed_items(api, GNPS)
        if item["metadata"]["labels"].get(PROFILE_LABEL, "").startswith(tag)
    }
    verdict.objects += len(gnps)
    wanted_gnps = []
    for profile in world.active_profiles():
        if profile.name.startswith(tag) and profile.flavor is Flavor.CALICO:
            wanted_gnps += world.wanted_calico(profile) or []
    _compare(verdict, wanted_gnps, gnps, world)

    resources = listable_resources(api)
    verdict.kinds_listed = len(resources)
    for path, group, kind in resources:
        if (group, kind) in ALLOWED_KINDS:
            continue
        for item in _managed_items(api, path):
            meta = item["metadata"]
            verdict.problems.append(f"unexpected kind: {group}/{kind} {meta['name']}")
    return verdict


def snapshot(api: Api) -> set[tuple[str, str, str, str]]:
    """(resource, namespace, name, uid) of every object of every kind nobody here should create."""
    out: set[tuple[str, str, str, str]] = set()
    for path, _group, _kind in listable_resources(api):
        if path.rpartition("/")[2] in CHURNING:
            continue
        try:
            items = list_items(api, path)
        except ApiStatus:
            continue  # not servable here (an aggregated API without a backend, say)
        for item in items:
            meta = item["metadata"]
            out.add((path, meta.get("namespace", ""), meta["name"], meta.get("uid", "")))
    return out


class Guard:
    """Before/after a test: nothing of another kind created or deleted; foreign objects intact."""

    def __init__(self, api: Api, tag: str) -> None:
        self.api = api
        self.tag = tag
        self.before = snapshot(api)
        self.foreign: dict[str, str] = {}

    def plant(self, namespace: str) -> None:
        """A foreign NetworkPolicy and ConfigMap in a namespace the operator will govern."""
        policy = self.api.create(
            f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "team-own", "labels": {"team": "a"}},
                "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]},
            },
        )
        self.foreign[self.api.policy_path(namespace, "team-own")] = policy["metadata"][
            "resourceVersion"
        ]
        config = self.api.create(
            f"/api/v1/namespaces/{namespace}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "team-config"}},
        )
        self.foreign[f"/api/v1/namespaces/{namespace}/configmaps/team-config"] = config["metadata"][
            "resourceVersion"
        ]

    def check(self, expect_missing: frozenset[str] = frozenset(), timeout: float = 30.0) -> None:
        def passes() -> Verdict | None:
            verdict = scoped_check(self.api, self.tag, expect_missing)
            return verdict if verdict.ok else None

        try:
            verdict = wait_for(passes, timeout=timeout, interval=1.0, what="nothing lost")
        except AssertionError:
            raise AssertionError(
                f"nothing-lost check failed:\n{scoped_check(self.api, self.tag, expect_missing)}"
            ) from None
        print(f"  nothing lost: {verdict.summary()}")
        for path, version in self.foreign.items():
            live = self.api.get(path)
            assert live is not None, f"{path} was deleted"
            assert live["metadata"]["resourceVersion"] == version, f"{path} was modified"
        after = snapshot(self.api)
        created = {o for o in after - self.before if not self._ours(o)}
        deleted = self.before - after
        assert not created, f"objects of other kinds appeared: {sorted(created)[:10]}"
        assert not deleted, f"objects of other kinds disappeared: {sorted(deleted)[:10]}"
        marks = sorted(PWNED.glob(f"dpo-pwned-{self.tag}*"))
        assert not marks, f"a payload escaped the sandbox: {marks}"

    def _ours(self, entry: tuple[str, str, str, str]) -> bool:
        path, namespace, name, _uid = entry
        return (
            path.endswith("/configmaps")
            and name == "team-config"
            and namespace.startswith(self.tag)
        )


@pytest.fixture
def tag(unique_name: str, api: Api, operator_process: OperatorProcess) -> Iterator[str]:
    print()
    yield unique_name
    assert_healthy(operator_process)


RSS: list[tuple[str, float]] = []


def record_rss(process: OperatorProcess, label: str) -> None:
    RSS.append((label, rss_mb(process)))


# -- 7: sandbox escapes ------------------------------------------------------------------------


def test_sandbox_escape_payloads_are_refused(
    api: Api, operator_process: OperatorProcess, tag: str
) -> None:
    record_rss(operator_process, "before the corpus")
    guard = Guard(api, tag)
    marks = {case: PWNED / f"dpo-pwned-{tag}-{case}" for case in ESCAPES}
    times = hostile_batch(
        api,
        operator_process,
        {
            f"{tag}-{case}": (template.replace("MARK", str(marks[case])), fragment)
            for case, (template, fragment) in ESCAPES.items()
        },
    )
    for case, mark in marks.items():
        assert not mark.exists(), f"{case} escaped the sandbox"
    record_rss(operator_process, "after sandbox escapes")
    print(f"  slowest escape to Degraded: {max(times.values()):.2f}s")
    assert max(times.values()) < QUICK, times
    canary(api, operator_process, f"{tag}-canary")
    guard.check()


# -- 7: resource exhaustion ---------------------------------------------------------------------


def test_resource_exhaustion_is_bounded_and_reported(
    api: Api, operator_process: OperatorProcess, tag: str
) -> None:
    guard = Guard(api, tag)
    times = hostile_batch(
        api, operator_process, {f"{tag}-{case}": spec for case, spec in EXHAUSTION.items()}
    )
    record_rss(operator_process, "after resource exhaustion")
    print(f"  slowest exhaustion case to Degraded: {max(times.values()):.2f}s")
    assert max(times.values()) < QUICK, times
    canary(api, operator_process, f"{tag}-canary")
    guard.check()


def test_data_dependent_exhaustion_is_cut_per_namespace(
    api: Api, operator_process: OperatorProcess, tag: str
) -> None:
    """A template that is cheap in the trial but loops for real on a namespace's label.

    The trial passes (a missing label reads as a string, ``|int`` makes it 0), so the profile is
    valid; each namespace whose label asks for 10^10 iterations is cut at the time limit in the
    reconcile loop, reported as a RenderError, and keeps its other (built-in) policies.
    """
    guard = Guard(api, tag)
    slow = HEAD + (
        "{% for a in range(namespace.labels['dpo-n']|int) %}"
        "{% for b in range(100000) %}{% endfor %}{% endfor %}"
    )
    label = f"{tag}-data"
    heavy = [f"{tag}-heavy-{i}" for i in range(2)]
    light = f"{tag}-light"
    for name in heavy:
        api.namespace(name, {"dpo-test": label, "dpo-n": "100000"})
    api.namespace(light, {"dpo-test": label, "dpo-n": "0"})
    guard.plant(light)
    quiesce(operator_process)
    started = time.monotonic()
    try:
        api.profile(
            label,
            {
                "namespaceSelector": selector(label),
                "customPolicies": [{"name": "slow", "template": slow}],
            },
        )
        found = wait_for(
            lambda: degraded(api, label, "the time limit"), timeout=60, what="a RenderError"
        )
        elapsed = time.monotonic() - started
        assert found["reason"] == "RenderError", found
        assert "policy slow" in found["message"]
        wait_for(lambda: set(api.policies(light, MANAGED)) == {*BUILTINS, "dpo-slow"}, timeout=30)
        for name in heavy:
            wait_for(lambda n=name: set(api.policies(n, MANAGED)) == BUILTINS, timeout=30)  # type: ignore[misc]
        print(f"  data-dependent loop over {len(heavy)} namespaces: RenderError in {elapsed:.2f}s")
        assert_healthy(operator_process)
        record_rss(operator_process, "after data-dependent loops")
        # Any profile change re-plans every namespace, and each heavy one costs a full time
        # limit in the reconcile loop -- the same loop that answers /healthz.
        with HealthLatency(operator_process) as latency:
            took = canary(api, operator_process, f"{tag}-canary", settle=True)
        print(f"  while re-planning: canary {took:.2f}s, /healthz latency max {latency.max:.2f}s")
        assert latency.max < len(heavy) * 1.0 + 3.0
        guard.check()
    finally:
        # Every later re-plan would pay one time limit per heavy namespace: leave none behind.
        api.delete_profile(label)
        wait_for(lambda: api.get_profile(label) is None, timeout=60, what="the profile to go")


# -- 7: injection through namespace data --------------------------------------------------------

INJECTION_TEMPLATE = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  labels:\n"
    "    team: {{ namespace.annotations.team }}\nspec:\n  podSelector:\n    matchLabels:\n"
    "      app: {{ namespace.labels.app }}\n      team: {{ namespace.annotations.team }}\n"
    "  policyTypes: [Ingress]\n"
)
#: Label values YAML would turn into something else if they were pasted in unquoted.
YAML_LOOKALIKES = ["true", "null", "no", "on", "2024-01-01", "1_000", "0x1F", "1e3", "NaN", "007"]
#: Annotation values that try to become structure, a template, or a Python object.
INJECTIONS = {
    "structure": "x\nkind: ClusterRoleBinding\nmetadata: {name: pwned, namespace: kube-system}",
    "document": "x\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole",
    "template": "{{ 7 * 7 }}{% raw %}",
    "python": "!!python/object/apply:os.system ['touch /tmp/dpo-pwned']",
}


def test_namespace_labels_and_annotations_stay_data(
    api: Api, operator_process: OperatorProcess, tag: str
) -> None:
    guard = Guard(api, tag)
    label = f"{tag}-inj"
    fine = {}
    for i, value in enumerate(YAML_LOOKALIKES):
        name = f"{tag}-v{i}"
        api.namespace(name, {"dpo-test": label, "app": value}, team=value)
        fine[name] = value
    refused = {}
    for case, value in INJECTIONS.items():
        name = f"{tag}-{case}"
        api.namespace(name, {"dpo-test": label, "app": "web"}, team=value)
        refused[name] = value
    guard.plant(f"{tag}-v0")
    quiesce(operator_process)
    api.profile(
        label,
        {
            "namespaceSelector": selector(label),
            "customPolicies": [{"name": "inject", "template": INJECTION_TEMPLATE}],
        },
    )
    for name, value in fine.items():
        policy = wait_for(
            lambda n=name: api.policies(n, MANAGED).get("dpo-inject"),  # type: ignore[misc]
            timeout=30,
            what=f"{name}/dpo-inject",
        )
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app": value, "team": value}
        assert policy["metadata"]["labels"]["team"] == value
    # Each payload stayed one string value, which validation refuses as a label value before
    # anything is written (the API server would refuse it too: see test_validate_e2e.py).
    found = wait_for(
        lambda: degraded(api, label, "is not a valid label value"),
        timeout=30,
        what="the refused renders reported",
    )
    assert found["reason"] == "RenderError", found
    assert "policy inject: invalid object: spec.podSelector.matchLabels['team']" in found["message"]
    print(f"  injection: {found['message'][:400]}")
    for name in refused:
        assert set(api.policies(name, MANAGED)) == BUILTINS, name
    # The template payload was not evaluated: nothing anywhere carries its result.
    for item in api.request("GET", NETPOLS)["items"]:
        assert "49" not in item["metadata"].get("labels", {}).values(), item["metadata"]
    guard.check(expect_missing=frozenset(f"{name}/dpo-inject" for name in refused))
    assert not Path("/tmp/dpo-pwned").exists()


# -- 7: label values at their maximum length ----------------------------------------------------


def test_maximum_length_labels_and_names(
    api: Api, operator_process: OperatorProcess, tag: str
) -> None:
    guard = Guard(api, tag)
    value = ("v" + tag.replace("-", "") * 8)[:62] + "z"
    assert len(value) == 63
    key = f"{'a' * 60}.{'b' * 60}.{'c' * 60}.example.com/{'k' * 63}"
    longest = (f"{tag}-" + "n" * 63)[:63]
    names = {f"{tag}-long": {key: value}, longest: {key: value}}
    for name, labels in names.items():
        api.namespace(name, {"dpo-test": f"{tag}-long", **labels})
    api.namespace(f"{tag}-almost", {"dpo-test": f"{tag}-long", key: value[:-1] + "y"})
    guard.plant(f"{tag}-long")
    with pytest.raises(ApiStatus) as refused:
        api.namespace(f"{tag}-too-long", {key: value + "z"})
    assert refused.value.code == 422
    with pytest.raises(ApiStatus) as refused:
        api.profile(f"{tag}-too-long", {"namespaceSelector": {"matchLabels": {key: value + "z"}}})
    assert refused.value.code == 422

    quiesce(operator_process)
    api.profile(
        f"{tag}-np",
        {
            "namespaceSelector": {
                "matchLabels": {key: value},
                "matchExpressions": [{"key": key, "operator": "In", "values": [value, "x" * 63]}],
            }
        },
    )
    for name in names:
        wait_for(lambda n=name: set(api.policies(n, MANAGED)) == BUILTINS, timeout=30)  # type: ignore[misc]
    assert api.policies(f"{tag}-almost", MANAGED) == {}
    # The Calico flavor: the same selector (and a 63-character namespace name) in Calico's
    # language, read back with an independent evaluator.
    quiesce(operator_process)
    api.profile(
        f"{tag}-cal",
        {
            "namespaceSelector": {"matchLabels": {key: value}},
            "flavor": "CalicoGlobalNetworkPolicy",
            "priority": -1,
            "excludeNamespaces": [f"{tag}-long"],
        },
    )
    calico_governed = calico_selected(api, f"{tag}-cal")
    assert calico_governed == set(), "every namespace it selects is governed by a higher priority"
    api.patch_profile(f"{tag}-cal", {"priority": 100})
    wait_for(lambda: calico_selected(api, f"{tag}-cal") == {longest}, timeout=30)
    wait_for(lambda: api.policies(longest, MANAGED) == {}, timeout=30)
    guard.check()


def calico_selected(api: Api, profile: str) -> set[str]:
    """Namespaces the profile's deny-all GlobalNetworkPolicy selects (waiting for it to exist)."""
    name = calico_policy_name(profile, "deny-all")
    gnp = wait_for(lambda: api.gnps(profile).get(name), timeout=30, what=f"{profile}'s {name}")
    spec = gnp["spec"]
    namespaces = api.request("GET", "/api/v1/namespaces")["items"]
    return {
        ns["metadata"]["name"]
        for ns in namespaces
        if evaluate(
            spec["namespaceSelector"],
            {**ns["metadata"].get("labels", {}), "projectcalico.org/name": ns["metadata"]["name"]},
        )
    }


# -- 7: thousands of exclusions, and patterns that look like globs ------------------------------


def test_a_thousand_exclusions(api: Api, operator_process: OperatorProcess, tag: str) -> None:
    guard = Guard(api, tag)
    label = f"{tag}-ex"
    globs = [f"{tag}-g{i:03d}-*" for i in range(990)]
    exact = [f"{tag}-e{i}" for i in range(10)]
    namespaces = {
        f"{tag}-g005-a": False,  # a glob
        f"{tag}-g989-zz": False,  # the last glob
        f"{tag}-g990-a": True,  # one past the globs
        f"{tag}-g005": True,  # the glob needs the dash
        f"{tag}-e3": False,  # an exact name
        f"{tag}-e33": True,  # an exact name is not a prefix
        f"{tag}-keep": True,
    }
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: api.namespace(n, {"dpo-test": label}), namespaces))
    guard.plant(f"{tag}-keep")
    with pytest.raises(ApiStatus) as refused:
        api.profile(
            f"{label}-1001",
            {"namespaceSelector": selector(label), "excludeNamespaces": [*globs, *exact, "x"]},
        )
    assert refused.value.code == 422
    quiesce(operator_process)
    started = time.monotonic()
    api.profile(label, {"namespaceSelector": selector(label), "excludeNamespaces": globs + exact})
    for name, governed in namespaces.items():
        if governed:
            wait_for(lambda n=name: set(api.policies(n, MANAGED)) == BUILTINS, timeout=30)  # type: ignore[misc]
    elapsed = time.monotonic() - started
    profile = wait_for(
        lambda: (
            (p := api.get_profile(label))
            and (p.get("status") or {}).get("excludedNamespaces") == 3
            and p
        ),
        timeout=30,
        what="excludedNamespaces == 3",
    )
    assert profile["status"]["governedNamespaces"] == 4
    for name, governed in namespaces.items():
        if not governed:
            assert api.policies(name, MANAGED) == {}, name
    print(f"  1000 exclusions: converged in {elapsed:.2f}s, status {len(json.dumps(profile))} B")
    # The Calico flavor writes exact names into its selector: 1000 of them must still work.
    quiesce(operator_process)
    calico_label = f"{tag}-exc"
    for name in (f"{tag}-c-in", f"{tag}-c-out"):
        api.namespace(name, {"dpo-test": calico_label})
    exact_names = [f"{tag}-c-out", *(f"{tag}-c{i:04d}" for i in range(999))]
    api.profile(
        calico_label,
        {
            "namespaceSelector": selector(calico_label),
            "flavor": "CalicoGlobalNetworkPolicy",
            "excludeNamespaces": exact_names,
        },
    )
    wait_for(
        lambda: calico_selected(api, calico_label) == {f"{tag}-c-in"},
        timeout=30,
        what="the Calico selector to select only the namespace not excluded",
    )
    gnp = api.gnps(calico_label)[calico_policy_name(calico_label, "deny-all")]
    length = len(gnp["spec"]["namespaceSelector"])
    print(f"  Calico selector with 1000 excluded names: {length} characters")
    guard.check()


GLOB_PATTERNS = ["a[b]c", "team-?", "x", "a.c", "(p|q)", "[!z]z", "open[b", "star*end"]
GLOB_CASES = {
    "abc": False,  # a[b]c is a character class
    "team-1": False,  # ? is one character
    "team-12": True,
    "x": False,  # an exact name
    "xy": True,  # ... is not a prefix
    "abc2": True,  # globs match the whole name
    "axc": True,  # "." is a literal dot, not "any character"
    "p": True,  # "(p|q)" is no alternation
    "yz": False,  # [!z] is negation
    "zz": True,
    "openb": True,  # an unclosed bracket is literal
    "star-middle-end": False,
    "starend": False,  # * matches nothing too
}


def test_exclusions_are_globs_and_exact_names_are_not(
    api: Api, operator_process: OperatorProcess, tag: str
) -> None:
    guard = Guard(api, tag)
    label = f"{tag}-glob"
    patterns = [f"{tag}-{p}" for p in GLOB_PATTERNS]
    for suffix in GLOB_CASES:
        api.namespace(f"{tag}-{suffix}", {"dpo-test": label})
    guard.plant(f"{tag}-zz")
    quiesce(operator_process)
    api.profile(label, {"namespaceSelector": selector(label), "excludeNamespaces": patterns})
    for suffix, governed in GLOB_CASES.items():
        if governed:
            wait_for(
                lambda n=f"{tag}-{suffix}": set(api.policies(n, MANAGED)) == BUILTINS,  # type: ignore[misc]
                timeout=30,
                what=f"{suffix} governed",
            )
    for suffix, governed in GLOB_CASES.items():
        if not governed:
            assert api.policies(f"{tag}-{suffix}", MANAGED) == {}, suffix
    # The same patterns in the Calico flavor: globs are resolved to names by the operator.
    api.patch_profile(label, {"flavor": "CalicoGlobalNetworkPolicy"})
    want = {f"{tag}-{s}" for s, governed in GLOB_CASES.items() if governed}
    wait_for(lambda: calico_selected(api, label) == want, timeout=30, what="the Calico selector")
    guard.check()


# -- 6: memory stays bounded --------------------------------------------------------------------


def test_memory_stays_bounded_after_the_corpus(
    api: Api, operator_process: OperatorProcess, tag: str
) -> None:
    """Re-submit the heaviest cases many times: RSS must level off, not grow with each."""
    name = f"{tag}-again"
    api.namespace(name, {"dpo-test": name})
    heavy = [EXHAUSTION[c] for c in ("huge-output", "join-bomb", "huge-concat", "fan-out-macro")]
    quiesce(operator_process)
    api.profile(
        name,
        {
            "namespaceSelector": selector(name),
            "customPolicies": [{"name": "hostile", "template": heavy[0][0]}],
        },
    )
    wait_for(lambda: degraded(api, name, heavy[0][1]), timeout=30)
    start = rss_mb(operator_process)
    rounds = 8
    for i in range(rounds):
        template, fragment = heavy[i % len(heavy)]
        quiesce(operator_process, quiet=0.3)
        api.patch_profile(
            name, {"customPolicies": [{"name": "hostile", "template": f"{{# {i} #}}" + template}]}
        )
        wait_for(
            lambda f=fragment: (
                (p := api.get_profile(name))  # type: ignore[misc]
                and p["status"].get("observedGeneration") == p["metadata"]["generation"]
                and degraded(api, name, f)
            ),
            timeout=30,
            what=f"round {i}",
        )
    end = rss_mb(operator_process)
    record_rss(operator_process, f"after {rounds} more heavy edits")
    print("  operator RSS (MB): " + ", ".join(f"{label} {mb:.0f}" for label, mb in RSS))
    print(f"  {rounds} heavy edits: RSS {start:.0f} -> {end:.0f} MB")
    assert max(mb for _, mb in RSS) < RSS_LIMIT_MB
    assert end - start < 40, f"RSS grew {end - start:.0f} MB over {rounds} hostile edits"
    assert_healthy(operator_process)
