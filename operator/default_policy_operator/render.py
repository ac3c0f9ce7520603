"""Rendering profiles into policy objects, safely.

Templates run in Jinja2's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` and three
extra guards:

* **Data is data.** Every ``{{ expression }}`` is emitted as a JSON value (JSON is YAML), so a
  namespace label or annotation holding ``"\\nkind: ClusterRoleBinding"`` stays one quoted string.
  Build compound strings inside the expression: ``{{ 'team-' ~ namespace.name }}``.
* **Bounded work.** A deadline is checked on every call, attribute lookup and filter the
  template makes, ``*``/``+`` on strings and lists are size-checked, integer arguments to filters
  are capped and the output is capped; recursion ends in a clear error.
* **Allow-listed output.** Exactly one YAML document; only a NetworkPolicy in the target
  namespace or a Calico GlobalNetworkPolicy; the operator then sets name, namespace, labels and
  ownerReferences itself.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .model import Flavor, Profile
from .objects import (
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
    ObjectKey,
    managed_labels,
    object_key,
    owner_reference,
)
from .selector import to_calico

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
MAX_OUTPUT_CHARS = 256 * 1024
MAX_VALUE_CHARS = 64 * 1024
MAX_INT_ARGUMENT = 10_000
MAX_INT_BITS = 16_384
DEFAULT_TIME_LIMIT = 1.0

NETWORK_POLICY_SPEC_KEYS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
#: Host-endpoint features (doNotTrack, preDNAT, applyOnForward) are left out on purpose: a
#: namespace baseline has no business changing how nodes forward traffic.
CALICO_SPEC_KEYS = frozenset(
    {
        "order",
        "selector",
        "namespaceSelector",
        "serviceAccountSelector",
        "types",
        "ingress",
        "egress",
    }
)


class RenderError(Exception):
    """A policy that cannot be rendered; ``policy`` names it for the profile's status."""

    def __init__(self, policy: str, message: str) -> None:
        self.policy = policy
        self.message = message
        super().__init__(f"policy {policy!r}: {message}")


class _Budget(Exception):
    """Raised inside a render that exceeded its time or size budget."""


def _as_yaml_value(value: Any) -> str:
    """``finalize`` hook: every expression becomes a JSON (hence YAML flow) value."""
    if isinstance(value, jinja2.runtime.Undefined):
        value._fail_with_undefined_error()  # raises, naming the missing variable or key
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise _Budget(f"a value longer than {MAX_VALUE_CHARS} characters")
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError as exc:
        raise jinja2.TemplateRuntimeError(f"cannot emit {type(value).__name__}: {exc}") from exc


