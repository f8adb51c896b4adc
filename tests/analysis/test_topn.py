"""Streaming top-N is exact (against brute force) and its memory does not grow with the data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saeops.runtime.analysis import StreamingTopK, analyze, sparse_candidates
from saeops.runtime.analysis.analyze import PAD_TOKEN
from tests.analysis.conftest import HOOK, make_sae, window_stream
from tests.runtime.conftest import write_corpus


def stream_random(scores: torch.Tensor, k: int, chunk: int) -> StreamingTopK:
    """Feed `scores (rows, F)` (0 = inactive) through a StreamingTopK, `chunk` rows at a time."""
    buf = StreamingTopK(scores.shape[1], k, {"row": ((), torch.int64)})
    for start in range(0, scores.shape[0], chunk):
        part = scores[start:start + chunk]
        rows, cols = (part > 0).nonzero(as_tuple=True)
        cand, cand_rows = sparse_candidates(rows, cols, part[rows, cols], scores.shape[1], k)
        buf.merge(cand, {"row": cand_rows + start})
    return buf


def test_streaming_topk_equals_sorting_everything() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(900, 20, generator=gen)
    scores[scores < 0.7] = 0  # sparse, and feature 19 almost never fires
    scores[:, 19] = 0
    scores[5, 19] = 0.9
    buf = stream_random(scores, k=6, chunk=64)
    for f in range(20):
        active = (scores[:, f] > 0).nonzero().flatten()
        best = active[torch.argsort(scores[active, f], descending=True)][:6]
        valid = buf.valid[f]
        assert set(buf.payload["row"][f][valid].tolist()) == set(best.tolist())
        assert torch.equal(buf.scores[f][valid], scores[best, f])
    assert int(buf.valid[19].sum()) == 1


def test_buffer_memory_is_independent_of_data_length() -> None:
    gen = torch.Generator().manual_seed(1)
    small = stream_random(torch.rand(500, 16, generator=gen), k=4, chunk=50)
    large = stream_random(torch.rand(1000, 16, generator=gen), k=4, chunk=50)
    assert small.nbytes() == large.nbytes() > 0
    assert {k: v.shape for k, v in small.payload.items()} == {k: v.shape for k, v in large.payload.items()}


def brute_force(lm, model, corpus: Path, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every kept token's activations `(n, F)` (all materialised) and its (window, position)."""
    acts, where = [], []
    for batch in window_stream(lm, corpus, context).iter_windows():
        B, T = batch["tokens"].shape
        dense = model.encode(batch[HOOK].reshape(B * T, -1)).dense().detach().reshape(B, T, -1)
        for b, t in batch["mask"].nonzero().tolist():
            acts.append(dense[b, t])
            where.append((int(batch["windows"][b]), t))
    return torch.stack(acts), torch.tensor(where)


@pytest.mark.parametrize("act_fn", ["relu", "topk"])
def test_analyze_top_n_equals_brute_force(tiny_lm, corpus: Path, act_fn: str) -> None:
    model = make_sae(act_fn)
    top_n, radius, context = 5, 3, 24
    res = analyze(tiny_lm, model, window_stream(tiny_lm, corpus, context).iter_windows(), top_n=top_n,
                  n_weak=4, context_radius=radius)
    acts, where = brute_force(tiny_lm, model, corpus, context)
    windows = {int(b["windows"][i]): b["tokens"][i] for b in window_stream(tiny_lm, corpus, context).iter_windows()
               for i in range(len(b["windows"]))}
    assert res.meta["tokens"] == acts.shape[0]
    for f in range(model.d_sae):
        col = acts[:, f]
        active = (col > 0).nonzero().flatten()
        ranked = active[torch.argsort(col[active], descending=True, stable=True)]
        best = ranked[:top_n]
        got = res.top["value"][f]
        n_valid = int((got > 0).sum())
        assert n_valid == len(best)
        # Same values; same (window, position) set except where values tie at the cut-off
        # (identical prefixes give bitwise-identical activations in a causal model).
        assert torch.equal(got[:n_valid], col[best])
        cut = col[best[-1]] if len(best) else 0
        pairs = {tuple(where[i].tolist()) for i in best.tolist() if col[i] > cut}
        got_pairs = {(int(w), int(p)) for w, p in zip(res.top["window"][f][:n_valid], res.top["position"][f][:n_valid],
                                                      strict=True)}
        assert pairs <= got_pairs
        lookup = {tuple(where[i].tolist()): float(col[i]) for i in active.tolist()}
        for j, (w, p) in enumerate(sorted(got_pairs, key=lambda x: -lookup[x])):
            assert lookup[(w, p)] == pytest.approx(float(got[j]), abs=0)
        for j in range(n_valid):  # the context is the window's tokens around the top token
            w, p = int(res.top["window"][f][j]), int(res.top["position"][f][j])
            ctx = res.top["tokens"][f][j]
            for o in range(-radius, radius + 1):
                want = int(windows[w][p + o]) if 0 <= p + o < context else PAD_TOKEN
                assert int(ctx[o + radius]) == want
            assert float(res.top["acts"][f][j][radius]) == float(got[j])
        # Weak samples are real activations outside the top-N.
        for j in range((res.weak["value"][f] > 0).sum()):
            key = (int(res.weak["window"][f][j]), int(res.weak["position"][f][j]))
            assert key not in got_pairs and lookup[key] == float(res.weak["value"][f][j])
    # Statistics over every kept token.
    assert torch.equal(res.count, (acts > 0).sum(0))
    assert torch.allclose(res.max, acts.max(0).values.clamp_min(0))
    fired = acts.clamp_min(0).sum(0) / (acts > 0).sum(0).clamp_min(1)
    assert torch.allclose(res.mean, fired, rtol=1e-5)
    assert torch.equal(res.hist_counts.sum(1), res.count)
    assert int(res.l0_counts.sum()) == acts.shape[0]


