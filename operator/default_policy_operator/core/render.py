"""Rendering profiles into policy objects: the template rules, run only in render workers.

Templates run in Jinja2's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``, and:

* **Data is data.** Every ``{{ expression }}`` is emitted as a JSON value (JSON is YAML), so a
  namespace label or annotation holding ``"\\nkind: ClusterRoleBinding"`` stays one quoted string.
  Build compound strings inside the expression: ``{{ 'team-' ~ namespace.name }}``.
* **Bounded work, by the operating system.** This module never runs in the operator's process:
  the render pool (``rendering/``) calls :meth:`Renderer.run` in worker processes that have
  CPU-time and address-space limits and a wall-clock timeout after which they are killed and
  replaced. What stays here is cheap: the output and each emitted value are capped in size as
  they are produced, and YAML aliases may not expand a document past the output cap.
* **Allow-listed, validated output.** Exactly one YAML document of the profile's flavor (a
  Kubernetes or Calico NetworkPolicy in the target namespace, or a cluster-scoped Calico
  GlobalNetworkPolicy or ClusterNetworkPolicy), structurally valid (``validate.py``); the
  operator then sets name, namespace, labels and ownerReferences itself, and hashes the
  normalised spec, so planning never meets a malformed object.

A profile is rendered in two steps. Its **trial** (:func:`trial_tasks`, :func:`trial_result`)
renders every policy once: a template that does not read ``namespace`` (every built-in) gives
the same document everywhere, which the trial keeps and planning re-stamps per namespace
(:func:`restamp`); one that reads it is rendered per namespace (:func:`namespace_task`).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from default_policy_operator.core import calico_selector
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.model import BASELINE_POLICY, DNSTier, Flavor, Profile
from default_policy_operator.core.normalize import spec_hash
from default_policy_operator.core.objects import (
    CLUSTER_NETWORK_POLICY,
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
    RenderedObject,
    copy_tree,
    managed_labels,
    object_key,
    owner_reference,
)
from default_policy_operator.core.selector import to_calico
from default_policy_operator.core.validate import (
    Check,
    Problem,
    calico_namespaced_spec,
    calico_spec,
    cluster_network_policy_spec,
    labels,
    network_policy_spec,
    problems,
)

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
#: libyaml's parser when PyYAML was built with it (the wheels are): several times faster
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_OUTPUT_CHARS = 256 * 1024
MAX_VALUE_CHARS = 64 * 1024
#: What a missing namespace label or annotation reads as in a trial render.
TRIAL_VALUE = "dpo-trial"
TRIAL_NAMESPACE = "dpo-trial"

NETWORK_POLICY_SPEC_KEYS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
#: Host-endpoint features (doNotTrack, preDNAT, applyOnForward) are left out on purpose: a
#: namespace baseline has no business changing how nodes forward traffic.
CALICO_SPEC_KEYS = frozenset(
    {"order", "selector", "namespaceSelector", "serviceAccountSelector", "types"}
    | {"ingress", "egress"}
)
#: A namespaced Calico policy selects endpoints of its own namespace only: no namespaceSelector.
CALICO_NAMESPACED_SPEC_KEYS = CALICO_SPEC_KEYS - {"namespaceSelector"}
CLUSTER_POLICY_SPEC_KEYS = frozenset({"tier", "priority", "subject", "ingress", "egress"})


class RenderError(Exception):
    """A policy that cannot be rendered; ``policy`` names it for the profile's status."""

    def __init__(self, policy: str, message: str) -> None:
        self.policy = policy
        self.message = message
        super().__init__(f"policy {policy!r}: {message}")

    def __reduce__(self) -> tuple[type[RenderError], tuple[str, str]]:
        return RenderError, (self.policy, self.message)  # crosses the worker's pipe

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RenderError) and (self.policy, self.message) == (
            other.policy,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.policy, self.message))


class _Budget(Exception):
    """Raised inside a render whose output or one of its values grew too big."""


# -- the environment ---------------------------------------------------------------------------


