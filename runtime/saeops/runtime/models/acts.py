"""Feature activations of a batch, dense or in the kernels' padded sparse format."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saeops import kernels


@dataclass(eq=False)
class FeatureActs:
    """Feature activations of a batch: dense `(B, d_sae)`, or padded sparse `(values, indices)`
    `(B, k)` for the TopK family. Padding entries have value 0. Conversions are lazy and cached.

    `hidden_pre` holds the dense pre-activations when the encoder computed them (None on the
    fused TopK path, which never materialises them).
    """

    d_sae: int
    dense_acts: Tensor | None = None
    sparse_values: Tensor | None = None
    sparse_indices: Tensor | None = None
    hidden_pre: Tensor | None = None

    @classmethod
    def from_dense(cls, acts: Tensor, hidden_pre: Tensor | None = None) -> FeatureActs:
        return cls(d_sae=acts.shape[-1], dense_acts=acts, hidden_pre=hidden_pre)

    @classmethod
    def from_sparse(
        cls, values: Tensor, indices: Tensor, d_sae: int, hidden_pre: Tensor | None = None
    ) -> FeatureActs:
        return cls(d_sae=d_sae, sparse_values=values, sparse_indices=indices, hidden_pre=hidden_pre)

    @property
    def is_sparse(self) -> bool:
        """True when the primary form is (values, indices)."""
        return self.dense_acts is None

    def dense(self) -> Tensor:
        """`(B, d_sae)` activations (differentiable)."""
        if self.dense_acts is None:
            assert self.sparse_values is not None and self.sparse_indices is not None
            self.dense_acts = kernels.sparse_to_dense(self.sparse_indices, self.sparse_values, self.d_sae)
        return self.dense_acts

    def _ensure_sparse(self) -> None:
        if self.sparse_values is None:
            assert self.dense_acts is not None
            self.sparse_values, self.sparse_indices = kernels.dense_to_sparse(self.dense_acts)

    @property
    def values(self) -> Tensor:
        """`(B, k)` activation values (0 at padding)."""
        self._ensure_sparse()
        assert self.sparse_values is not None
        return self.sparse_values

    @property
    def indices(self) -> Tensor:
        """`(B, k)` int64 latent indices."""
        self._ensure_sparse()
        assert self.sparse_indices is not None
        return self.sparse_indices

    @torch.no_grad()
    def l0(self) -> Tensor:
        """Active latents per token, `(B,)` float."""
        if self.dense_acts is not None:
            return (self.dense_acts != 0).sum(-1).to(torch.float32)
        assert self.sparse_values is not None
        return (self.sparse_values != 0).sum(-1).to(torch.float32)

    @torch.no_grad()
    def fire_counts(self) -> Tensor:
        """`(d_sae,)` int64: per latent, the tokens of the batch it is active on."""
        if self.dense_acts is not None:
            return (self.dense_acts.detach() != 0).sum(0)
        assert self.sparse_values is not None and self.sparse_indices is not None
        return torch.bincount(self.sparse_indices[self.sparse_values != 0].reshape(-1), minlength=self.d_sae)


__all__ = ["FeatureActs"]
