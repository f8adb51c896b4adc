"""Run-level plots for the report, rendered with matplotlib (Agg) to PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import torch

from saeops.runtime.analysis.analyze import AnalysisResult

HISTORY_KEYS = (("explained_variance", "explained variance"), ("mse", "MSE"), ("l0", "L0"))


def _figure(width: float = 4.2, height: float = 2.8) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display in pods or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def density_plot(result: AnalysisResult) -> bytes:
    """Histogram of log10 feature frequency; dead features counted apart (log10 0 is -inf)."""
    freq = result.frequency.double()
    alive = freq[freq > 0]
    fig, ax = _figure()
    if len(alive):
        ax.hist(torch.log10(alive).numpy(), bins=40, color="#1a73e8")
    dead = int((freq == 0).sum())
    ax.set_title(f"feature density ({dead} of {len(freq)} never fired)", fontsize=10)
    ax.set_xlabel("log10 activation frequency")
    ax.set_ylabel("features")
    return _png(fig)


def l0_plot(result: AnalysisResult) -> bytes:
    """Distribution of the number of active features per token."""
    counts = result.l0_counts.double()
    fig, ax = _figure()
    ax.bar(range(len(counts)), counts.numpy(), width=1.0, color="#9334e6")
    mean = float((counts * torch.arange(len(counts))).sum() / counts.sum().clamp_min(1))
    ax.set_title(f"L0 per token (mean {mean:.1f})", fontsize=10)
    ax.set_xlabel("active features")
    ax.set_ylabel("tokens")
    return _png(fig)


def loss_plot(metrics: dict[str, Any] | None) -> bytes | None:
    """EV / MSE / L0 over training steps from `metrics.json` history; None without history."""
    history = (metrics or {}).get("history") or []
    if not history:
        return None
    steps = [h.get("step", i) for i, h in enumerate(history)]
    keys = [(k, label) for k, label in HISTORY_KEYS if any(k in h for h in history)]
    if not keys:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 2.6), dpi=100, squeeze=False)
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        pts = [(s, h[key]) for s, h in zip(steps, history, strict=True) if isinstance(h.get(key), int | float)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#188038", marker="o", markersize=2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


__all__ = ["density_plot", "l0_plot", "loss_plot"]
