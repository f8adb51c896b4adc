"""Splice a dictionary's reconstruction into the language model and measure what it costs.

For every kind the clean run provides the dictionary's input activations; the reconstruction
then replaces the output hook point(s) in a second run:

- SAE / transcoder: `hook_point_out <- model(activations at hook_point_in)`;
- CLT: every `hook_points_out[t]` at once, from the clean inputs of all layers (open loop:
  upstream splices do not feed the CLT's own inputs, which keeps every layer's error visible
  instead of letting early errors compound);
- Lorsa: `hook_point_out <- model(sequence at hook_point_in)`.

Reported: next-token cross-entropy with the original activations, the reconstruction, zero
ablation and mean ablation (the activation's mean over the evaluated tokens), the fraction of
loss recovered `(L_zero - L_splice) / (L_zero - L_orig)` (and against mean ablation), and the
KL divergence `KL(p_orig || p_splice)` of next-token distributions.

An encoder without an LM head (MiniLM) has no next-token loss; its product is the sentence
embedding, so there the "loss" is the cosine distance between the mean-pooled final hidden
states of the clean run and of the spliced (or ablated) run: 0 for the clean run, and loss
recovered keeps its meaning (`loss_kind` says which loss was used; KL is not reported).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from saeops.runtime.models.base import SparseDictionary

Replacement = Callable[[Tensor], Tensor]


class EvalError(ValueError):
    """The evaluation cannot be defined for this model / dictionary."""


# ---------------------------------------------------------------- the language model side


class _Runner:
    """Clean activations and logits with replacements, for a `saeops.runtime.lm` LanguageModel
    or a bare TransformerBridge."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.bridge = lm if hasattr(lm, "run_with_hooks") else getattr(lm, "bridge", None)
        # Encoders (no LM head): `logits` are the final hidden states (the lm package's contract).
        self.encoder = getattr(lm, "has_lm_head", True) is False

    def logits(self, tokens: Tensor, replacements: dict[str, Replacement] | None = None) -> Tensor:
        replacements = replacements or {}
        if self.bridge is not None and self.bridge is self.lm:
            hooks = [(h, lambda t, hook=None, f=f: f(t).to(t.dtype)) for h, f in replacements.items()]
            return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        if not replacements:
            return self.lm.logits(tokens)
        if len(replacements) == 1:
            (hook, fn), = replacements.items()
            return self.lm.forward_with_replacement(tokens, hook, fn)
        final = getattr(self.lm, "_final", None)
        if final is None:
            raise EvalError("splicing several hook points at once (a clt) needs spec.model.backend: transformer-lens")
        # The TransformerLens backend's own multi-hook forward (token preparation included).
        tokens, _ = self.lm._prepare(tokens, None)
        hooks = [(h, lambda t, hook=None, f=f: f(t).to(t.dtype)) for h, f in replacements.items()]
        return final(tokens, hooks, None)

    def activations(self, tokens: Tensor, hooks: Sequence[str]) -> dict[str, Tensor]:
        if self.bridge is not None and self.bridge is self.lm:
            _, cache = self.bridge.run_with_cache(tokens, names_filter=lambda n: n in set(hooks))
            return {h: cache[h] for h in hooks}
        return self.lm.activations(tokens, list(hooks))


# ---------------------------------------------------------------- the dictionary side


def splice_hooks(model: nn.Module, hook_points: Sequence[str] | str | None) -> tuple[list[str], list[str]]:
    """(input hooks, output hooks) of a dictionary; a plain module needs `hook_points`
    (one name: it reads and writes that hook, like an SAE; or a pair [in, out])."""
    if isinstance(model, SparseDictionary):
        spec = model.spec
        if spec.type == "clt":
            return list(spec.hook_points_in), list(spec.hook_points_out)
        return [spec.hook_point_in or ""], [spec.out_hook or ""]
    if hook_points is None:
        raise EvalError("hook_points: required when the dictionary is not a saeops SparseDictionary")
    hooks = [hook_points] if isinstance(hook_points, str) else list(hook_points)
    return hooks[:1], hooks[-1:]


@torch.no_grad()
def reconstruct(model: nn.Module, inputs: dict[str, Tensor], hooks_in: list[str], hooks_out: list[str]) -> dict[str, Tensor]:
    """Raw reconstructions `{out hook: (B, T, d_out)}` from clean inputs `{in hook: (B, T, d_in)}`."""
    kind = model.spec.type if isinstance(model, SparseDictionary) else "sae"
    first = inputs[hooks_in[0]]
    B, T = first.shape[:2]
    dtype = next(iter(model.parameters()), first).dtype
    if kind == "clt":
        x = torch.stack([inputs[h] for h in hooks_in], dim=2).reshape(B * T, len(hooks_in), -1)
        y = model(x.to(dtype)).reshape(B, T, len(hooks_out), -1)
        return {h: y[:, :, i] for i, h in enumerate(hooks_out)}
    if kind == "lorsa":
        return {hooks_out[0]: model(first.to(dtype))}
    y = model(first.reshape(B * T, -1).to(dtype))
    return {hooks_out[0]: y.reshape(B, T, -1)}


# ---------------------------------------------------------------- metrics