def _size_of(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus a per-render deadline and size checks (see module docstring)."""

    intercepted_binops = frozenset({"*", "+", "**"})

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            finalize=_as_yaml_value,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.deadline = float("inf")
        self.filters = {name: self._guard(f) for name, f in self.filters.items()}
        self.tests = {name: self._guard(t) for name, t in self.tests.items()}  # type: ignore[arg-type]
        for unsafe in ("attr", "xmlattr", "urlize", "pprint"):
            self.filters.pop(unsafe, None)
        # Jinja's own ``namespace()`` global would shadow our ``namespace`` variable where it is
        # absent (the Calico flavor); ``lipsum`` and ``cycler``/``joiner`` have no use here.
        for name in ("namespace", "lipsum", "cycler", "joiner"):
            self.globals.pop(name, None)

    def _tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Budget("the time limit")

    def _guard(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            for value in (*args, *kwargs.values()):
                if (
                    isinstance(value, int)
                    and not isinstance(value, bool)
                    and (abs(value) > MAX_INT_ARGUMENT)
                ):
                    raise _Budget(f"a filter argument above {MAX_INT_ARGUMENT}")
            result = func(*args, **kwargs)
            if _size_of(result) > MAX_VALUE_CHARS:
                raise _Budget(f"a value longer than {MAX_VALUE_CHARS} characters")
            return result

        return guarded

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        self._tick()
        result = super().call(__context, __obj, *args, **kwargs)
        if _size_of(result) > MAX_VALUE_CHARS:
            raise _Budget(f"a value longer than {MAX_VALUE_CHARS} characters")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise _Budget("an exponent above 64")
        if operator in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            # One big-integer operation can outlast the deadline: bound the result's size.
            bits = abs(left).bit_length()
            bits = bits * abs(right) if operator == "**" else bits + abs(right).bit_length()
            if bits > MAX_INT_BITS:
                raise _Budget(f"an integer above {MAX_INT_BITS} bits")
        if operator == "*":
            count = right if isinstance(right, int) else left if isinstance(left, int) else 1
            if (_size_of(left) + _size_of(right)) * max(count, 1) > MAX_VALUE_CHARS:
                raise _Budget(f"a value longer than {MAX_VALUE_CHARS} characters")
        if operator == "+" and _size_of(left) + _size_of(right) > MAX_VALUE_CHARS:
            raise _Budget(f"a value longer than {MAX_VALUE_CHARS} characters")
        return super().call_binop(context, operator, left, right)


@dataclass(frozen=True)
class RenderedObject:
    key: ObjectKey
    policy: str
    body: dict[str, Any]


class Renderer:
    """Renders built-in and custom templates; one instance per process (compiled-template cache)."""

    def __init__(
        self, template_dir: Path = TEMPLATE_DIR, time_limit: float = DEFAULT_TIME_LIMIT
    ) -> None:
        self._env = _GuardedEnvironment()
        self._template_dir = template_dir
        self._time_limit = time_limit
        self._compiled: dict[str, tuple[jinja2.Template, bool]] = {}
        self._builtin_sources: dict[str, str] = {}

    # -- templates -------------------------------------------------------------------------

    def _builtin_source(self, flavor: Flavor, policy: str) -> str:
        folder = "calico" if flavor is Flavor.CALICO else "networkpolicy"
        path = f"{folder}/{policy}.yaml.j2"
        if path not in self._builtin_sources:
            self._builtin_sources[path] = (self._template_dir / path).read_text()
        return self._builtin_sources[path]

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
        except (RecursionError, SyntaxError):  # Python's own limits on the compiled template
            raise RenderError(policy, "template nests too deeply") from None
        if len(self._compiled) > 1024:  # profiles come and go; keep the cache bounded
            self._compiled.clear()
        self._compiled[source] = (template, uses_namespace)
        return template, uses_namespace

    def _render_text(self, template: jinja2.Template, context: Mapping[str, Any]) -> str:
        self._env.deadline = time.monotonic() + self._time_limit
        chunks: list[str] = []
        size = 0
        stream: Iterator[str] = template.generate(**context)
        for chunk in stream:
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _Budget(f"{MAX_OUTPUT_CHARS} characters of output")
            chunks.append(chunk)
        return "".join(chunks)

    def render_document(self, source: str, policy: str, context: Mapping[str, Any]) -> Any:
        """Render one template to the single YAML document it must produce."""
        template, _ = self.compile(source, policy)
        try:
            text = self._render_text(template, context)
        except jinja2.UndefinedError as exc:
            raise RenderError(policy, f"undefined variable: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise RenderError(policy, f"blocked by the template sandbox: {exc}") from None
        except _Budget as exc:
            raise RenderError(policy, f"template exceeded {exc}") from None
        except RecursionError:
            raise RenderError(policy, "template recursed too deeply") from None
        except MemoryError:
            raise RenderError(policy, "template ran out of memory") from None
        except Exception as exc:  # any other template runtime failure is the template's fault
            raise RenderError(policy, f"template failed: {type(exc).__name__}: {exc}") from None
        finally:
            self._env.deadline = float("inf")
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise RenderError(policy, f"output is not valid YAML: {exc}") from None
        if len(documents) != 1:
            raise RenderError(policy, f"must render exactly one document, got {len(documents)}")
        return documents[0]

    # -- profile rendering -----------------------------------------------------------------

    def render_namespace(
        self, profile: Profile, namespace: Mapping[str, Any]
    ) -> list[RenderedObject]:
        """Every NetworkPolicy ``profile`` wants in ``namespace``; raises on the first failure."""
        objects, errors = self.render_namespace_partial(profile, namespace)
        if errors:
            raise errors[0]
        return objects

    def render_namespace_partial(
        self, profile: Profile, namespace: Mapping[str, Any]
    ) -> tuple[list[RenderedObject], list[RenderError]]:
        """Render policy by policy: one failing template must not cost a namespace the rest."""
        assert profile.flavor is Flavor.NETWORK_POLICY
        name = str(namespace["name"])
        context = {
            "namespace": {
                "name": name,
                "labels": dict(namespace.get("labels") or {}),
                "annotations": dict(namespace.get("annotations") or {}),
            },
            "profile": {"name": profile.name, "priority": profile.priority},
        }
        objects, errors = [], []
        for policy, source, params in self._sources(profile):
            try:
                document = self.render_document(source, policy, {**context, "params": params})
                objects.append(self._stamp(profile, policy, document, name))
            except RenderError as exc:
                errors.append(exc)
        return objects, errors

    def render_calico(self, profile: Profile, namespace_selector: str) -> list[RenderedObject]:
        """Every GlobalNetworkPolicy ``profile`` wants; the selector picks governed namespaces."""
        assert profile.flavor is Flavor.CALICO
        context = {"profile": {"name": profile.name, "priority": profile.priority}}
        out = []
        for policy, source, params in self._sources(profile):
            document = self.render_document(source, policy, {**context, "params": params})
            obj = self._stamp(profile, policy, document, None)
            spec = obj.body["spec"]
            own = spec.get("namespaceSelector")
            spec["namespaceSelector"] = (
                f"({namespace_selector}) && ({own})" if own else namespace_selector
            )
            out.append(obj)
        return out

    def trial(self, profile: Profile) -> None:
        """Render ``profile`` once against a sample namespace, before it may write anything.

        Catches syntax errors, sandbox violations and off-allow-list output up front, so an
        invalid edit is rejected as a whole and the last good version stays in force. A missing
        namespace label or annotation is data-dependent and only fails where it is missing.
        """
        sample_name = "dpo-trial"
        sample = {"name": sample_name, "labels": {}, "annotations": {}}
        for policy, source, params in self._sources(profile):
            _, uses_namespace = self.compile(source, policy)
            context: dict[str, Any] = {
                "profile": {"name": profile.name, "priority": profile.priority},
                "params": params,
            }
            if profile.flavor is Flavor.NETWORK_POLICY:
                context["namespace"] = sample
            try:
                document = self.render_document(source, policy, context)
            except RenderError as exc:
                if (
                    uses_namespace
                    and profile.flavor is Flavor.NETWORK_POLICY
                    and exc.message.startswith("undefined variable")
                ):
                    continue
                raise
            namespace = None if profile.flavor is Flavor.CALICO else sample_name
            self._stamp(profile, policy, document, namespace)

    def _sources(self, profile: Profile) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for policy in profile.policy_names():
            custom = next((c for c in profile.custom_policies if c.name == policy), None)
            if custom is not None:
                yield policy, custom.template, {}
            else:
                yield policy, self._builtin_source(profile.flavor, policy), _params(profile, policy)

    def _stamp(
        self, profile: Profile, policy: str, document: Any, namespace: str | None
    ) -> RenderedObject:
        """Check the output allow-list, then set the metadata the operator owns."""
        calico = profile.flavor is Flavor.CALICO
        if not isinstance(document, dict):
            raise RenderError(policy, "must render a YAML mapping")
        extra = set(document) - {"apiVersion", "kind", "metadata", "spec"}
        if extra:
            raise RenderError(policy, f"unexpected top-level field(s): {', '.join(sorted(extra))}")
        want_kind = GLOBAL_NETWORK_POLICY if calico else NETWORK_POLICY
        want_api = profile.calico_api_version if calico else "networking.k8s.io/v1"
        kind, api = document.get("kind"), document.get("apiVersion", want_api)
        if kind != want_kind or api != want_api:
            raise RenderError(
                policy,
                f"renders {api}/{kind}, but this profile may only create {want_api}/{want_kind}",
            )
        metadata = document.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise RenderError(policy, "metadata must be a mapping")
        extra = set(metadata) - {"name", "namespace", "labels"}
        if extra:
            raise RenderError(policy, f"metadata may not set {', '.join(sorted(extra))}")
        if "namespace" in metadata and metadata["namespace"] != namespace:
            target = f"namespace {namespace!r}" if namespace else "no namespace (cluster-scoped)"
            raise RenderError(
                policy, f"renders into namespace {metadata['namespace']!r}, must be {target}"
            )
        labels = metadata.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise RenderError(policy, "metadata.labels must map strings to strings")
        spec = document.get("spec")
        if not isinstance(spec, dict):
            raise RenderError(policy, "spec must be a mapping")
        allowed = CALICO_SPEC_KEYS if calico else NETWORK_POLICY_SPEC_KEYS
        extra = set(spec) - allowed
        if extra:
            raise RenderError(policy, f"spec may not set {', '.join(sorted(extra))}")
        if calico:
            spec.setdefault("order", profile.calico_order)
            spec.setdefault("selector", "all()")
            if not spec.get("types"):
                # Calico infers Ingress-only for a rule-less policy: always be explicit.
                raise RenderError(policy, "a GlobalNetworkPolicy must list spec.types explicitly")
        else:
            spec.setdefault("podSelector", {})
        key = object_key(profile, policy, namespace)
        new_meta: dict[str, Any] = {
            "name": key.name,
            "labels": {**labels, **managed_labels(profile.name, policy)},
        }
        if namespace is not None:
            new_meta["namespace"] = namespace
        if profile.uid:
            new_meta["ownerReferences"] = [owner_reference(profile)]
        body = {"apiVersion": want_api, "kind": want_kind, "metadata": new_meta, "spec": spec}
        return RenderedObject(key=key, policy=policy, body=body)


def _types(ingress: bool, egress: bool) -> list[str]:
    return [t for t, on in (("Ingress", ingress), ("Egress", egress)) if on]


def _params(profile: Profile, policy: str) -> dict[str, Any]:
    """Parameters handed to a built-in template."""
    calico = {"apiVersion": profile.calico_api_version, "order": profile.calico_order}
    if policy == "deny-all":
        types = _types(profile.deny_all.ingress, profile.deny_all.egress)
        return {"policyTypes": types, "types": types, **calico}
    if policy == "allow-dns":
        dns = profile.allow_dns
        calico_dns = profile.flavor is Flavor.CALICO
        return {
            "namespace": dns.namespace,
            "namespaceSelector": f"projectcalico.org/name == {json.dumps(dns.namespace)}",
            "podSelector": to_calico(dns.pod_selector) if calico_dns else dns.pod_selector.as_k8s(),
            "ports": [p.as_k8s() for p in dns.ports],
            **calico,
        }
    directions = (
        profile.allow_kube_system if policy == "allow-kube-system" else profile.allow_same_namespace
    )
    types = _types(directions.ingress, directions.egress)
    return {
        "ingress": directions.ingress,
        "egress": directions.egress,
        "policyTypes": types,
        "types": types,
        "kubeSystemSelector": 'projectcalico.org/name == "kube-system"',
        **calico,
    }
