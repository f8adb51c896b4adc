"""Progress and metrics for status, from the rank-0 pod's /metrics and from metrics.json."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

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


def fmt(value: Any) -> str | None:
    """A metric as a short string; None for non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.4g}"


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples by name from Prometheus text exposition (first sample of each name wins).

    Per-hook-point series (CLTs) share a name; the first keeps status small and stable.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
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


def final_metrics(summary: dict[str, Any] | None) -> dict[str, str]:
    """status.metrics from metrics.json's `final` dict."""
    out: dict[str, str] = {}
    for key in FINAL_METRICS:
        s = fmt((summary or {}).get(key))
        if s is not None:
            out[key] = s
    return out


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
