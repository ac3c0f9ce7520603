"""``dpo``: run the operator, render profiles offline, compare with a cluster."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from default_policy_operator import __version__
from default_policy_operator.core.objects import CLUSTER_POLICY_APIS

#: `kubectl dpo` when kubectl runs us as its plugin (the kubectl-dpo entry point), else `dpo`.
PROG = "kubectl dpo" if Path(sys.argv[0]).name == "kubectl-dpo" else "dpo"


def _labels(text: str) -> dict[str, str]:
    out = {}
    for pair in filter(None, text.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _emit(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(
            yaml.safe_dump_all(data if isinstance(data, list) else [data], sort_keys=False), end=""
        )


# -- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from default_policy_operator.controller.runtime import (
        RunOptions,
        configure_logging,
        run_operator,
    )
    from default_policy_operator.kube.leader import LeaderElectionConfig
    from default_policy_operator.rendering.pool import PoolSettings

    configure_logging(args.log_format, args.log_level)
    election = None
    if args.leader_elect:
        try:
            election = LeaderElectionConfig(
                namespace=args.leader_election_namespace or args.namespace or "default",
                name=args.leader_election_id,
                lease_duration=args.leader_election_lease_duration,
                renew_deadline=args.leader_election_renew_deadline,
                retry_period=args.leader_election_retry_period,
            )
        except ValueError as exc:
            print(f"dpo run: error: {exc}", file=sys.stderr)
            return 2
    options = RunOptions(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        log_format=args.log_format,
        log_level=args.log_level,
        resync_period=args.resync_period,
        watch_timeout=args.watch_timeout,
        workers=args.workers,
        handover_settle=args.handover_settle,
        calico_api_version=args.calico_api_version,
        cluster_api_version=args.cluster_network_policy_api_version,
        audit_reports=args.audit_reports,
        render=PoolSettings(
            size=args.render_workers,
            time_limit=args.render_time_limit,
            memory_mb=args.render_memory_mb,
        ),
        leader_election=election,
    )
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
            runner.run(run_operator(options))
    except KeyboardInterrupt:
        return 130
    return 0


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``dpo run`` runs on: uvloop's unless ``asyncio`` is asked for (or uvloop
    is not installed, as on Windows, where ``auto`` falls back).

    Why uvloop: the operator's CPU per write is CPU the apiserver does not get when they share
    cores, and under the standard loop a fifth of it went to asyncio's TLS transport, which is
    Python. uvloop's loop and TLS transport are C (Cython); kopf's own CLI picks it too when
    installed. ``--event-loop asyncio`` is the way back if uvloop ever misbehaves.
    """
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _load_profiles(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "DefaultPolicyProfile"]


def cmd_render(args: argparse.Namespace) -> int:
    from default_policy_operator.core.governance import Namespace
    from default_policy_operator.core.world import World
    from default_policy_operator.rendering.offline import admit, render_scopes
    from default_policy_operator.rendering.pool import RenderPool

    world = World(
        frozenset(),
        calico_api_version=args.calico_api_version,
        cluster_api_version=args.cluster_network_policy_api_version,
    )
    namespace = Namespace(
        name=args.namespace,
        labels={"kubernetes.io/metadata.name": args.namespace, **args.labels},
    )
    world.set_namespace(namespace)
    with RenderPool() as pool:
        for body in _load_profiles(args.filename):
            entry = admit(world, pool, body)
            if entry.error or entry.profile is None:
                print(f"error: profile {entry.name}: {entry.error}", file=sys.stderr)
                return 1
        governor = world.governor(namespace)
        if governor is None:
            print(f"namespace {args.namespace} is not governed by these profiles", file=sys.stderr)
            return 0
        render_scopes(world, pool, [namespace.name])
    if not governor.flavor.namespaced:
        objects = world.wanted_calico(governor) or []
    else:
        objects, errors = world.wanted_in(governor, namespace) or ([], [])
        if errors:
            print(f"error: {errors[0]}", file=sys.stderr)
            return 1
    _emit([o.body for o in objects], args.output)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from default_policy_operator.cli.inspection import audit, diff

    command = diff if args.command == "diff" else audit
    return asyncio.run(
        command(
            args.kubeconfig,
            args.output,
            args.calico_api_version,
            args.namespace,
            context=args.context,
        )
    )


def cmd_status(args: argparse.Namespace) -> int:
    from default_policy_operator.cli.status import status

    return asyncio.run(status(args.kubeconfig, args.context, args.output))


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="default-policy-operator: a baseline network policy for every namespace.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub.add_parser)
    _add_render(sub.add_parser)
    _add_cluster_commands(sub.add_parser)
    return parser


#: ``add_parser`` of the subcommands (argparse's type for it is private)
AddParser = Callable[..., argparse.ArgumentParser]


