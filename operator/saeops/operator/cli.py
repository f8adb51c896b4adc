"""`saeops operator`: run the kopf operator (namespaced or cluster-wide) under a cluster policy."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from saeops.api import EXIT_BAD_INPUT
from saeops.api.load import CommandParser
from saeops.api.uris import URIError
from saeops.operator.policy import ANY_POD, ClusterPolicy

DEFAULT_INTERVAL = 10.0


def _peer(text: str) -> dict[str, Any]:
    """A NetworkPolicyPeer given as JSON (argparse type)."""
    try:
        peer = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(peer, dict) or not peer or set(peer) - {"podSelector", "namespaceSelector", "ipBlock"}:
        raise argparse.ArgumentTypeError("a NetworkPolicyPeer: an object with podSelector, namespaceSelector or ipBlock")
    return peer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CommandParser(prog="saeops operator", description="Run the saeops Kubernetes operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="namespace to watch (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--metrics-port", type=int, default=8080, help="port of the operator's /metrics (0: off)")
    p.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between progress polls")
    p.add_argument("--max-backoff", type=float, default=300.0,
                   help="longest wait, in seconds, between retries after transient API errors")
    p.add_argument("--no-scanning", action="store_true",
                   help="do not watch namespaces/CRDs for changes (exact namespaces, CRDs installed first)")
    policy = p.add_argument_group("cluster policy", "what runs, caches and sweeps may use (default: anything)")
    policy.add_argument("--allowed-storage-prefix", action="append", default=[], metavar="URI",
                        help="storageUri must lie within one of these (repeatable); {namespace} is the "
                             "resource's namespace, e.g. s3://team-bucket/{namespace}")
    policy.add_argument("--allowed-image", action="append", default=[], metavar="IMAGE",
                        help="allowed spec.resources.image (repeatable); a trailing * matches a prefix")
    policy.add_argument("--allowed-service-account", action="append", default=[], metavar="NAME",
                        help="allowed spec.resources.serviceAccountName (repeatable; unset means 'default')")
    policy.add_argument("--no-run-network-policy", dest="run_network_policy", action="store_false",
                        help="do not give each run a NetworkPolicy")
    policy.add_argument("--metrics-from", action="append", type=_peer, default=[], metavar="JSON",
                        help="NetworkPolicyPeer allowed to scrape training pods' /metrics (repeatable; "
                             "default: pods of any namespace)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p.parse_args(argv)


def build_policy(args: argparse.Namespace) -> ClusterPolicy:
    """The ClusterPolicy the flags describe (URIError for a storage prefix that does not parse)."""
    return ClusterPolicy(
        storage_prefixes=tuple(args.allowed_storage_prefix),
        images=tuple(args.allowed_image),
        service_accounts=tuple(args.allowed_service_account),
        network_policy=args.run_network_policy,
        metrics_from=tuple(args.metrics_from) or (ANY_POD,),
    )


def run_operator(argv: list[str] | None = None) -> int:
    """Entry of `saeops operator [--namespace NS | --all-namespaces] [--metrics-port N] [--liveness URL] ...`."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # `saeops` configured logging before handing over; --verbose wins
    )
    try:
        policy = build_policy(args)
    except URIError as e:
        print(f"error: --allowed-storage-prefix: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import kopf
    from prometheus_client import start_http_server

    from saeops.operator.handlers import Operator, build_registry

    if args.metrics_port:
        start_http_server(args.metrics_port)
    op = Operator(interval=args.interval, scanning=not args.no_scanning, policy=policy, max_backoff=args.max_backoff)
    namespaces = args.namespace or ([] if args.all_namespaces else ["default"])
    kopf.run(
        registry=build_registry(op),
        standalone=True,
        clusterwide=bool(args.all_namespaces),
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0
