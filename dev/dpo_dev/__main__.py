"""``python -m dpo_dev cluster|dataplane ... [--dir DIR]``: local control plane and dataplane."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_dev import cluster, dataplane


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_dev")
    sub = parser.add_subparsers(dest="command", required=True)
    plane = sub.add_parser("cluster", help="a local control plane on loopback")
    plane.add_argument("action", choices=["up", "down"])
    plane.add_argument("--dir", default=".dpo-cluster", help="state directory")
    dataplane.add_parser(sub)
    args = parser.parse_args(argv)
    workdir = Path(args.dir).resolve()
    if args.command == "dataplane":
        return dataplane.main(args, workdir)
    if args.action == "up":
        started = cluster.up(workdir)
        print(f"export KUBECONFIG={started.kubeconfig}")
        return 0
    stopped = cluster.down(workdir)
    print("stopped" if stopped else f"no control plane running in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