def _undefined_in_json(value: Any) -> Any:
    """``json.dumps`` hook: an undefined name inside a list or mapping fails as undefined."""
    if isinstance(value, jinja2.runtime.Undefined):
        value._fail_with_undefined_error()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _as_yaml_value(value: Any) -> str:
    """``finalize`` hook: every expression becomes a JSON (hence YAML flow) value."""
    if isinstance(value, jinja2.runtime.Undefined):
        value._fail_with_undefined_error()  # raises, naming the missing variable or key
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise _Budget(f"a value longer than {MAX_VALUE_CHARS} characters")
    try:
        text = json.dumps(value, sort_keys=True, default=_undefined_in_json)
    except TypeError as exc:
        raise jinja2.TemplateRuntimeError(f"cannot emit {type(value).__name__}: {exc}") from exc
    if len(text) > MAX_VALUE_CHARS + 2:
        raise _Budget(f"a value longer than {MAX_VALUE_CHARS} characters")
    return text


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        finalize=_as_yaml_value,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # No constant folding: it would run template code (``'a' * 10**8``, ``10 ** 64 ** 64``)
        # while compiling and write the result into the generated Python source.
        optimized=False,
    )
    for unsafe in ("attr", "xmlattr", "urlize", "pprint"):
        env.filters.pop(unsafe, None)
    # Jinja's own ``namespace()`` global would shadow our ``namespace`` variable where it is
    # absent (the Calico flavor); ``lipsum`` and ``cycler``/``joiner`` have no use here.
    for name in ("namespace", "lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    return env


class _AnyKey(dict[str, str]):
    """The trial's namespace labels and annotations: every key is there, reading TRIAL_VALUE."""

    def __missing__(self, key: str) -> str:
        return TRIAL_VALUE


#: The trial's sample namespace: every label and annotation is there, reading TRIAL_VALUE.
_SAMPLE = {"name": TRIAL_NAMESPACE, "labels": _AnyKey(), "annotations": _AnyKey()}


def _finite(value: Any) -> bool:
    """Whether every number in ``value`` is finite (walked after the size check: bounded)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(k) and _finite(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


def _rendered_size(value: Any, limit: int) -> int:
    """About ``len(json.dumps(value))``, counted only a little past ``limit``, without building
    the text. A shared sub-structure (a YAML alias) counts each time it occurs but is walked
    once, so an alias bomb is cheap to measure and measures huge."""
    memo: dict[int, int] = {}

    def measure(item: Any) -> int:
        if isinstance(item, str | bytes):
            return len(item) + 2
        if not isinstance(item, dict | list):
            return len(str(item)) if isinstance(item, int | float | bool) else 16
        key = id(item)  # ``item`` stays alive during the walk, so its id stays unique
        if key not in memo:
            memo[key] = total = 2
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            for child in children:
                total += measure(child) + 2
                if total > limit:
                    break
            memo[key] = total
        return memo[key]

    return measure(value)


# -- tasks and results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderTask:
    """One policy of one profile to render: for a namespace, or (``namespace`` None) for a
    trial. Small and picklable: it crosses to a render worker."""

    profile: Profile
    policy: str
    namespace: Namespace | None = None


@dataclass(frozen=True)
class Trialled:
    """A trial render: ``shared`` holds the document when the template does not read
    ``namespace`` (the same everywhere; NetworkPolicies are keyed to namespace "")."""

    policy: str
    shared: RenderedObject | None


RenderResult = RenderedObject | Trialled | RenderError


@dataclass(frozen=True)
class ProfileRender:
    """What a successful trial leaves for planning: the namespace-independent objects, and the
    policies that must be rendered per namespace."""

    shared: Mapping[str, RenderedObject] = field(default_factory=dict)
    dependent: tuple[str, ...] = ()


def trial_tasks(profile: Profile) -> list[RenderTask]:
    return [RenderTask(profile, policy) for policy in profile.policy_names()]


def trial_result(profile: Profile, results: Sequence[RenderResult]) -> ProfileRender:
    """The trial's verdict: the first failure (in policy order), or what planning needs."""
    shared, dependent = {}, []
    for result in results:
        if isinstance(result, RenderError):
            raise result
        assert isinstance(result, Trialled)
        if result.shared is None:
            dependent.append(result.policy)
        else:
            shared[result.policy] = result.shared
    assert len(results) == len(profile.policy_names())
    return ProfileRender(shared=shared, dependent=tuple(dependent))


def namespace_task(profile: Profile, policy: str, namespace: Namespace) -> RenderTask:
    return RenderTask(profile, policy, namespace)


def restamp(obj: RenderedObject, namespace: str) -> RenderedObject:
    """A shared NetworkPolicy placed in ``namespace``, with metadata of its own. The rest (the
    spec) is the profile's render itself, shared by every namespace's copy: nothing changes a
    rendered spec in place (``with_namespace_selector`` and ``with_subject`` copy first), and a
    deep copy per namespace was 5 % of the operator's CPU in a 5,000-namespace rollout."""
    metadata = copy_tree(obj.body["metadata"])
    metadata.pop("namespace", None)
    metadata = {"name": metadata.pop("name"), "namespace": namespace, **metadata}
    body = {**obj.body, "metadata": metadata}
    return RenderedObject(obj.key._replace(namespace=namespace), obj.policy, body, obj.spec_hash)


# -- the renderer (in a worker) ----------------------------------------------------------------


class Renderer:
    """Renders tasks; one per worker process (it caches compiled templates)."""

    def __init__(self, template_dir: Path = TEMPLATE_DIR) -> None:
        self._env = _environment()
        self._template_dir = template_dir
        self._compiled: dict[str, tuple[jinja2.Template, bool]] = {}

    def run(self, task: RenderTask) -> RenderResult:
        """Render ``task``; a template's failure is returned, never raised."""
        profile, policy = task.profile, task.policy
        try:
            source, params = policy_source(profile, policy, self._template_dir)
            _, uses_namespace = self.compile(source, policy)
            context: dict[str, Any] = {
                "profile": {"name": profile.name, "priority": profile.priority},
                "params": params,
            }
            if task.namespace is None:  # the trial
                if profile.flavor.namespaced and uses_namespace:
                    context["namespace"] = _SAMPLE
                    document = self.render_document(source, policy, context)
                    stamp(profile, policy, document, TRIAL_NAMESPACE, sample=True)
                    return Trialled(policy, None)
                document = self.render_document(source, policy, context)
                return Trialled(policy, stamp(profile, policy, document, None))
            namespace = task.namespace
            context["namespace"] = {
                "name": namespace.name,
                "labels": dict(namespace.labels),
                "annotations": dict(namespace.annotations),
            }
            document = self.render_document(source, policy, context)
            return stamp(profile, policy, document, namespace.name)
        except RenderError as exc:
            return exc

    def knows(self, source: str) -> bool:
        """Whether ``source`` was compiled here before."""
        return source in self._compiled

    def compile(self, source: str, policy: str) -> tuple[jinja2.Template, bool]:
        """Compile (cached); the flag says whether the template reads ``namespace``."""
        cached = self._compiled.get(source)
        if cached is not None:
            return cached
        try:
            ast = self._env.parse(source)
            # (jinja2.meta misses "namespace": it is also the name of a Jinja global we remove)
            uses_namespace = any(n.name == "namespace" for n in ast.find_all(jinja2.nodes.Name))
            template = self._env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            message = f"template syntax error on line {exc.lineno}: {exc.message}"
            raise RenderError(policy, message) from None
        except (RecursionError, SyntaxError, MemoryError):  # Python's own limits on the code
            raise RenderError(policy, "template nests too deeply") from None
        except Exception as exc:
            message = f"template failed to compile: {type(exc).__name__}: {exc}"
            raise RenderError(policy, message) from None
        if len(self._compiled) > 1024:  # profiles come and go; keep the cache bounded
            self._compiled.clear()
        self._compiled[source] = (template, uses_namespace)
        return template, uses_namespace

    def render_document(self, source: str, policy: str, context: Mapping[str, Any]) -> Any:
        """Render one template to the single YAML document it must produce."""
        template, _ = self.compile(source, policy)
        try:
            text = _collect(template.generate(**context))
        except jinja2.UndefinedError as exc:
            raise RenderError(policy, f"undefined variable: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise RenderError(policy, f"blocked by the template sandbox: {exc}") from None
        except _Budget as exc:
            raise RenderError(policy, f"template exceeded {exc}") from None
        except RecursionError:
            raise RenderError(policy, "template recursed too deeply") from None
        except MemoryError:
            raise RenderError(policy, "template exceeded the memory limit") from None
        except Exception as exc:  # any other template runtime failure is the template's fault
            raise RenderError(policy, f"template failed: {type(exc).__name__}: {exc}") from None
        return parse_document(text, policy)


def _collect(stream: Iterator[str]) -> str:
    chunks: list[str] = []
    size = 0
    for chunk in stream:
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise _Budget(f"{MAX_OUTPUT_CHARS} characters of output")
        chunks.append(chunk)
    return "".join(chunks)


def parse_document(text: str, policy: str) -> Any:
    """The one YAML document ``text`` must hold; YAML aliases may not blow it up."""
    try:
        documents = [d for d in yaml.load_all(text, Loader=SAFE_LOADER) if d is not None]
    except yaml.YAMLError as exc:
        raise RenderError(policy, f"output is not valid YAML: {exc}") from None
    if len(documents) != 1:
        raise RenderError(policy, f"must render exactly one document, got {len(documents)}")
    # YAML aliases share nodes: a few hundred characters can stand for millions of them,
    # which hashing, copying and the API request would all expand.
    if _rendered_size(documents[0], MAX_OUTPUT_CHARS) > MAX_OUTPUT_CHARS:
        raise RenderError(
            policy, f"template exceeded {MAX_OUTPUT_CHARS} characters of output (YAML aliases)"
        )
    # YAML's .nan and .inf are floats that JSON cannot carry (the wire's encoder would write
    # null): the object stored would never match the one rendered.
    if not _finite(documents[0]):
        raise RenderError(policy, "output holds a number that is not finite (.nan or .inf)")
    return documents[0]


# -- stamping: the allow-list, validation, the metadata the operator owns ----------------------


def stamp(
    profile: Profile, policy: str, document: Any, namespace: str | None, *, sample: bool = False
) -> RenderedObject:
    """Check the output allow-list and the structure, then set the metadata the operator owns.

    ``namespace`` None with the NetworkPolicy flavor: a namespace-independent document, placed
    per namespace later (:func:`restamp`). ``sample``: a trial render against the sample
    namespace, where only structural problems count (values may come from namespace data).
    """
    output = _output_of(profile)
    metadata = _check_envelope(policy, document, output.api_version, output.kind)
    _check_namespace(policy, metadata, namespace, output.namespaced)
    spec = document["spec"]
    extra = set(spec) - output.spec_keys
    if extra:
        raise RenderError(policy, f"spec may not set {', '.join(sorted(map(str, extra)))}")
    if profile.flavor.calico:
        _calico_defaults(profile, policy, spec, output.kind)
    elif profile.flavor is Flavor.CLUSTER_NETWORK_POLICY:
        _cluster_defaults(profile, policy, spec)
    else:
        spec.setdefault("podSelector", {})
    found = problems(output.schema, spec)
    found += problems(labels, metadata.get("labels") or {}, "metadata.labels")
    found = [p for p in found if p.structural or not sample]
    if found:
        raise RenderError(policy, _describe(found))
    key = object_key(profile, policy, namespace or "")
    new_meta: dict[str, Any] = {"name": key.name}
    if output.namespaced:
        new_meta["namespace"] = namespace or ""
    new_meta["labels"] = {**(metadata.get("labels") or {}), **managed_labels(profile.name, policy)}
    if profile.uid:
        new_meta["ownerReferences"] = [owner_reference(profile)]
    body = {"apiVersion": output.api_version, "kind": output.kind, "metadata": new_meta}
    if profile.staged:  # the same policy as Calico's staged kind: shown, never enforced
        body.update(apiVersion=profile.calico_api_version, kind=key.kind)
        spec["stagedAction"] = "Set"
    body["spec"] = spec
    return RenderedObject(key, policy, body, spec_hash(key.kind, spec))


@dataclass(frozen=True)
class _Output:
    """What a flavor may render: the one kind, where it lives, and the spec it may hold."""

    api_version: str
    kind: str
    namespaced: bool
    spec_keys: frozenset[str]
    schema: Check


def _output_of(profile: Profile) -> _Output:
    flavor = profile.flavor
    if flavor is Flavor.NETWORK_POLICY:
        return _Output(
            "networking.k8s.io/v1",
            NETWORK_POLICY,
            True,
            NETWORK_POLICY_SPEC_KEYS,
            network_policy_spec,
        )
    if flavor is Flavor.CALICO_NAMESPACED:
        return _Output(
            profile.calico_api_version,
            NETWORK_POLICY,
            True,
            CALICO_NAMESPACED_SPEC_KEYS,
            calico_namespaced_spec,
        )
    if flavor is Flavor.CLUSTER_NETWORK_POLICY:
        return _Output(
            profile.cluster.api_version,
            CLUSTER_NETWORK_POLICY,
            False,
            CLUSTER_POLICY_SPEC_KEYS,
            cluster_network_policy_spec,
        )
    return _Output(
        profile.calico_api_version, GLOBAL_NETWORK_POLICY, False, CALICO_SPEC_KEYS, calico_spec
    )


def _cluster_defaults(profile: Profile, policy: str, spec: dict[str, Any]) -> None:
    """The Baseline tier and the profile's priority, unless the template says otherwise; the
    Admin tier only for the built-in allow-DNS the profile put there (``dnsTier: Admin``).

    The subject is replaced at planning by the governed namespaces (ANDed with what the
    template selects); here it must have the one shape the API accepts.
    """
    spec.setdefault("tier", "Baseline")
    spec.setdefault("priority", profile.cluster.priority)
    spec.setdefault("subject", {"namespaces": {}})
    admin_dns = policy == "allow-dns" and profile.cluster.dns_tier is DNSTier.ADMIN
    if spec["tier"] != "Baseline" and not admin_dns:
        message = f"spec.tier must be Baseline, not {spec['tier']!r}"
        raise RenderError(policy, message + " (only allowDNS may go to Admin, by dnsTier)")
    subject = spec["subject"]
    if not isinstance(subject, dict) or len(subject) != 1:
        raise RenderError(policy, "spec.subject must hold exactly one of namespaces or pods")


def _calico_defaults(profile: Profile, policy: str, spec: dict[str, Any], kind: str) -> None:
    """Selectors Calico accepts, the profile's order, and explicit types."""
    try:
        calico_selector.check_policy_selectors(spec)
    except calico_selector.CalicoSelectorError as exc:
        raise RenderError(policy, str(exc)) from None
    spec.setdefault("order", profile.calico_order)
    spec.setdefault("selector", "all()")
    if not spec.get("types"):
        # Calico infers Ingress-only for a rule-less policy: always be explicit.
        raise RenderError(policy, f"a Calico {kind} must list spec.types explicitly")


def _describe(found: Sequence[Problem]) -> str:
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return "invalid object: " + "; ".join(str(p) for p in found[:3]) + more


def _check_envelope(policy: str, document: Any, want_api: str, want_kind: str) -> dict[str, Any]:
    """Kind, apiVersion and the top-level fields; returns the metadata."""
    if not isinstance(document, dict):
        raise RenderError(policy, "must render a YAML mapping")
    extra = set(document) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        names = ", ".join(sorted(map(str, extra)))
        raise RenderError(policy, f"unexpected top-level field(s): {names}")
    kind, api = document.get("kind"), document.get("apiVersion", want_api)
    if kind != want_kind or api != want_api:
        raise RenderError(
            policy, f"renders {api}/{kind}, but this profile may only create {want_api}/{want_kind}"
        )
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RenderError(policy, "metadata must be a mapping")
    extra = set(metadata) - {"name", "namespace", "labels"}
    if extra:
        raise RenderError(policy, f"metadata may not set {', '.join(sorted(map(str, extra)))}")
    labels_ = metadata.get("labels") or {}
    if not isinstance(labels_, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels_.items()
    ):
        raise RenderError(policy, "metadata.labels must map strings to strings")
    if not isinstance(document.get("spec"), dict):
        raise RenderError(policy, "spec must be a mapping")
    return metadata


def _check_namespace(
    policy: str, metadata: Mapping[str, Any], namespace: str | None, namespaced: bool
) -> None:
    if "namespace" not in metadata or (metadata["namespace"] == namespace and namespace):
        return
    written = metadata["namespace"]
    if not namespaced:
        target = "no namespace (cluster-scoped)"
    elif namespace is None:
        target = "the namespace it is rendered for ({{ namespace.name }})"
    else:
        target = f"namespace {namespace!r}"
    raise RenderError(policy, f"renders into namespace {written!r}, must be {target}")


# -- sources and parameters ----------------------------------------------------------------------


@functools.cache
def _builtin_source(template_dir: Path, flavor: Flavor, policy: str) -> str:
    folder = {
        Flavor.NETWORK_POLICY: "networkpolicy",
        Flavor.CALICO_NAMESPACED: "calico-namespaced",
        Flavor.CALICO: "calico",
        Flavor.CLUSTER_NETWORK_POLICY: "clusternetworkpolicy",
    }[flavor]
    return (template_dir / folder / f"{policy}.yaml.j2").read_text()


def policy_source(
    profile: Profile, policy: str, template_dir: Path = TEMPLATE_DIR
) -> tuple[str, dict[str, Any]]:
    """The template of ``policy`` and the ``params`` it is rendered with."""
    custom = next((c for c in profile.custom_policies if c.name == policy), None)
    if custom is not None:
        return custom.template, {}
    return _builtin_source(template_dir, profile.flavor, policy), _params(profile, policy)


def _types(ingress: bool, egress: bool) -> list[str]:
    return [t for t, on in (("Ingress", ingress), ("Egress", egress)) if on]


def _params(profile: Profile, policy: str) -> dict[str, Any]:
    """Parameters handed to a built-in template."""
    cluster = profile.flavor is Flavor.CLUSTER_NETWORK_POLICY
    calico = {
        "apiVersion": profile.cluster.api_version if cluster else profile.calico_api_version,
        "order": profile.calico_order,
        "priority": profile.cluster.priority,
        "denyPriority": profile.cluster.priority + 1,
        "dnsTier": str(profile.cluster.dns_tier),
    }
    if policy == BASELINE_POLICY:
        return _baseline_params(profile)
    if policy == "deny-all":
        deny = profile.deny_all
        types = _types(deny.ingress, deny.egress)
        return {
            "policyTypes": types,
            "types": types,
            "ingress": deny.ingress,
            "egress": deny.egress,
            **calico,
        }
    if policy == "allow-dns":
        dns = profile.allow_dns
        calico_dns = profile.flavor.calico
        return {
            "namespace": dns.namespace,
            "namespaceSelector": f"projectcalico.org/name == {json.dumps(dns.namespace)}",
            "podSelector": to_calico(dns.pod_selector) if calico_dns else dns.pod_selector.as_k8s(),
            "ports": [p.as_k8s() for p in dns.ports],
            **calico,
        }
    directions = profile.allows(policy)  # only the directions deny-all denies
    types = _types(directions.ingress, directions.egress)
    return {
        "ingress": directions.ingress,
        "egress": directions.egress,
        "policyTypes": types,
        "types": types,
        "kubeSystemSelector": 'projectcalico.org/name == "kube-system"',
        **calico,
    }


def _baseline_params(profile: Profile) -> dict[str, Any]:
    """The Compact layout's one object: deny-all's directions, and each allow's parameters
    with the directions it takes effect in (as its separate object would have them)."""
    dns = profile.allow_dns
    return {
        "policyTypes": _types(profile.deny_all.ingress, profile.deny_all.egress),
        "dns": profile.allows("allow-dns").egress,
        "namespace": dns.namespace,
        "podSelector": dns.pod_selector.as_k8s(),
        "ports": [p.as_k8s() for p in dns.ports],
        "kubeSystem": _directions(profile, "allow-kube-system"),
        "sameNamespace": _directions(profile, "allow-same-namespace"),
    }


def _directions(profile: Profile, policy: str) -> dict[str, bool]:
    directions = profile.allows(policy)
    return {"ingress": directions.ingress, "egress": directions.egress}
