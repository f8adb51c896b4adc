"""The static HTML report: one self-contained file (inline CSS/JS, data as embedded JSON,
plots as base64 PNGs) that opens from object storage or disk without a server."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import torch
from torch import Tensor

from saeops.runtime.analysis.analyze import PAD_TOKEN, AnalysisResult
from saeops.runtime.analysis.plots import density_plot, l0_plot, loss_plot
from saeops.runtime.analysis.report_template import TEMPLATE

SUMMARY_KEYS = (("l0", "L0"), ("explained_variance", "explained variance"), ("mse", "MSE"),
                ("dead_fraction", "dead fraction"), ("tokens", "training tokens"))


def _num(x: float) -> float:
    """3 significant digits: the report shows no more, and the JSON stays small."""
    return float(f"{x:.3g}")


def _round3(t: Tensor) -> Tensor:
    """`_num` on a whole tensor (float64, so the values print as short decimals)."""
    t = t.double()
    out = torch.zeros_like(t)
    nz = t != 0
    e = 2 - torch.floor(torch.log10(t[nz].abs()))
    # Powers of ten are exact for a non-negative exponent: scale up by them, never by 10**-e.
    up = e >= 0
    scale = torch.pow(10.0, e.abs())
    x = t[nz]
    out[nz] = torch.where(up, torch.round(x * scale) / scale, torch.round(x / scale) * scale)
    return out


class _Contexts:
    """Contexts of one group (`top`/`weak`) as compact JSON-ready lists.

    Everything is converted with whole-tensor ops and one `tolist` per field (per-element work
    in Python dominated the report time of a 6144-feature dictionary).
    """

    def __init__(self, src: dict[str, Tensor], local: Tensor) -> None:
        self.value = _round3(src["value"]).tolist()
        self.window, self.position = src["window"].tolist(), src["position"].tolist()
        self.tokens = local.tolist()
        acts = _round3(src["acts"])
        self.sparse: dict[tuple[int, int], list[list[float]]] = {}
        nz = (acts > 0).nonzero()
        for (i, j, k), v in zip(nz.tolist(), acts[acts > 0].tolist(), strict=True):
            self.sparse.setdefault((i, j), []).append([k, v])

    def row(self, i: int) -> list[dict[str, Any]]:
        """Contexts of row `i`: `{v, w, p, t: [local token ids], a: [[index, act], ...]}`."""
        out = []
        for j, value in enumerate(self.value[i]):
            if value <= 0:
                continue
            toks = self.tokens[i][j]
            # Pads only occur at the ends (the window edges), so indices shift by the left pads.
            lead = next((k for k, t in enumerate(toks) if t != PAD_TOKEN), 0)
            out.append({"v": value, "w": self.window[i][j], "p": self.position[i][j],
                        "t": [t for t in toks if t != PAD_TOKEN],
                        "a": [[k - lead, v] for k, v in self.sparse.get((i, j), [])]})
        return out


def _local_vocab(result: AnalysisResult) -> tuple[Tensor, Tensor, Tensor]:
    """(token ids by descending use, local id of each sorted unique id, sorted unique ids):
    common tokens get short numbers in the JSON."""
    parts = [result.top["tokens"].flatten(), result.weak["tokens"].flatten()]
    if result.logits is not None:
        parts += [result.logits["top_ids"].flatten(), result.logits["bottom_ids"].flatten()]
    ids = torch.cat(parts)
    uniq, counts = torch.unique(ids[ids != PAD_TOKEN], return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return uniq[order], rank, uniq


def _to_local(ids: Tensor, rank: Tensor, uniq: Tensor) -> Tensor:
    pos = torch.searchsorted(uniq, ids.clamp_min(0))
    return torch.where(ids == PAD_TOKEN, PAD_TOKEN, rank[pos.clamp_max(len(uniq) - 1)])


def report_data(result: AnalysisResult) -> dict[str, Any]:
    """The JSON the report's script renders (features, contexts, histograms, logit tokens)."""
    by_use, rank, uniq = _local_vocab(result)
    top = _Contexts(result.top, _to_local(result.top["tokens"], rank, uniq))
    weak = _Contexts(result.weak, _to_local(result.weak["tokens"], rank, uniq))
    lg = None
    if result.logits is not None:
        lg = {"up": _to_local(result.logits["top_ids"], rank, uniq).tolist(),
              "up_v": _round3(result.logits["top_values"]).tolist(),
              "down": _to_local(result.logits["bottom_ids"], rank, uniq).tolist(),
              "down_v": _round3(result.logits["bottom_values"]).tolist()}
    count, freq = result.count.tolist(), result.frequency.tolist()
    mean, mx = _round3(result.mean).tolist(), _round3(result.max).tolist()
    hist = result.hist_counts.tolist()
    feats = []
    for i, f in enumerate(result.features.tolist()):
        item: dict[str, Any] = {"id": f, "count": count[f], "freq": freq[f], "mean": mean[f], "max": mx[f],
                                "hist": hist[f], "top": top.row(i), "weak": weak.row(i)}
        if lg is not None:
            item["up"] = [list(p) for p in zip(lg["up"][i], lg["up_v"][i], strict=True)]
            item["down"] = [list(p) for p in zip(lg["down"][i], lg["down_v"][i], strict=True)]
        feats.append(item)
    vocab = [result.vocab.get(t, "?") for t in by_use.tolist()]
    return {"meta": result.meta, "edges": [_num(e) for e in result.hist_edges.tolist()], "vocab": vocab,
            "features": feats}


def _fmt(x: Any) -> str:
    """A summary number: counts with thousands separators, other floats with 4 digits."""
    if isinstance(x, float) and x.is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:,}" if isinstance(x, int) else f"{x:.4g}" if isinstance(x, float) else str(x)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def render_report(result: AnalysisResult, metrics: dict[str, Any] | None = None, title: str | None = None) -> str:
    """The report as one HTML string. `metrics` is the run's `metrics.json` (summary + loss curves)."""
    meta = result.meta
    title = title or f"{meta.get('model', 'model')} · {meta.get('hook_point', '')}"
    final = (metrics or {}).get("final") or {}
    asked = meta.get("tokens_requested")
    analysed = f"{meta['tokens']:,}" + (f" (of {asked:,}: the dataset ended)" if asked and asked > meta["tokens"] else "")
    facts = [("features", f"{meta['d_sae']:,}"), ("analysed tokens", analysed),
             ("alive", f"{int((result.count > 0).sum()):,}")]
    facts += [(label, _fmt(final[k])) for k, label in SUMMARY_KEYS if k in final]
    summary = "".join(f"<div class=fact><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>"
                      for k, v in facts)
    plots = _img(density_plot(result), "feature density") + _img(l0_plot(result), "L0 per token") + _img(
        loss_plot(metrics), "training curves")
    # `</` must not appear inside <script>: escape it in the JSON (still valid JSON).
    data = json.dumps(report_data(result), separators=(",", ":")).replace("</", "<\\/")
    return (TEMPLATE.replace("%%TITLE%%", html.escape(title)).replace("%%SUMMARY%%", summary)
            .replace("%%PLOTS%%", plots).replace("%%DATA%%", data))


__all__ = ["render_report", "report_data"]
