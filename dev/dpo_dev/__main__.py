"""``python -m dpo_dev cluster up|down [--dir DIR]``: the local control plane for development."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_dev import cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_dev")
    sub = parser.add_subparsers(dest="command", required=True)
    plane = sub.add_parser("cluster", help="a local control plane on loopback")
    plane.add_argument("action", choices=["up", "down"])
    plane.add_argument("--dir", default=".dpo-cluster", help="state directory")
    args = parser.parse_args(argv)
    workdir = Path(args.dir).resolve()
    if args.action == "up":
        started = cluster.up(workdir)
        print(f"export KUBECONFIG={started.kubeconfig}")
        return 0
    stopped = cluster.down(workdir)
    print("stopped" if stopped else f"no control plane running in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
