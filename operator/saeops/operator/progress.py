"""Progress, metrics and the last checkpoint for status, from the rank-0 pod's /metrics and its
termination message (see outcome.py)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from saeops.api import layout
from saeops.api.uris import URIError, parse_storage_uri
from saeops.operator.conditions import rfc3339

# Prometheus sample name -> status.metrics key. Only these reach the status, so a chatty
# runtime cannot grow the object; values are strings (CRD printer columns, no float drift).
STATUS_METRICS = {
    "saeops_l0": "l0",
    "saeops_explained_variance": "explained_variance",
    "saeops_mse": "mse",
    "saeops_loss": "loss",
    "saeops_dead_fraction": "dead_fraction",
    "saeops_dead_features_fraction": "dead_fraction",
    "saeops_dense_fraction": "dense_fraction",
    "saeops_dense_features_fraction": "dense_fraction",
    "saeops_tokens_per_second": "tokens_per_second",
    "saeops_lr": "lr",
    "saeops_k": "k",
}
FINAL_METRICS = ("l0", "explained_variance", "mse", "dead_fraction", "dense_fraction", "tokens", "seconds")
TOKENS = "saeops_tokens_processed"
TOKENS_TOTAL = "saeops_tokens_total"
CHECKPOINT_STEP = "saeops_checkpoint_step"
MAX_CACHE_METRICS = 8


def fmt(value: Any) -> str | None:
    """A metric as a short string; None for non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.4g}"


def parse_prometheus(text: str, run: str | None = None) -> dict[str, float]:
    """Samples by name from Prometheus text exposition (first sample of each name wins).

    Per-hook-point series (CLTs) share a name; the first keeps status small and stable. With
    `run`, only the series labelled `run="<run>"` count (a group's pod serves each member's).
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if run is None or sample.labels.get("run") == run:
                out.setdefault(sample.name, float(sample.value))
    return out


def status_metrics(scraped: dict[str, float] | None) -> dict[str, str]:
    """status.metrics from a scrape."""
    out: dict[str, str] = {}
    for name, key in STATUS_METRICS.items():
        value = (scraped or {}).get(name)
        s = fmt(value)
        if s is not None and key not in out:
            out[key] = s
    return out


def final_metrics(final: dict[str, Any] | None) -> dict[str, str]:
    """status.metrics from the `final` dict rank 0 reported when the run ended."""
    out: dict[str, str] = {}
    for key in FINAL_METRICS:
        s = fmt((final or {}).get(key))
        if s is not None:
            out[key] = s
    return out


def cache_metrics(summary: dict[str, Any] | None) -> dict[str, str]:
    """status.metrics from the `cache` summary of a finished ActivationCache (a few numbers)."""
    out: dict[str, str] = {}
    for key, value in sorted((summary or {}).items())[:MAX_CACHE_METRICS]:
        s = fmt(value)
        if s is not None:
            out[key] = s
    return out


def checkpoint_uri(storage_uri: str, scraped: dict[str, float] | None) -> str | None:
    """`<storageUri>/checkpoints/<step dir>` of the step in `saeops_checkpoint_step`, if any."""
    step = (scraped or {}).get(CHECKPOINT_STEP)
    if step is None or not math.isfinite(step) or step < 1 or step != int(step):
        return None
    try:
        base = parse_storage_uri(storage_uri, allow_relative=False)
        return str(base.child(f"{layout.CHECKPOINTS}/{layout.checkpoint_dir(int(step))}"))
    except URIError:
        return None


def reported_checkpoint(storage_uri: str, reported: str | None) -> str | None:
    """A checkpoint URI a pod reported, kept only when it lies under the run's own storage."""
    if not reported:
        return None
    try:
        base = parse_storage_uri(storage_uri, allow_relative=False)
        uri = parse_storage_uri(reported, allow_relative=False)
    except URIError:
        return None
    return str(uri) if uri.is_within(base) else None


def progress(scraped: dict[str, float] | None, total_hint: int, now: datetime) -> dict[str, Any] | None:
    """status.progress from a scrape: tokens, total, percent and an ETA from the token rate."""
    if not scraped or TOKENS not in scraped:
        return None
    tokens = max(0, int(scraped[TOKENS]))
    total = int(scraped.get(TOKENS_TOTAL) or total_hint or 0)
    out: dict[str, Any] = {"tokens": tokens, "total": total}
    out["percent"] = f"{min(100.0, 100.0 * tokens / total):.1f}" if total > 0 else "0"
    rate = scraped.get("saeops_tokens_per_second") or 0.0
    if total > tokens and rate > 0 and math.isfinite(rate):
        out["eta"] = rfc3339(now + timedelta(seconds=(total - tokens) / rate))
    return out


def completed_progress(total: int) -> dict[str, Any]:
    """Progress of a finished run."""
    return {"tokens": total, "total": total, "percent": "100.0"}
