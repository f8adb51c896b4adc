"""Stream context windows through a dictionary and summarise every feature.

`analyze` reads whole windows (so every top activation can be shown in its context), encodes
every kept token, and keeps, with memory independent of the number of tokens:

- per analysed feature, the exact top-N activations with the token window around each
  (`StreamingTopK` scored by value) and a uniform sample of weaker activations for contrast
  (a second `StreamingTopK` scored by random keys, minus the top-N entries at the end);
- per feature (all of them): firing count, sum and max, and a histogram of values over
  fixed log-spaced bins;
- per token: the L0 distribution (a bincount);
- per analysed feature: the output tokens its decoder direction promotes / suppresses
  through the unembedding, where the model has one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saeops.runtime.analysis.topn import StreamingTopK, sparse_candidates
from saeops.runtime.models import SparseAutoEncoder, SparseDictionary

PAD_TOKEN = -1
"""Token id of context slots that fall outside the window."""
SUPPORTED_KINDS = ("sae", "transcoder")


class AnalysisError(ValueError):
    """The analysis cannot run on this dictionary / model / data."""


@dataclass
class AnalysisResult:
    """Everything the report shows. Tensors are on the CPU.

    `features` are the analysed feature ids (the report's cards, `max_features` of them); the
    `top_*`/`weak_*` contexts and `logit_*` tensors are indexed by position in `features`,
    while `count`/`frequency`/`mean`/`max`/`hist_counts` cover all `d_sae` features.
    """

    meta: dict[str, Any]
    features: Tensor
    count: Tensor
    """(d_sae,) tokens on which the feature fired (activation > 0)."""
    frequency: Tensor
    """(d_sae,) count / tokens analysed."""
    mean: Tensor
    """(d_sae,) mean activation over the tokens where it fired (0 when it never fired)."""
    max: Tensor
    """(d_sae,) largest activation (0 when it never fired)."""
    hist_edges: Tensor
    """(bins + 1,) log-spaced bin edges; values outside go to the first / last bin."""
    hist_counts: Tensor
    """(d_sae, bins) activation value counts."""
    l0_counts: Tensor
    """(max L0 + 1,) number of tokens with each L0."""
    top: dict[str, Tensor]
    """`value, window, position (F, N)`, `tokens, acts (F, N, 2r+1)`; value 0 = empty slot."""
    weak: dict[str, Tensor]
    """Same fields, (F, n_weak, ...): a uniform sample of the non-top activations."""
    logits: dict[str, Tensor] | None = None
    """`top_ids, top_values, bottom_ids, bottom_values (F, k)`; None without an unembedding."""
    vocab: dict[int, str] = field(default_factory=dict)
    """Display string of every token id used above."""

    def row(self, feature: int) -> int:
        """Position of `feature` in `features` (KeyError when it was not analysed)."""
        hits = (self.features == feature).nonzero()
        if len(hits) == 0:
            raise KeyError(f"feature {feature} was not analysed")
        return int(hits[0, 0])

    def contexts(self, feature: int, weak: bool = False) -> list[dict[str, Any]]:
        """Top (or weak) contexts of one feature as plain dicts, strongest first."""
        i, src = self.row(feature), self.weak if weak else self.top
        out = []
        for j in range(src["value"].shape[1]):
            value = float(src["value"][i, j])
            if value <= 0:
                continue
            toks = src["tokens"][i, j]
            keep = toks != PAD_TOKEN
            out.append({
                "value": value, "window": int(src["window"][i, j]), "position": int(src["position"][i, j]),
                "tokens": toks[keep].tolist(), "acts": src["acts"][i, j][keep].tolist(),
                "text": [self.vocab.get(int(t), "?") for t in toks[keep]],
            })
        return out


def _log_edges(max_value: float, bins: int) -> Tensor:
    """Bins spanning three decades below the first batch's max and half of one above (values
    outside land in the end bins): fixed from then on, so histograms are comparable across
    features and batches merge by addition."""
    top = math.log10(max(max_value, 1e-12)) + 0.5
    return torch.logspace(top - 3.5, top, bins + 1)


def _gather_contexts(rows: Tensor, acts3: Tensor, tokens: Tensor, windows: Tensor, radius: int) -> dict[str, Tensor]:
    """Payloads of candidate rows `(F, c)` (flat row = b * T + t) from `acts3 (B, T, F)`."""
    _, T, F = acts3.shape
    b, t = rows // T, rows % T
    offsets = torch.arange(-radius, radius + 1, device=rows.device)
    tc = t[..., None] + offsets
    inside = (tc >= 0) & (tc < T)
    tcc = tc.clamp(0, T - 1)
    bb = b[..., None].expand_as(tc)
    f = torch.arange(F, device=rows.device)
    ctx_tokens = torch.where(inside, tokens[bb, tcc], PAD_TOKEN)
    ctx_acts = torch.where(inside, acts3[bb, tcc, f[:, None, None].expand_as(tc)], 0.0)
    return {"value": acts3[b, t, f[:, None].expand_as(t)], "window": windows[b], "position": t,
            "tokens": ctx_tokens, "acts": ctx_acts}


def token_strings(lm: Any, ids: Iterable[int]) -> dict[int, str]:
    """Display text of each token id. WordPiece continuation pieces (`##ing`) attach to the
    previous token; other WordPiece tokens get a leading space, as the text had."""
    tok = lm.tokenizer
    ids = sorted({int(i) for i in ids if int(i) >= 0})
    if getattr(lm, "is_bert_like", False) and hasattr(tok, "convert_ids_to_tokens"):
        pieces = tok.convert_ids_to_tokens(ids)
        return {i: p[2:] if p.startswith("##") else " " + p for i, p in zip(ids, pieces, strict=True)}
    out = {}
    for i in ids:
        try:
            out[i] = tok.decode([i])
        except (ValueError, IndexError, KeyError, TypeError, OverflowError):
            # An id past the tokenizer's vocabulary (a native model's padded d_vocab).
            out[i] = f"<{i}>"
    return out


@torch.no_grad()
def logit_effects(lm: Any, model: SparseAutoEncoder, features: Tensor, k: int = 10, chunk: int = 512) -> dict[str, Tensor] | None:
    """Top/bottom `k` output tokens of each feature's decoder row through W_U (`W_dec @ W_U`,
    the direct effect, ignoring the final layer norm). None when the model has no unembedding
    or the decoder does not write to the residual width."""
    W_U = lm.unembed() if hasattr(lm, "unembed") else None
    if W_U is None or model.W_dec.shape[-1] != W_U.shape[0]:
        return None
    W_U = W_U.float()
    # The decoder writes in the normalised space; a constant factor maps it to raw units.
    scale = 1.0 / float(model.norm_factor_out) if model.spec.norm_activation == "dataset-wise" else 1.0
    k = min(k, W_U.shape[1])
    parts: dict[str, list[Tensor]] = {"top_ids": [], "top_values": [], "bottom_ids": [], "bottom_values": []}
    for start in range(0, len(features), chunk):
        rows = model.W_dec[features[start:start + chunk].to(model.W_dec.device)].float() * scale
        effect = rows.to(W_U.device) @ W_U
        tv, ti = effect.topk(k, dim=1)
        bv, bi = (-effect).topk(k, dim=1)
        for name, t in (("top_ids", ti), ("top_values", tv), ("bottom_ids", bi), ("bottom_values", -bv)):
            parts[name].append(t.cpu())
    return {name: torch.cat(ts) for name, ts in parts.items()}


class _Stats:
    """Per-feature running statistics over kept tokens (all bounded by d_sae x bins)."""

    def __init__(self, d_sae: int, bins: int, device: torch.device) -> None:
        self.d_sae, self.bins = d_sae, bins
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max = torch.zeros(d_sae, device=device)
        self.hist = torch.zeros(d_sae * bins, dtype=torch.int64, device=device)
        self.l0 = torch.zeros(1, dtype=torch.int64, device=device)
        self.edges: Tensor | None = None
        self.tokens = 0

    def update(self, rows: Tensor, cols: Tensor, values: Tensor, kept_rows: Tensor) -> None:
        """Fold in the active entries `(row, feature, value)` of a batch whose kept (non-special)
        token rows are `kept_rows`; rows absent from the entries have L0 0."""
        self.tokens += len(kept_rows)
        self.count += torch.bincount(cols, minlength=self.d_sae)
        self.sum.index_add_(0, cols, values.double())
        self.max.scatter_reduce_(0, cols, values.float(), reduce="amax")
        per_row = torch.zeros(int(kept_rows.max()) + 1 if len(kept_rows) else 1, dtype=torch.int64,
                              device=cols.device)
        per_row.index_add_(0, rows, torch.ones_like(rows))
        l0 = torch.bincount(per_row[kept_rows], minlength=1)
        if len(l0) > len(self.l0):
            self.l0 = torch.cat([self.l0, torch.zeros(len(l0) - len(self.l0), dtype=torch.int64, device=l0.device)])
        self.l0[: len(l0)] += l0
        if len(values) == 0:
            return
        if self.edges is None:
            self.edges = _log_edges(float(values.max()), self.bins).to(values.device)
        bins = torch.bucketize(values.float(), self.edges[1:-1], right=True).clamp(0, self.bins - 1)
        self.hist.index_add_(0, cols * self.bins + bins, torch.ones_like(cols))


def _entries(model: SparseDictionary, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Active entries `(row, feature, value)` of `x (rows, d)` on rows where `mask` is set."""
    fa = model.encode(x)
    if fa.is_sparse:
        values, indices = fa.values, fa.indices
        rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(indices)
        on = (values > 0) & mask[:, None]
        return rows[on], indices[on], values[on].float()
    dense = fa.dense()
    rows, cols = ((dense > 0) & mask[:, None]).nonzero(as_tuple=True)
    return rows, cols, dense[rows, cols].float()


