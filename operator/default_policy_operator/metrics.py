"""Prometheus metrics, with bounded cardinality.

Label values come from small closed sets (state, verb, code, kind, reason) or from profile names
(a platform team has a handful); never a namespace or object name, so the series count does not
grow with the cluster.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from default_policy_operator import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the counters' cardinality for no benefit
REGISTRY = CollectorRegistry(auto_describe=True)

BUILD_INFO = Gauge("dpo_build_info", "Operator build.", ["version"], registry=REGISTRY)
BUILD_INFO.labels(version=__version__).set(1)

NAMESPACES = Gauge(
    "dpo_namespaces",
    "Namespaces by coverage state: governed, excluded, exempt, protected, terminating, "
    "uncovered (uncovered = no baseline and not deliberately left out; terminating = being "
    "deleted, left to the namespace controller).",
    ["state"],
    registry=REGISTRY,
)
PROFILE_NAMESPACES = Gauge(
    "dpo_profile_namespaces",
    "Namespaces per profile by standing (governed, shadowed, excluded).",
    ["profile", "standing"],
    registry=REGISTRY,
)
MANAGED_OBJECTS = Gauge(
    "dpo_managed_objects", "Managed objects that exist now.", ["profile"], registry=REGISTRY
)
DRIFTED_OBJECTS = Gauge(
    "dpo_drifted_objects",
    "Objects missing or differing from the profile right now (Audit mode reports, never repairs).",
    ["profile"],
    registry=REGISTRY,
)
CONFLICTS = Gauge(
    "dpo_conflicts",
    "Managed names held by an object the operator did not create.",
    ["profile"],
    registry=REGISTRY,
)
PROFILE_READY = Gauge(
    "dpo_profile_ready",
    "1 when the profile's Ready condition is True.",
    ["profile"],
    registry=REGISTRY,
)
DRIFT_DETECTED = Counter(
    "dpo_drift_detected_total",
    "Drift seen on managed objects, by kind (modified, deleted, foreign).",
    ["profile", "kind"],
    registry=REGISTRY,
)
DRIFT_REPAIRED = Counter(
    "dpo_drift_repaired_total",
    "Drift repaired by a write, by kind (modified, deleted).",
    ["profile", "kind"],
    registry=REGISTRY,
)
BACKOFFS = Counter(
    "dpo_repair_backoffs_total",
    "Repairs postponed because something keeps reverting a managed object.",
    ["profile"],
    registry=REGISTRY,
)
REPAIR_LATENCY = Histogram(
    "dpo_repair_latency_seconds",
    "From the watch event that showed drift to the repairing write's response.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "dpo_reconcile_duration_seconds",
    "Time to plan one batch of scopes (trigger: events, bulk) or to re-list all (resync).",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "dpo_reconcile_errors_total",
    "Failed reconcile actions and render errors, by reason.",
    ["reason"],
    registry=REGISTRY,
)
API_WRITES = Counter(
    "dpo_api_writes_total",
    "Successful writes to the Kubernetes API, by verb and resource.",
    ["verb", "resource"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "dpo_api_errors_total",
    "Kubernetes API errors (HTTP status, or 'connection'), by verb.",
    ["verb", "code"],
    registry=REGISTRY,
)
API_CONCURRENCY = Gauge(
    "dpo_api_concurrency_limit",
    "Requests the operator lets be in flight to the API server at once: halved when the "
    "server throttles (429), grown back by one per round of successes.",
    registry=REGISTRY,
)
LEADER = Gauge(
    "dpo_leader",
    "1 while this replica is the active writer: it holds the leader-election Lease "
    "(always 1 without --leader-elect).",
    registry=REGISTRY,
)
LAST_FULL_RESYNC = Gauge(
    "dpo_last_full_resync_timestamp_seconds",
    "Unix time the last periodic full resync finished.",
    registry=REGISTRY,
)
