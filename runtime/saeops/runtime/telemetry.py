"""Prometheus metrics of the training runtime, served by rank 0 on /metrics.

The names are a contract: the operator scrapes them for `status.progress` and
`status.metrics`, and the Grafana dashboard queries them. Labels: run, namespace,
hook_point (one series per layer for cross-layer transcoders).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, start_http_server

LABELS = ("run", "namespace", "hook_point")

# name -> help; every one is a gauge labelled by LABELS (loss also by term).
GAUGES: dict[str, str] = {
    "saeops_l0": "Mean number of active latents per token",
    "saeops_explained_variance": "Explained variance of the reconstruction (1 - SSE / SST)",
    "saeops_mse": "Mean squared reconstruction error (normalised space)",
    "saeops_dead_fraction": "Fraction of latents that did not fire within the dead window",
    "saeops_dense_fraction": "Fraction of latents firing on more than the dense threshold",
    "saeops_tokens_processed": "Tokens trained on so far",
    "saeops_tokens_total": "Tokens the run will train on",
    "saeops_tokens_per_second": "Training throughput",
    "saeops_step": "Optimiser steps done",
    "saeops_progress_ratio": "Fraction of the run done (0..1)",
    "saeops_learning_rate": "Current learning rate",
    "saeops_checkpoint_step": "Optimiser steps at the last checkpoint (0: none yet)",
}
LOSS_GAUGE = "saeops_loss"
POD_IP_ENV = "SAEOPS_POD_IP"
"""The pod's IP (downward API `status.podIP`): servers bind there, not on every interface, so
pods that share a network namespace (host networking, or a test that runs pods as containers
on one host) never collide on a port."""


def bind_address(default: str = "0.0.0.0") -> str:
    """Where this process's servers listen: the pod IP when the pod says it, else `default`."""
    return os.environ.get(POD_IP_ENV) or default


class RunMetrics:
    """Holds the run's gauges in a private registry and optionally serves them over HTTP."""

    def __init__(self, run: str, namespace: str = "default") -> None:
        self.run = run
        self.namespace = namespace
        self.registry = CollectorRegistry()
        self.gauges = {n: Gauge(n, h, LABELS, registry=self.registry) for n, h in GAUGES.items()}
        self.loss = Gauge(LOSS_GAUGE, "Loss terms of the last logged step", (*LABELS, "term"),
                          registry=self.registry)
        self.port: int | None = None
        self._server = None

    def member(self, run: str, namespace: str) -> RunMetrics:
        """A view on these gauges for one member of a training group: its series carry its own
        `run` label; the endpoint (served by this object) is shared."""
        view = object.__new__(RunMetrics)
        view.__dict__.update(self.__dict__, run=run, namespace=namespace, _server=None)
        return view

    def serve(self, port: int, addr: str | None = None) -> int:
        """Start the /metrics server (on `bind_address()` unless `addr`); port 0 picks a free
        port. Returns the bound port."""
        server, _thread = start_http_server(port, addr=addr or bind_address(), registry=self.registry)
        self._server = server
        self.port = server.server_address[1]
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def update(self, hook_point: str, values: Mapping[str, float], loss_terms: Mapping[str, float] = {}) -> None:
        """Set gauges from a metrics dict keyed by short names (`l0`, `explained_variance`, ...)."""
        labels = (self.run, self.namespace, hook_point)
        for key, value in values.items():
            gauge = self.gauges.get(f"saeops_{key}")
            if gauge is not None:
                gauge.labels(*labels).set(float(value))
        for term, value in loss_terms.items():
            self.loss.labels(*labels, term).set(float(value))