def check_model(model: SparseDictionary) -> SparseAutoEncoder:
    """The dictionary, if analysis and interventions support its kind (one decoder row per feature)."""
    if not isinstance(model, SparseAutoEncoder):
        raise AnalysisError(f"spec.sae.type: analysis supports {', '.join(SUPPORTED_KINDS)}, not {model.spec.type}")
    return model


@torch.no_grad()
def analyze(lm: Any, model: SparseDictionary, stream_windows: Iterable[dict[str, Tensor]], *, top_n: int = 16,
            n_weak: int = 8, context_radius: int = 8, max_features: int | None = None,
            tokens: int | None = None, bins: int = 32, seed: int = 0) -> AnalysisResult:
    """Summarise every feature over `stream_windows` (`ActivationStream.iter_windows()`
    batches: `{hook: (B, T, d), "tokens", "mask", "windows", ...}`) over exactly `tokens` kept
    (non-special) tokens, fewer only when the stream ends first (None: the whole stream). Contexts are kept for the first
    `max_features` features (None: all); statistics cover all features."""
    sae = check_model(model)
    hook = str(sae.spec.hook_point_in)
    d_sae = int(model.d_sae)
    n_feat = d_sae if max_features is None else min(max_features, d_sae)
    device = sae.W_dec.device
    width = 2 * context_radius + 1
    shapes = {"value": ((), torch.float32), "window": ((), torch.int64), "position": ((), torch.int64),
              "tokens": ((width,), torch.int64), "acts": ((width,), torch.float32)}
    top = StreamingTopK(n_feat, top_n, shapes, device)
    # Top-N + n_weak uniform samples: after dropping those in the top-N, >= n_weak remain.
    pool = StreamingTopK(n_feat, top_n + n_weak, shapes, device) if n_weak > 0 else None
    stats = _Stats(d_sae, bins, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    n_windows, context = 0, 0
    was_training = model.training
    model.eval()
    for batch in stream_windows:
        if tokens is not None and stats.tokens >= tokens:
            break
        x = batch[hook].to(device)
        B, T = x.shape[:2]
        context = T
        mask = batch["mask"].to(device).reshape(-1)
        if tokens is not None:
            # Exactly `tokens` kept tokens: the batch's last window is cut at the first kept tokens
            # that complete the count (its later tokens still show in contexts, with no activation).
            kept = mask.nonzero().flatten()
            if len(kept) > tokens - stats.tokens:
                mask = mask.clone()
                mask[kept[tokens - stats.tokens:]] = False
        rows, cols, values = _entries(model, x.reshape(B * T, -1), mask)
        stats.update(rows, cols, values, mask.nonzero().flatten())
        n_windows += B
        # Contexts only for the analysed features; a dense (B, T, F) copy makes gathering the
        # activations around each candidate a plain index.
        mine = cols < n_feat
        rows, cols, values = rows[mine], cols[mine], values[mine]
        acts3 = torch.zeros(B * T, n_feat, device=device)
        acts3[rows, cols] = values
        acts3 = acts3.reshape(B, T, n_feat)
        toks, wins = batch["tokens"].to(device), batch["windows"].to(device)
        cand, cand_rows = sparse_candidates(rows, cols, values, n_feat, top_n)
        top.merge(cand, _gather_contexts(cand_rows, acts3, toks, wins, context_radius))
        if pool is not None:
            keys = torch.rand(values.shape, generator=gen, device=device)
            cand, cand_rows = sparse_candidates(rows, cols, keys, n_feat, pool.k)
            pool.merge(cand, _gather_contexts(cand_rows, acts3, toks, wins, context_radius))
    model.train(was_training)
    if stats.tokens == 0:
        raise AnalysisError("spec.dataset: the analysis stream produced no tokens")

    top_fields = {k: v.cpu() for k, v in top.payload.items()}
    top_fields["value"] = torch.where(top.valid.cpu(), top_fields["value"], 0.0)
    weak_fields = _weak_sample(pool, top_fields, n_weak, context)
    feats = torch.arange(n_feat)
    logits = logit_effects(lm, sae, feats)
    ids = torch.cat([top_fields["tokens"].flatten(), weak_fields["tokens"].flatten()])
    if logits is not None:
        ids = torch.cat([ids, logits["top_ids"].flatten(), logits["bottom_ids"].flatten()])
    count = stats.count.cpu()
    edges = stats.edges if stats.edges is not None else _log_edges(1.0, bins)
    meta = {"tokens": stats.tokens, "tokens_requested": tokens, "windows": n_windows, "context_size": context, "top_n": top_n,
            "n_weak": n_weak, "context_radius": context_radius, "d_sae": d_sae, "hook_point": hook,
            "kind": model.spec.type, "model": getattr(lm.spec, "name", "?"),
            "bins": bins}
    return AnalysisResult(
        meta=meta, features=feats, count=count, frequency=count.double() / stats.tokens,
        mean=(stats.sum.cpu() / count.clamp_min(1)).float(), max=stats.max.cpu(), hist_edges=edges.cpu(),
        hist_counts=stats.hist.reshape(d_sae, bins).cpu(), l0_counts=stats.l0.cpu(), top=top_fields,
        weak=weak_fields, logits=logits, vocab=token_strings(lm, torch.unique(ids).tolist()),
    )


def _weak_sample(pool: StreamingTopK | None, top: dict[str, Tensor], n_weak: int, context: int) -> dict[str, Tensor]:
    """The uniform pool minus the entries that made the top-N, first `n_weak` kept, sorted by
    value (a uniform sample of the non-top activations: removing a fixed subset and truncating a
    uniformly ordered sample keeps it uniform)."""
    if pool is None:
        return {k: v[:, :0] for k, v in top.items()}
    p = {k: v.cpu() for k, v in pool.payload.items()}
    key = p["window"] * context + p["position"]
    top_key = torch.where(top["value"] > 0, top["window"] * context + top["position"], -1)
    in_top = (key[:, :, None] == top_key[:, None, :]).any(-1)
    keep = pool.valid.cpu() & ~in_top
    # Kept entries first, in pool (random-key) order, then the n_weak first of them by value.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n_weak]
    keep = torch.gather(keep, 1, order)
    out = {k: torch.gather(v, 1, order.reshape(*order.shape, *([1] * (v.dim() - 2))).expand(-1, -1, *v.shape[2:]))
           for k, v in p.items()}
    out["value"] = torch.where(keep, out["value"], 0.0)
    by_value = torch.argsort(out["value"], dim=1, descending=True, stable=True)
    return {k: torch.gather(v, 1, by_value.reshape(*by_value.shape, *([1] * (v.dim() - 2))).expand(
        -1, -1, *v.shape[2:])) for k, v in out.items()}


__all__ = ["PAD_TOKEN", "AnalysisError", "AnalysisResult", "analyze", "logit_effects", "token_strings"]