def _add_run(add_parser: AddParser) -> None:
    run = add_parser("run", help="run the operator (in-cluster or with a kubeconfig)")
    run.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, in-cluster")
    run.add_argument("--namespace", help="the operator's own namespace (always protected)")
    run.add_argument("--metrics-port", type=int, default=8080)
    run.add_argument("--health-port", type=int, default=8081)
    run.add_argument("--bind-address", default="0.0.0.0", help="address for metrics and health")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--log-level", default="INFO")
    run.add_argument(
        "--resync-period", type=float, default=600.0, help="seconds between full resyncs"
    )
    run.add_argument(
        "--watch-timeout",
        type=int,
        default=60,
        help="seconds before a watch is renewed; liveness fails after 3 without any word",
    )
    run.add_argument("--workers", type=int, default=64, help="concurrent API writes")
    run.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="auto: uvloop where installed (a dependency everywhere but Windows), else asyncio's",
    )
    run.add_argument(
        "--handover-settle",
        type=float,
        default=3.0,
        help="seconds a new cover of another kind (a flavor switch, a handover between "
        "namespaced and cluster-scoped policies) is live before the old one is removed; policy "
        "engines watch each kind separately and may apply a delete before an earlier create",
    )
    run.add_argument(
        "--calico-api-version",
        default="crd.projectcalico.org/v1",
        choices=["crd.projectcalico.org/v1", "projectcalico.org/v3"],
        help="the Calico API the Calico flavors' objects are written in and read through "
        "(a profile's spec.calico.apiVersion must agree or be left out)",
    )
    _add_cluster_api_flag(run)
    run.add_argument(
        "--audit-reports",
        action="store_true",
        help="write Audit profiles' findings as OpenReports (openreports.io Report and "
        "ClusterReport), or as wgpolicyk8s.io PolicyReports where only those exist; needs "
        "the optional reports RBAC (off: no report is read or written)",
    )
    run.set_defaults(func=cmd_run)
    _add_rendering_flags(run)
    _add_election_flags(run)


def _add_cluster_api_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster-network-policy-api-version",
        default=CLUSTER_POLICY_APIS[0],
        choices=CLUSTER_POLICY_APIS,
        help="the API version ClusterNetworkPolicies are written in (v1alpha2 where a cluster "
        "serves no v1beta1)",
    )


def _add_rendering_flags(run: argparse.ArgumentParser) -> None:
    rendering = run.add_argument_group(
        "rendering", "templates run in worker processes with OS limits, never in the operator"
    )
    rendering.add_argument(
        "--render-workers", type=int, default=2, help="worker processes (at least 2 recommended)"
    )
    rendering.add_argument(
        "--render-time-limit",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="wall-clock limit of one render; the worker is killed and replaced past it",
    )
    rendering.add_argument(
        "--render-memory-mb",
        type=int,
        default=512,
        metavar="MB",
        help="address-space limit of each worker process",
    )


def _add_election_flags(run: argparse.ArgumentParser) -> None:
    election = run.add_argument_group(
        "leader election", "one active replica; the others stand by (not ready) to take over"
    )
    election.add_argument(
        "--leader-elect",
        action="store_true",
        help="act only while holding a coordination.k8s.io Lease (off: always act)",
    )
    election.add_argument(
        "--leader-election-namespace",
        help="the Lease's namespace (default: --namespace, else `default`)",
    )
    election.add_argument(
        "--leader-election-id", default="default-policy-operator", help="the Lease's name"
    )
    election.add_argument(
        "--leader-election-lease-duration",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long a standby waits for an unrenewed lease before taking over",
    )
    election.add_argument(
        "--leader-election-renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="the leader exits when it has not renewed for this long (< lease duration)",
    )
    election.add_argument(
        "--leader-election-retry-period",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="between attempts to acquire or renew",
    )


def _add_render(add_parser: AddParser) -> None:
    render = add_parser("render", help="print the objects a profile produces (offline)")
    render.add_argument("-f", "--filename", required=True, help="profile YAML file, or -")
    render.add_argument("--namespace", default="example", help="namespace to render for")
    render.add_argument("--labels", type=_labels, default={}, help="namespace labels k=v,...")
    render.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    render.add_argument(
        "--calico-api-version",
        default="crd.projectcalico.org/v1",
        choices=["crd.projectcalico.org/v1", "projectcalico.org/v3"],
        help="as the operator's flag: the API version of rendered Calico objects",
    )
    _add_cluster_api_flag(render)
    render.set_defaults(func=cmd_render)


def _add_cluster_commands(add_parser: AddParser) -> None:
    """diff, audit and status take kubectl's connection flags: `kubectl dpo ...` reads alike."""
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, in-cluster")
    cluster.add_argument("--context", help="kubeconfig context (default: its current-context)")
    cluster.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    for name, text in (
        ("diff", "what the operator would change in the live cluster (writes nothing)"),
        ("audit", "every namespace's coverage; exits 1 if any is uncovered or drifted"),
    ):
        inspect = add_parser(name, help=text, parents=[cluster])
        inspect.add_argument("--calico-api-version", default="crd.projectcalico.org/v1")
        inspect.add_argument(
            "--namespace",
            default="dpo-system",
            help="the operator's own namespace, protected as by `dpo run` (default: dpo-system)",
        )
        inspect.set_defaults(func=cmd_inspect)
    status = add_parser(
        "status", help="one line per profile: governed, shadowed, drifted, ready", parents=[cluster]
    )
    status.set_defaults(func=cmd_status)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
