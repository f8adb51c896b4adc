"""Training metrics: explained variance, MSE, L0, dead and dense latents, loss terms.

Accumulated on-device over a logging window and read back once per log step, so the hot
loop never synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MetricWindow:
    """Sums over the steps since the last log (reset after each `compute`)."""

    d_sae: int
    device: torch.device | str = "cpu"
    sse: torch.Tensor = field(init=False)
    sst: torch.Tensor = field(init=False)
    l0_sum: torch.Tensor = field(init=False)
    fire_counts: torch.Tensor = field(init=False)
    terms: dict[str, torch.Tensor] = field(init=False)
    tokens: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sse, self.sst, self.l0_sum = z.clone(), z.clone(), z.clone()
        self.fire_counts = torch.zeros(self.d_sae, dtype=torch.int64, device=self.device)
        self.terms = {}
        self.tokens = 0
        self.steps = 0

    @torch.no_grad()
    def update(
        self,
        x_hat: torch.Tensor,
        target: torch.Tensor,
        l0_per_token: torch.Tensor,
        fire_counts: torch.Tensor,
        terms: dict[str, torch.Tensor],
    ) -> None:
        """Add one batch: `fire_counts` counts, per latent, the tokens it fired on."""
        err = (x_hat.float() - target.float()).pow(2).sum()
        # Explained variance against the batch mean (the definition every peer reports).
        dev = (target.float() - target.float().mean(0, keepdim=True)).pow(2).sum()
        self.sse += err.double()
        self.sst += dev.double()
        self.l0_sum += l0_per_token.double().sum()
        self.fire_counts += fire_counts.to(self.fire_counts.dtype)
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v.detach().double()
        self.tokens += target.shape[0]
        self.steps += 1

    def compute(self, d_out: int) -> dict[str, float]:
        """Window averages; `d_out` turns the summed squared error into a per-element MSE."""
        n = max(self.tokens, 1)
        out = {
            "explained_variance": float(1.0 - self.sse / self.sst.clamp_min(1e-30)),
            "mse": float(self.sse / (n * d_out)),
            "l0": float(self.l0_sum / n),
        }
        for k, v in self.terms.items():
            out[f"loss_{k}"] = float(v / max(self.steps, 1))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The unlogged sums (a checkpoint resumes the window mid-way)."""
        return {"sse": self.sse.cpu(), "sst": self.sst.cpu(), "l0_sum": self.l0_sum.cpu(),
                "fire_counts": self.fire_counts.cpu(), "terms": {k: v.cpu() for k, v in self.terms.items()},
                "tokens": self.tokens, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.device
        self.sse, self.sst, self.l0_sum = state["sse"].to(dev), state["sst"].to(dev), state["l0_sum"].to(dev)
        self.fire_counts = state["fire_counts"].to(dev)
        self.terms = {k: v.to(dev) for k, v in state["terms"].items()}
        self.tokens, self.steps = int(state["tokens"]), int(state["steps"])


class FeatureTracker:
    """Per-latent firing bookkeeping across the whole run: dead (silent for `window` tokens)
    and dense (firing on more than `dense_threshold` of the tokens in the window)."""

    def __init__(self, d_sae: int, window: int, dense_threshold: float, device: torch.device | str = "cpu"):
        self.window = window
        self.dense_threshold = dense_threshold
        self.tokens_seen = 0
        self.last_fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.recent_counts = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.recent_tokens = 0

    @torch.no_grad()
    def update(self, fire_counts: torch.Tensor, n_tokens: int) -> None:
        self.tokens_seen += n_tokens
        self.last_fired = torch.where(fire_counts > 0, self.tokens_seen, self.last_fired)
        self.recent_counts += fire_counts
        self.recent_tokens += n_tokens
        if self.recent_tokens >= self.window:
            # Halve instead of zeroing: a smooth frequency estimate without a second buffer.
            self.recent_counts //= 2
            self.recent_tokens //= 2

    def dead_mask(self) -> torch.Tensor:
        """Latents that have not fired in the last `window` tokens (or ever, early in a run)."""
        silent_for = self.tokens_seen - self.last_fired
        return silent_for >= min(self.window, max(self.tokens_seen, 1))

    def compute(self) -> dict[str, float]:
        freq = self.recent_counts.double() / max(self.recent_tokens, 1)
        return {
            "dead_fraction": float(self.dead_mask().double().mean()),
            "dense_fraction": float((freq > self.dense_threshold).double().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "tokens_seen": self.tokens_seen,
            "last_fired": self.last_fired.cpu(),
            "recent_counts": self.recent_counts.cpu(),
            "recent_tokens": self.recent_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens_seen = int(state["tokens_seen"])
        self.last_fired = state["last_fired"].to(self.last_fired.device)
        self.recent_counts = state["recent_counts"].to(self.recent_counts.device)
        self.recent_tokens = int(state["recent_tokens"])
