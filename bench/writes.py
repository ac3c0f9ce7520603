"""Writes as the apiserver counts them: ``apiserver_request_total``, minus the bench's own.

The operator's own metrics count what it meant to send; the apiserver's counter is what
arrived, including the Events every repair posts and the attempts the apiserver refused
(409 conflicts, 422 invalid, 429 from API Priority and Fairness). The counter has no client
label, so the bench tallies every write it sends itself and subtracts it: what remains is the
operator plus the apiserver's own housekeeping. Its endpoint reconciler (the ``kubernetes``
Service's endpoints, refused with 422 here because the address is loopback) is reported apart
as ``apiserver_own``: the operator has no RBAC to write those resources. Its identity lease
renewals cannot be told from the operator's leader lease, so ``leases`` stay in "other".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
#: (resource, subresource, verb, code)
Key = tuple[str, str, str, str]
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_CATEGORIES = ("networkpolicies", "events")
#: Resources only kube-apiserver itself writes here (manifests/rbac grants the operator none).
APISERVER_OWN = frozenset({"endpoints", "endpointslices"})


def parse_request_totals(metrics_text: str) -> Counter[Key]:
    """Write requests by (resource, subresource, verb, code) from the apiserver's /metrics."""
    totals: Counter[Key] = Counter()
    for line in metrics_text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(_LABEL.findall(line.partition("}")[0]))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        key = (labels.get("resource", ""), labels.get("subresource", ""), labels["verb"],
               labels.get("code", ""))  # fmt: skip
        totals[key] += int(float(line.rpartition(" ")[2]))
    return totals


def resource_of(path: str) -> str:
    """The resource an API path names, as the apiserver labels it (subresources aside)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        return rest[2]
    return rest[0] if rest else ""


def own_key(method: str, path: str, status: int) -> Key | None:
    """The counter key of a request the bench sent itself, or None if it is not a write."""
    if method not in WRITE_VERBS:
        return None
    return (resource_of(path), "", method, str(status))


def bucket(resource: str) -> str:
    """``networkpolicies``, ``events``, ``apiserver_own`` or ``other``."""
    if resource in _CATEGORIES:
        return resource
    return "apiserver_own" if resource in APISERVER_OWN else "other"


def attribute(
    after: Mapping[Key, int], before: Mapping[Key, int], own: Mapping[Key, int]
) -> dict[str, Any]:
    """Writes between two snapshots that the bench did not send, by category.

    ``networkpolicies`` and ``events`` are the two a repair costs; ``other`` is every other
    resource (``by_resource`` names them). ``refused`` counts non-2xx answers separately
    (``refused_by`` keys them ``resource code``): an attempt the apiserver turned down is
    load on it all the same, but it is not a write. ``apiserver_own`` (accepted or refused)
    is in neither.
    """
    accepted: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for key in set(after) | set(before) | set(own):
        resource, subresource, _verb, code = key
        count = after.get(key, 0) - before.get(key, 0) - own.get(key, 0)
        if not count:
            continue
        name = f"{resource}/{subresource}" if subresource else resource
        ok = code.startswith("2")
        (accepted if ok else refused)[name if ok else f"{name} {code}"] += count
        category = bucket(resource)
        totals[category if ok or category == "apiserver_own" else "refused"] += count
    return {
        **{c: totals[c] for c in (*_CATEGORIES, "other", "refused", "apiserver_own")},
        "by_resource": dict(sorted(accepted.items())),
        "refused_by": dict(sorted(refused.items())),
    }


def per(writes: Mapping[str, Any], count: int) -> dict[str, float]:
    """The categories of :func:`attribute` divided by ``count`` (writes per repair)."""
    keys = (*_CATEGORIES, "other", "refused")
    return {k: writes[k] / count if count else float("nan") for k in keys}
