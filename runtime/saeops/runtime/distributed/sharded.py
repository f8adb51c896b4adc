"""ShardedSAE: a TopK / BatchTopK sparse autoencoder with d_sae split across a tensor group.

Rank t of T holds latents `[t * d_sae/T, (t+1) * d_sae/T)`: `W_enc[:, shard]`, `b_enc[shard]`,
`W_dec[shard]`, and a replicated `b_dec`. Selection is exact: each rank proposes its local
top candidates, the candidates are all-gathered and every rank picks the same global winners,
then keeps only its own; decoder partial sums are all-reduced. BatchTopK selects over the
*global* batch: candidates are gathered from the data ranks too (`batch_group`), so a data x
tensor run selects exactly what one process selects on the concatenated batch. It converts to and from an
unsharded `SparseAutoEncoder` state dict (same keys, same optimizer parameter order), so
checkpoints and artifacts stay loadable on one process and into any tensor degree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saeops.api import DictionarySpec, SpecError
from saeops.runtime.distributed.collectives import copy_to_group, gather_cat, reduce_from_group
from saeops.runtime.distributed.context import Group
from saeops.runtime.models import FeatureActs, LossContext, LossOutput, _ops
from saeops.runtime.models.losses import mse_loss
from saeops.runtime.models.normalize import norm_factor
from saeops.runtime.models.sae import SparseAutoEncoder

SHARD_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
"""Dimension along which each sharded parameter is split; the rest are replicated."""


def check_shardable(spec: DictionarySpec, d_sae: int, tensor: int, *, sparsity_loss: str | None,
                    aux_k: float) -> None:
    """Raise SpecError naming the field when this dictionary cannot be tensor-parallel."""
    if spec.type != "sae":
        raise SpecError(f"spec.parallelism.tensor={tensor} supports sae dictionaries, not {spec.type!r}")
    if spec.act_fn not in ("topk", "batchtopk"):
        raise SpecError(f"spec.parallelism.tensor={tensor} supports actFn topk|batchtopk, not {spec.act_fn!r}")
    if spec.use_glu_encoder:
        raise SpecError("spec.sae.useGluEncoder is not supported with spec.parallelism.tensor > 1")
    if sparsity_loss not in (None, "none") or aux_k > 0:
        raise SpecError("spec.trainer sparsity/Aux-K losses are not supported with spec.parallelism.tensor > 1")
    if d_sae % tensor:
        raise SpecError(f"spec.parallelism.tensor={tensor} must divide dSae={d_sae}")


class ShardedSAE(nn.Module):
    """The local shard of a TopK/BatchTopK SAE; trains like a `SparseDictionary`."""

    dictionary_type = "sae"

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int, d_sae: int, group: Group,
                 dtype: torch.dtype, centres_input: bool = True, *, data: Group | None = None,
                 batch_group: Group | None = None) -> None:
        super().__init__()
        self.spec, self.group = spec, group
        self.data = data or Group([0], 0)
        """The data group: its ranks hold the other rows of the global batch."""
        self.batch_group = batch_group or group
        """Every rank holding part of the global batch x d_sae score matrix (the world)."""
        self.d_in, self.d_out, self.d_sae = d_in, d_out, d_sae
        self.d_local = d_sae // group.size
        self.offset = group.rank * self.d_local
        self.dtype = dtype
        self.centres_input = centres_input
        # Same registration order as SparseAutoEncoder: optimizer state indices line up.
        self.W_enc = nn.Parameter(torch.empty(d_in, self.d_local, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.d_local, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(self.d_local, d_out, dtype=dtype))
        self.b_dec: nn.Parameter | None = (
            nn.Parameter(torch.zeros(d_out, dtype=dtype)) if spec.use_decoder_bias else None
        )
        self.register_buffer("norm_factor_in", torch.ones((), dtype=torch.float32))
        self.register_buffer("norm_factor_out", torch.ones((), dtype=torch.float32))

    # -- conversion ------------------------------------------------------------------------

    @classmethod
    def from_full(cls, full: SparseAutoEncoder, group: Group, *, data: Group | None = None,
                  batch_group: Group | None = None) -> ShardedSAE:
        """This rank's shard of an unsharded SAE (on the same device)."""
        shard = cls(full.spec, full.d_in, full.d_out, full.d_sae, group, full.dtype, full.centres_input,
                    data=data, batch_group=batch_group)
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
        return any(param is getattr(self, n) for n in SHARD_DIM)

    # -- the SparseDictionary surface the Trainer uses --------------------------------------

    def parameter_groups(self, lr: float, jumprelu_lr_factor: float = 1.0) -> list[dict[str, Any]]:
        return [{"params": list(self.parameters()), "lr": lr}]

    def input_factor(self, x: Tensor) -> Tensor:
        return norm_factor(x, self.spec.norm_activation, self.norm_factor_in)

    def output_factor(self, x: Tensor) -> Tensor:
        return norm_factor(x, self.spec.norm_activation, self.norm_factor_out)

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=-1)

    def _select(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Local (indices, keep) of the globally selected latents, `(B, w)` each."""
        scores = pre.detach()
        if self.spec.sparsity_include_decoder_norm:
            scores = scores * self.decoder_norms().detach()
        if self.spec.act_fn == "topk":
            return self._select_topk(scores, k)
        return self._select_batchtopk(scores, pre.detach(), k)

    def _select_topk(self, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        k = min(k, self.d_sae)
        cand = scores.topk(min(k, self.d_local), dim=-1, sorted=False)
        values = gather_cat(cand.values, self.group, -1)
        latents = gather_cat(cand.indices + self.offset, self.group, -1)
        chosen = latents.gather(-1, values.topk(k, dim=-1, sorted=False).indices)
        keep = (chosen >= self.offset) & (chosen < self.offset + self.d_local)
        return torch.where(keep, chosen - self.offset, torch.zeros_like(chosen)), keep

    def _select_batchtopk(self, scores: Tensor, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        B = scores.shape[0]
        first_row = self.data.rank * B  # this rank's rows within the global batch
        n = min(k * B * self.data.size, B * self.data.size * self.d_sae)
        cand = scores.reshape(-1).topk(min(n, scores.numel()), sorted=False)
        rows, cols = cand.indices // self.d_local, cand.indices % self.d_local
        values = gather_cat(cand.values, self.batch_group, 0)
        flat = gather_cat((rows + first_row) * self.d_sae + cols + self.offset, self.batch_group, 0)
        chosen = flat[values.topk(n, sorted=False).indices]
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

    def compute_loss(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> LossOutput:
        """MSE of the exact global TopK/BatchTopK reconstruction (the same on every rank)."""
        x_in = x_in.to(self.dtype)
        x_out = x_in if x_out is None else x_out.to(self.dtype)
        x_n = x_in * self.input_factor(x_in)
        target = x_out * self.output_factor(x_out)
        x_c = x_n - self.b_dec if self.b_dec is not None and self.centres_input else x_n
        pre = copy_to_group(x_c, self.group) @ self.W_enc + self.b_enc
        indices, keep = self._select(pre, ctx.k or self.spec.top_k)
        values = (pre.gather(-1, indices) * keep).relu()
        x_hat = reduce_from_group(_ops.sparse_decode(indices, values, self.W_dec, None), self.group)
        if self.b_dec is not None:
            x_hat = x_hat + self.b_dec
        mse = mse_loss(x_hat, target)
        acts = self._global_acts(values, indices)
        terms = {"mse": mse.detach(), "l0": acts.l0().mean()}
        return LossOutput(loss=mse, terms=terms, x_hat=x_hat, target=target, acts=acts)


__all__ = ["SHARD_DIM", "ShardedSAE", "check_shardable"]
