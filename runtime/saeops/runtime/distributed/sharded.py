"""ShardedSAE: a TopK / BatchTopK sparse autoencoder with d_sae split across a tensor group.

Rank t of T holds latents `[t * d_sae/T, (t+1) * d_sae/T)`: `W_enc[:, shard]`, `b_enc[shard]`,
`W_dec[shard]`, and a replicated `b_dec`. Selection is exact: each rank proposes its local
top candidates, the candidates are all-gathered and every rank picks the same global winners,
then keeps only its own; decoder partial sums are all-reduced. BatchTopK selects over the
*global* batch: candidates are gathered from the data ranks too (`batch_group`), so a data x
tensor run selects exactly what one process selects on the concatenated batch. It is a
`SparseDictionary` (the loss is the base's), and converts to and from an unsharded
`SparseAutoEncoder` state dict (same keys, same optimizer parameter order), so checkpoints and
artifacts stay loadable on one process and into any tensor degree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saeops.api import DictionarySpec, TrainerSpec
from saeops.kernels import select
from saeops.runtime.distributed.collectives import copy_to_group, gather_cat, reduce_from_group
from saeops.runtime.distributed.context import Group
from saeops.runtime.models import FeatureActs, SparseAutoEncoder, SparseDictionary, build_activation

SHARD_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
"""Dimension along which each sharded parameter is split; the rest are replicated."""


def shardable(spec: DictionarySpec, d_sae: int, tensor: int, trainer: TrainerSpec) -> str | None:
    """Why this dictionary cannot be split over `tensor` ranks (naming the field), or None."""
    if spec.type != "sae":
        return f"spec.parallelism.tensor={tensor} supports sae dictionaries, not {spec.type!r}"
    if spec.act_fn not in ("topk", "batchtopk"):
        return f"spec.parallelism.tensor={tensor} supports actFn topk|batchtopk, not {spec.act_fn!r}"
    if spec.use_glu_encoder:
        return "spec.sae.useGluEncoder is not supported with spec.parallelism.tensor > 1"
    if trainer.sparsity_loss_type not in (None, "none") or trainer.aux_k_coefficient > 0:
        return "spec.trainer sparsity/Aux-K losses are not supported with spec.parallelism.tensor > 1"
    if d_sae % tensor:
        return f"spec.parallelism.tensor={tensor} must divide dSae={d_sae}"
    return None


@dataclass(eq=False)
class ShardActs(FeatureActs):
    """The global activations (the same on every rank: what metrics count) and this rank's
    slice of them, `(values, indices)` into its own latents (what its decoder reads)."""

    local_values: Tensor | None = None
    local_indices: Tensor | None = None


class ShardedSAE(SparseDictionary):
    """The local shard of a TopK/BatchTopK SAE."""

    dictionary_type = "sae"
    target_is_input = True

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int, group: Group, *, data: Group | None = None,
                 batch_group: Group | None = None) -> None:
        super().__init__(spec, d_in, d_out)
        self.group = group
        self.data = data or Group([0], 0)
        """The data group: its ranks hold the other rows of the global batch."""
        self.batch_group = batch_group or group
        """Every rank holding part of the global batch x d_sae score matrix (the world)."""
        self.d_local = self.d_sae // group.size
        self.offset = group.rank * self.d_local
        dt = self.dtype
        # Same registration order as SparseAutoEncoder: optimizer state indices line up.
        self.W_enc = nn.Parameter(torch.empty(d_in, self.d_local, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(self.d_local, dtype=dt))
        self.W_dec = nn.Parameter(torch.empty(self.d_local, self.d_out, dtype=dt))
        self.b_dec: nn.Parameter | None = (
            nn.Parameter(torch.zeros(self.d_out, dtype=dt)) if spec.use_decoder_bias else None
        )
        self.activation = build_activation(spec.act_fn, self.d_sae, top_k=spec.top_k,
                                           window=spec.jumprelu_threshold_window, dtype=dt)

    # -- conversion ------------------------------------------------------------------------

    @classmethod
    def from_full(cls, full: SparseAutoEncoder, group: Group, *, data: Group | None = None,
                  batch_group: Group | None = None) -> ShardedSAE:
        """This rank's shard of an unsharded SAE (on the same device)."""
        shard = cls(full.spec, full.d_in, full.d_out, group, data=data, batch_group=batch_group)
        shard.to(full.W_enc.device)
        shard.load_full_state_dict(full.state_dict())
        return shard

    def _slice(self, name: str, t: Tensor) -> Tensor:
        dim = SHARD_DIM.get(name)
        return t if dim is None else t.narrow(dim, self.offset, self.d_local)

    def _gather(self, name: str, t: Tensor) -> Tensor:
        dim = SHARD_DIM.get(name)
        return t if dim is None else gather_cat(t, self.group, dim)

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load an unsharded SparseAutoEncoder state dict (keeps this rank's slice)."""
        mine = self.state_dict()
        if set(state) != set(mine):
            raise ValueError(f"state mismatch: expected {sorted(mine)}, got {sorted(state)}")
        for name, t in mine.items():
            t.copy_(self._slice(name, state[name].to(t.device)))

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Tensor]:
        """The unsharded state dict (a collective: every rank of the tensor group calls it)."""
        return {name: self._gather(name, t.detach()).clone() for name, t in self.state_dict().items()}

    def to_full(self) -> SparseAutoEncoder:
        """An unsharded SparseAutoEncoder with these weights (collective)."""
        full = SparseAutoEncoder(self.spec, self.d_in, self.d_out)
        full.load_state_dict(self.full_state_dict())
        return full

    def gather_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Optimizer state dict with per-parameter moments unsharded (collective)."""
        names = [n for n, _ in self.named_parameters()]
        out = {"param_groups": state["param_groups"], "state": {}}
        for i, per_param in state["state"].items():
            name = names[i]
            out["state"][i] = {
                k: self._gather(name, v) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in per_param.items()
            }
        return out

    def shard_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Inverse of `gather_optimizer_state` for this rank."""
        names = [n for n, _ in self.named_parameters()]
        out = {"param_groups": state["param_groups"], "state": {}}
        for i, per_param in state["state"].items():
            name = names[int(i)]
            out["state"][i] = {
                k: self._slice(name, v).clone() if torch.is_tensor(v) and v.dim() > 0 else v
                for k, v in per_param.items()
            }
        return out

    def is_sharded(self, param: Tensor) -> bool:
        """Whether `param` is a slice (its gradient norm adds across the tensor group)."""
        return any(param is p for p in (self.W_enc, self.b_enc, self.W_dec))

    # -- the dictionary --------------------------------------------------------------------

    def centre(self, x_n: Tensor) -> Tensor:
        return x_n if self.b_dec is None else x_n - self.b_dec

    def _encode_normed(self, x: Tensor, k: int | None = None, mask: Tensor | None = None) -> ShardActs:
        """The exact global TopK/BatchTopK selection (the same on every rank)."""
        pre = copy_to_group(self.centre(x), self.group) @ self.W_enc + self.b_enc
        scale = self.score_scale()
        scores = pre.detach() if scale is None else pre.detach() * scale
        k = k or self.spec.top_k
        if self.spec.act_fn == "topk":
            indices, keep = self._select_topk(scores, k)
        else:
            indices, keep = self._select_batchtopk(scores, pre.detach(), k)
        values = (pre.gather(-1, indices) * keep).relu()
        acts = self._global_acts(values, indices)
        return ShardActs(d_sae=self.d_sae, sparse_values=acts.sparse_values, sparse_indices=acts.sparse_indices,
                         local_values=values, local_indices=indices)

    def _select_topk(self, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Local (indices, keep) of the globally selected latents, `(B, w)` each."""
        k = min(k, self.d_sae)
        values, indices = select.topk(scores, min(k, self.d_local))
        values = gather_cat(values, self.group, -1)
        latents = gather_cat(indices + self.offset, self.group, -1)
        chosen = latents.gather(-1, select.topk(values, k)[1])
        keep = (chosen >= self.offset) & (chosen < self.offset + self.d_local)
        return torch.where(keep, chosen - self.offset, torch.zeros_like(chosen)), keep

    def _select_batchtopk(self, scores: Tensor, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        B = scores.shape[0]
        first_row = self.data.rank * B  # this rank's rows within the global batch
        n = min(k * B * self.data.size, B * self.data.size * self.d_sae)
        cand_values, cand = (t[0] for t in select.topk(scores.reshape(1, -1), n))
        rows, cols = cand // self.d_local, cand % self.d_local
        values = gather_cat(cand_values, self.batch_group, 0)
        flat = gather_cat((rows + first_row) * self.d_sae + cols + self.offset, self.batch_group, 0)
        chosen = flat[select.topk(values.reshape(1, -1), n)[1][0]]
        row, latent = chosen // self.d_sae - first_row, chosen % self.d_sae
        ours = (latent >= self.offset) & (latent < self.offset + self.d_local) & (row >= 0) & (row < B)
        mask = torch.zeros(B, self.d_local, dtype=torch.bool, device=scores.device)
        mask[row[ours], latent[ours] - self.offset] = True
        mask &= pre > 0
        width = max(int(mask.sum(-1).max().item()), 1)
        order = torch.sort(mask.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :width]
        keep = mask.gather(-1, order)
        return torch.where(keep, order, torch.zeros_like(order)), keep

    def _global_acts(self, values: Tensor, indices: Tensor) -> FeatureActs:
        """Every shard's (values, latent) concatenated: the same global sparse acts on each rank
        (for metrics; padded to a common width with zeros)."""
        width = torch.tensor([values.shape[-1]], device=values.device)
        self.group.all_reduce_(width, torch.distributed.ReduceOp.MAX)
        pad = int(width.item()) - values.shape[-1]
        v = torch.nn.functional.pad(values.detach(), (0, pad))
        i = torch.nn.functional.pad(indices + self.offset, (0, pad), value=self.offset)
        return FeatureActs.from_sparse(gather_cat(v, self.group, -1), gather_cat(i, self.group, -1), self.d_sae)

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        """This rank's partial reconstruction from its own latents, summed over the group."""
        if not isinstance(acts, ShardActs) or acts.local_values is None or acts.local_indices is None:
            raise TypeError("a ShardedSAE decodes the activations its own encoder returned")
        partial = self.kernels.sparse_decode(acts.local_indices, acts.local_values, self.W_dec, None)
        x_hat = reduce_from_group(partial, self.group)
        return x_hat if self.b_dec is None else x_hat + self.b_dec


__all__ = ["SHARD_DIM", "ShardActs", "ShardedSAE", "shardable"]