def test_result_size_does_not_grow_with_tokens(tiny_lm, tmp_path: Path) -> None:
    model = make_sae("relu")
    shapes = []
    for n_docs in (30, 60):
        corpus = write_corpus(tmp_path / f"c{n_docs}.jsonl", n_docs)
        res = analyze(tiny_lm, model, window_stream(tiny_lm, corpus).iter_windows(), top_n=4, n_weak=2,
                      context_radius=2)
        shapes.append(({k: v.shape for k, v in res.top.items()}, {k: v.shape for k, v in res.weak.items()},
                       res.hist_counts.shape, res.meta["tokens"]))
    assert shapes[0][:3] == shapes[1][:3]
    assert shapes[1][3] > 1.8 * shapes[0][3]  # twice the data went through the same buffers


def test_token_budget_and_feature_subset(tiny_lm, corpus: Path) -> None:
    model = make_sae("relu")
    res = analyze(tiny_lm, model, window_stream(tiny_lm, corpus).iter_windows(), top_n=3, max_features=7,
                  tokens=50)
    assert res.top["value"].shape == (7, 3) and res.count.shape == (model.d_sae,)
    assert res.meta["tokens"] == 50 and int(res.l0_counts.sum()) == 50  # exactly the budget, mid-window
    assert res.logits is not None and res.logits["top_ids"].shape == (7, 10)
    assert all(isinstance(res.vocab[int(t)], str) for t in res.logits["top_ids"].flatten())


@pytest.mark.parametrize("budget", [1, 23, 50, 97])
def test_token_budget_counts_the_first_n_kept_tokens(tiny_lm, corpus: Path, budget: int) -> None:
    model = make_sae("relu")
    res = analyze(tiny_lm, model, window_stream(tiny_lm, corpus).iter_windows(), top_n=3, tokens=budget)
    acts, where = brute_force(tiny_lm, model, corpus, 24)
    first = acts[:budget]
    assert res.meta["tokens"] == budget and res.meta["tokens_requested"] == budget
    assert torch.equal(res.count, (first > 0).sum(0))
    assert torch.allclose(res.max, first.max(0).values.clamp_min(0))
    # No top context comes from a token past the budget.
    seen = {tuple(w) for w in where[:budget].tolist()}
    valid = res.top["value"] > 0
    got = set(zip(res.top["window"][valid].tolist(), res.top["position"][valid].tolist(), strict=True))
    assert got <= seen


def test_token_budget_past_the_stream_analyses_what_there_is(tiny_lm, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "small.jsonl", 3)
    model = make_sae("relu")
    res = analyze(tiny_lm, model, window_stream(tiny_lm, corpus).iter_windows(), top_n=3, tokens=10**6)
    acts, _ = brute_force(tiny_lm, model, corpus, 24)
    assert res.meta["tokens"] == acts.shape[0] < 10**6 and res.meta["tokens_requested"] == 10**6