def next_token_loss(logits: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of predicting token t+1 from position t (positions where `mask` of
    the *target* is False are skipped)."""
    lp = logits[:, :-1].float().log_softmax(-1)
    nll = -lp.gather(-1, tokens[:, 1:, None].to(lp.device)).squeeze(-1)
    if mask is None:
        return nll.mean()
    m = mask[:, 1:].to(nll.device).float()
    return (nll * m).sum() / m.sum().clamp_min(1)


def embedding_loss(reference: Tensor, other: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over sequences of `1 - cos` between mean-pooled final hidden states (the sentence
    embedding an encoder such as MiniLM produces)."""
    m = torch.ones(reference.shape[:2], device=reference.device) if mask is None else mask.to(reference.device).float()

    def pool(h: Tensor) -> Tensor:
        return (h.float() * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)

    return (1 - torch.nn.functional.cosine_similarity(pool(reference), pool(other), dim=-1)).mean()


def kl_divergence(logits_p: Tensor, logits_q: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over positions of `KL(p || q)` of the next-token distributions."""
    lp, lq = logits_p[:, :-1].float().log_softmax(-1), logits_q[:, :-1].float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    if mask is None:
        return kl.mean()
    m = mask[:, 1:].to(kl.device).float()
    return (kl * m).sum() / m.sum().clamp_min(1)


def _recovered(zero: float, splice: float, orig: float) -> float:
    denom = zero - orig
    return float("nan") if abs(denom) < 1e-12 else (zero - splice) / denom


@torch.no_grad()
def evaluate_splice(
    lm: Any,
    model: nn.Module,
    tokens: Tensor,
    hook_points: Sequence[str] | str | None = None,
    *,
    mask: Tensor | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """LM loss with original activations, the reconstruction, zero and mean ablation; loss
    recovered; KL of next-token distributions. `tokens (N, T)`; `mask (N, T)` of positions to
    score (default: all); `hook_points` only for a plain module (see `splice_hooks`)."""
    runner = _Runner(lm)
    hooks_in, hooks_out = splice_hooks(model, hook_points)
    was_training = model.training
    model.eval()
    batches = [slice(i, i + batch_size) for i in range(0, tokens.shape[0], batch_size)]
    # Mean ablation needs the activation's mean over all evaluated tokens: one pass first.
    sums: dict[str, Tensor] = {}
    count = 0
    for sl in batches:
        acts = runner.activations(tokens[sl], hooks_out)
        for h in hooks_out:
            flat = acts[h].reshape(-1, acts[h].shape[-1]).double()
            sums[h] = sums.get(h, 0) + flat.sum(0)
        count += acts[hooks_out[0]].shape[0] * acts[hooks_out[0]].shape[1]
    means = {h: (s / count) for h, s in sums.items()}

    totals: dict[str, float] = {}
    sse = sst_parts = 0.0
    for sl in batches:
        tok, m = tokens[sl], None if mask is None else mask[sl]
        n = tok.shape[0]
        clean = runner.logits(tok)
        if clean.ndim != 3:
            raise EvalError("spec.model: the model returned neither logits nor hidden states")
        inputs = runner.activations(tok, list(dict.fromkeys(hooks_in + hooks_out)))
        recon = reconstruct(model, inputs, hooks_in, hooks_out)
        for h in hooks_out:
            sse += float((recon[h].double() - inputs[h].double()).pow(2).sum())
            sst_parts += float((inputs[h].double() - means[h]).pow(2).sum())
        spliced = runner.logits(tok, {h: (lambda t, r=recon[h]: r) for h in hooks_out})
        zero = runner.logits(tok, {h: torch.zeros_like for h in hooks_out})
        mean = runner.logits(tok, {h: (lambda t, mu=means[h]: mu.to(t.dtype).expand_as(t)) for h in hooks_out})
        if runner.encoder:
            values = (
                ("loss_original", embedding_loss(clean, clean, m)),
                ("loss_spliced", embedding_loss(clean, spliced, m)),
                ("loss_zero_ablation", embedding_loss(clean, zero, m)),
                ("loss_mean_ablation", embedding_loss(clean, mean, m)),
            )
        else:
            # Ids beyond the vocabulary wrap around for native models (the lm package's contract).
            target = tok % clean.shape[-1] if int(tok.max()) >= clean.shape[-1] else tok
            values = (
                ("loss_original", next_token_loss(clean, target, m)),
                ("loss_spliced", next_token_loss(spliced, target, m)),
                ("loss_zero_ablation", next_token_loss(zero, target, m)),
                ("loss_mean_ablation", next_token_loss(mean, target, m)),
                ("kl_divergence", kl_divergence(clean, spliced, m)),
                ("kl_divergence_zero_ablation", kl_divergence(clean, zero, m)),
            )
        for key, value in values:
            totals[key] = totals.get(key, 0.0) + float(value) * n
    model.train(was_training)
    res: dict[str, Any] = {k: v / tokens.shape[0] for k, v in totals.items()}
    res["loss_recovered"] = _recovered(res["loss_zero_ablation"], res["loss_spliced"], res["loss_original"])
    res["loss_recovered_mean_ablation"] = _recovered(res["loss_mean_ablation"], res["loss_spliced"],
                                                     res["loss_original"])
    res["explained_variance"] = 1.0 - sse / max(sst_parts, 1e-30)
    res["tokens"] = int(tokens.numel())
    res["loss_kind"] = "sentence_embedding_cosine_distance" if runner.encoder else "next_token_cross_entropy"
    res["hook_points_in"], res["hook_points_out"] = hooks_in, hooks_out
    return res


__all__ = ["EvalError", "embedding_loss", "evaluate_splice", "kl_divergence", "next_token_loss", "reconstruct", "splice_hooks"]
