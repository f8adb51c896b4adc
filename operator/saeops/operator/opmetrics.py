"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "saeops_operator_reconciles_total", "Reconciles by kind and result (ok, error).", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "saeops_operator_reconcile_seconds", "Reconcile latency, including API calls.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RUNS = Gauge("saeops_operator_runs", "Resources by kind and phase.", ["kind", "phase"])
API_ERRORS = Counter(
    "saeops_operator_api_errors_total",
    "Kubernetes API calls that failed, by resource, HTTP method and status code (or 'unreachable').",
    ["resource", "method", "code"],
)
RETRIES = Counter(
    "saeops_operator_retries_total",
    "Reconciles retried with exponential backoff after a transient error, by kind.", ["kind"],
)
REJECTIONS = Counter(
    "saeops_operator_rejections_total",
    "Creates or patches the API server refused for good (the resource is then Failed), by kind.", ["kind"],
)

_phases: dict[tuple[str, str, str], str] = {}


def record_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Remember one resource's phase (None: deleted) and refresh the gauge."""
    key = (kind, namespace, name)
    if phase is None:
        _phases.pop(key, None)
    else:
        _phases[key] = phase
    counts: dict[tuple[str, str], int] = {}
    for (k, _, _), p in _phases.items():
        counts[(k, p)] = counts.get((k, p), 0) + 1
    for (k, p) in list(RUNS._metrics):  # reset series that dropped to zero
        if (k, p) not in counts:
            RUNS.labels(k, p).set(0)
    for (k, p), n in counts.items():
        RUNS.labels(k, p).set(n)
