"""Profile status: counts and standard conditions, from in-memory state.

cert-manager's way: small pure checks, each giving a status, a reason and a message, turned into
``metav1.Condition``-shaped entries. ``lastTransitionTime`` only moves when a condition's status
does, and the status carries no per-namespace lists, so its size is bounded and an unchanged
cluster yields an identical status: no write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 1024
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Check:
    type: str
    status: bool
    reason: str
    message: str


def condition(
    check: Check, generation: int, previous: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    old = next((c for c in previous if c.get("type") == check.type), None)
    status = "True" if check.status else "False"
    moved = old is None or old.get("status") != status
    return {
        "type": check.type,
        "status": status,
        "reason": check.reason,
        "message": check.message[:MAX_MESSAGE],
        "observedGeneration": generation,
        "lastTransitionTime": now if moved or old is None else old.get("lastTransitionTime", now),
    }


def examples(items: Sequence[str]) -> str:
    """A bounded summary: the first few items and how many more there are."""
    shown = ", ".join(sorted(items)[:MAX_EXAMPLES])
    more = len(items) - MAX_EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Observations:
    """What the reconciler knows about one profile right now."""

    spec_error: str | None
    errors: Mapping[str, str]  # what failed (a policy, an object) -> message
    conflicts: Sequence[str]  # object descriptions
    contested: Sequence[str]  # objects in repair backoff
    pending: int  # actions planned but not yet applied (Enforce)
    audit_findings: Sequence[str]  # Audit: what Enforce would change
    audit: bool
    #: the profile changed and not every scope has been planned since (Ready would be early)
    rolling_out: bool = False
    #: the profile's namespaceSelector is empty: it selects every namespace in the cluster
    selects_all: bool = False


#: Informational condition: True while the profile's selector is empty (see :func:`scope`).
SELECTS_ALL = "SelectsAllNamespaces"


def scope(obs: Observations) -> Check:
    """Whether the profile governs every namespace, said where ``kubectl describe`` shows it.

    An empty selector is legitimate (a cluster-wide baseline) but also what a forgotten
    selector looks like, and every namespace created later -- any team's, any tool's -- gets a
    deny-all. A condition rather than a Warning Event: it stays visible as long as it is true
    (Events expire after an hour), it is queryable (``kubectl wait``, policy checks, alerts on
    the status), and it does not cry wolf on every generation of an intended baseline.
    """
    if obs.selects_all:
        return Check(
            SELECTS_ALL,
            True,
            "EmptyNamespaceSelector",
            "spec.namespaceSelector is empty: this profile selects every namespace, present "
            "and future, except protected ones (system namespaces, the operator's, every "
            "profile's DNS namespace), excludeNamespaces and namespaces labelled "
            "defaultpolicy.dev/exempt=true",
        )
    return Check(
        SELECTS_ALL, False, "NamespaceSelector", "only namespaces matching spec.namespaceSelector"
    )


def checks(obs: Observations) -> list[Check]:
    """Ready and Degraded, with the most important reason first, then the scope."""
    degraded: Check
    if obs.spec_error:
        degraded = Check(
            "Degraded",
            True,
            "InvalidSpec",
            f"{obs.spec_error}; the last valid version stays in force",
        )
    elif obs.errors:
        detail = "; ".join(f"{p}: {m}" for p, m in sorted(obs.errors.items())[:MAX_EXAMPLES])
        rendering = any(what.startswith("policy ") for what in obs.errors)
        degraded = Check(
            "Degraded",
            True,
            "RenderError" if rendering else "ApplyFailed",
            f"{detail}; nothing is written from these, existing objects stay",
        )
    elif obs.conflicts:
        degraded = Check(
            "Degraded",
            True,
            "Conflict",
            f"{len(obs.conflicts)} managed name(s) held by objects the operator did "
            f"not create, left untouched: {examples(obs.conflicts)}",
        )
    elif obs.contested:
        degraded = Check(
            "Degraded",
            True,
            "Contested",
            f"something keeps reverting {len(obs.contested)} object(s), repairs are "
            f"backed off: {examples(obs.contested)}",
        )
    else:
        degraded = Check("Degraded", False, "AsExpected", "no problems")

    if obs.spec_error or obs.errors:
        ready = Check("Ready", False, degraded.reason, degraded.message)
    elif obs.audit:
        ready = Check(
            "Ready",
            True,
            "Audited",
            "Audit mode, nothing written; "
            + (
                f"{len(obs.audit_findings)} object(s) missing or drifted: "
                f"{examples(obs.audit_findings)}"
                if obs.audit_findings
                else "all in place"
            ),
        )
    elif obs.pending:
        ready = Check("Ready", False, "Reconciling", f"{obs.pending} change(s) being applied")
    elif obs.rolling_out:
        ready = Check("Ready", False, "Reconciling", "being planned for every selected namespace")
    else:
        ready = Check("Ready", True, "Reconciled", "every governed namespace holds its policies")
    return [ready, degraded, scope(obs)]
