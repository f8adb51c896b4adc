"""`saeops operator`: run the kopf operator (namespaced or cluster-wide)."""

from __future__ import annotations

import argparse
import logging

DEFAULT_INTERVAL = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="saeops operator", description="Run the saeops Kubernetes operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="namespace to watch (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--metrics-port", type=int, default=8080, help="port of the operator's /metrics (0: off)")
    p.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between progress polls")
    p.add_argument("--no-scanning", action="store_true",
                   help="do not watch namespaces/CRDs for changes (exact namespaces, CRDs installed first)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p.parse_args(argv)


def run_operator(argv: list[str] | None = None) -> int:
    """Entry of `saeops operator [--namespace NS | --all-namespaces] [--metrics-port N] [--liveness URL]`."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # `saeops` configured logging before handing over; --verbose wins
    )
    import kopf
    from prometheus_client import start_http_server

    from saeops.operator.handlers import Operator, build_registry

    if args.metrics_port:
        start_http_server(args.metrics_port)
    op = Operator(interval=args.interval, scanning=not args.no_scanning)
    namespaces = args.namespace or ([] if args.all_namespaces else ["default"])
    kopf.run(
        registry=build_registry(op),
        standalone=True,
        clusterwide=bool(args.all_namespaces),
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0
