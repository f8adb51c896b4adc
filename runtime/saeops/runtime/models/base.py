"""The base shared by every sparse dictionary (SAE, transcoder, CLT, Lorsa, the sharded SAE).

Spaces: `encode(x)` and `forward(x)` take *raw* activations and normalise them internally
(`DictionarySpec.norm_activation`); `decode(acts)` returns the reconstruction in the
*normalised* space; `forward(x)` de-normalises it back to raw space; `compute_loss` works
entirely in the normalised space (so logged MSE is comparable across models).

Parameter layout (SAELens-compatible): `W_enc (d_in, d_sae)`, `b_enc (d_sae,)`,
`W_dec (d_sae, d_out)`, `b_dec (d_out,)`.

What a kind provides: `_encode_normed`, `decode` and `_fold_norm_factors`; it may override the batch preparation
(`prepare_batch`), the token rows the loss is averaged over (`_per_token`), the path from
latents to reconstruction (`_reconstruct_from`, `_reconstruct_normed`) and the defaults below
(one layer, no per-layer metrics, no centring, unsharded state, decoder rows in `W_dec`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from saeops.api.training import DictionarySpec
from saeops.kernels import Kernels
from saeops.runtime.models.activation import JumpReLU, topk_select
from saeops.runtime.models.acts import FeatureActs
from saeops.runtime.models.losses import (
    LossContext,
    LossOutput,
    aux_k_loss,
    jumprelu_lp_loss,
    mse_loss,
    resolve_sparsity_loss_type,
    sparsity_loss,
)
from saeops.runtime.models.normalize import norm_factor

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class SparseDictionary(nn.Module):
    """Base of all sparse dictionaries: normalisation, the loss, persistence and defaults."""

    dictionary_type: ClassVar[str] = ""
    target_is_input: ClassVar[bool] = False
    """Without output activations, the input is the target (what an SAE reconstructs)."""
    n_layers: int = 1
    """Output layers the reconstruction spans (a CLT's L)."""
    activation: nn.Module
    """The activation function (`activation.build_activation`)."""
    W_dec: Tensor
    """Decoder rows `(d_sae, d_out)` (Lorsa's `W_O`). A CLT keeps one block per target layer
    instead, and overrides the methods below that read this."""
    initialize_from_sample: Callable[..., None] | None = None
    """A kind whose parameters are not one (W_enc, W_dec) pair (CLT, Lorsa) initialises itself
    from a sample: `initialize_from_sample(initializer, sample_in, sample_out, *, k=None)`,
    called by `Initializer.initialize`. None: the Initializer's own (W_enc, W_dec) init, for the
    `SparseAutoEncoder` kinds (SAE, transcoder), which declare `W_enc`, `b_enc`, `W_dec`, `b_dec`,
    `W_gate` and `centre()`."""

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int | None = None):
        super().__init__()
        self.spec = spec
        self.d_in = int(d_in)
        self.d_out = int(d_out if d_out is not None else d_in)
        self.d_sae = int(spec.d_sae_for(self.d_in))
        if spec.is_topk_family and spec.top_k > self.d_sae:
            raise ValueError(f"topK={spec.top_k} exceeds dSae={self.d_sae}")
        self.dtype: torch.dtype = getattr(torch, spec.dtype)
        self.kernels = Kernels(use_triton=spec.use_triton_kernel)
        """The sparse ops, with the buffers and sort cache this dictionary reuses every step."""
        # Dataset-wise factors (sqrt(d) / E||x||); 1 until the trainer sets them.
        self.register_buffer("norm_factor_in", torch.ones((), dtype=torch.float32))
        self.register_buffer("norm_factor_out", torch.ones((), dtype=torch.float32))

    # -- normalisation -------------------------------------------------------------------

    def set_dataset_norm_factors(self, factor_in: Any, factor_out: Any = None) -> None:
        """Set the dataset-wise factors (see `normalize.compute_dataset_norm_factor`): floats, or
        for per-layer factors (CLT) a float for all layers or a sequence of one per layer."""
        fin = torch.as_tensor(factor_in, dtype=torch.float32)
        fout = fin if factor_out is None else torch.as_tensor(factor_out, dtype=torch.float32)
        self.norm_factor_in.copy_(fin.expand_as(self.norm_factor_in))
        self.norm_factor_out.copy_(fout.expand_as(self.norm_factor_out))

    def input_factor(self, x: Tensor) -> Tensor:
        """Multiplier to the normalised input space (per token, per batch, or constant)."""
        return norm_factor(x, self.spec.norm_activation, self.norm_factor_in, per_layer=self.norm_factor_in.dim() == 1)

    def output_factor(self, x_out: Tensor) -> Tensor:
        """Multiplier to the normalised output space, computed from the target activations."""
        return norm_factor(x_out, self.spec.norm_activation, self.norm_factor_out,
                           per_layer=self.norm_factor_out.dim() == 1)

    @torch.no_grad()
    def fold_dataset_norm(self) -> SparseDictionary:
        """Fold the dataset-wise factors into the weights, in place; returns the dictionary.

        Afterwards `norm_activation == "inference"`, the factors are 1, and `self(x_raw)` equals
        the dataset-wise dictionary's de-normalised reconstruction. Feature activations of the
        folded dictionary are the dataset-wise ones divided by the input factor (raw units)."""
        if self.spec.norm_activation != "dataset-wise":
            raise ValueError(f"fold_dataset_norm needs norm_activation dataset-wise, not {self.spec.norm_activation}")
        fin, fout = self.norm_factor_in, self.norm_factor_out
        # Scalars for one-hook kinds; per-layer kinds (CLT) keep one factor per layer.
        a = float(fin) if fin.numel() == 1 else fin.clone()
        c = float(fout) if fout.numel() == 1 else fout.clone()
        self._fold_norm_factors(a, c)
        self.norm_factor_in.fill_(1.0)
        self.norm_factor_out.fill_(1.0)
        self.spec = self.spec.model_copy(update={"norm_activation": "inference"})
        return self

    def _fold_norm_factors(self, a: float | Tensor, c: float | Tensor) -> None:
        """Rescale weights so raw input (x_n = a x) maps to raw output (x_hat_raw = x_hat_n / c)."""
        raise NotImplementedError

    # -- the dictionary ------------------------------------------------------------------

    @property
    def jumprelu(self) -> JumpReLU | None:
        """The JumpReLU activation, whose log thresholds are parameters (None otherwise)."""
        return self.activation if isinstance(self.activation, JumpReLU) else None

    def centre(self, x_n: Tensor) -> Tensor:
        """The encoder's input from normalised input (identity unless the kind centres by b_dec)."""
        return x_n

    def _encode_normed(self, x: Tensor, k: int | None = None, mask: Tensor | None = None) -> FeatureActs:
        """Feature activations of normalised input; `mask` marks the real tokens of a sequence
        batch (kinds that read sequences drop the others)."""
        raise NotImplementedError

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        """Reconstruction in the normalised output space."""
        raise NotImplementedError

    def _reconstruct_from(self, acts: FeatureActs, x_n: Tensor) -> Tensor:
        """Normalised reconstruction from the latents; kinds with a path that bypasses them (a
        transcoder's skip connection) add it here."""
        return self.decode(acts)

    def _reconstruct_normed(self, x_n: Tensor, k: int | None = None) -> Tensor:
        """Normalised input -> normalised reconstruction, shaped like the input's tokens."""
        return self._reconstruct_from(self._encode_normed(x_n, k), x_n)

    def decoder_norms(self) -> Tensor:
        """`(d_sae,)` L2 norms of the decoder rows (differentiable)."""
        return self.W_dec.norm(dim=-1)

    def decoder_rows(self, latents: Tensor) -> Tensor:
        """`(n, d)` decoder rows of `latents`, flattened as `_per_token` flattens the output (Aux-K)."""
        return self.W_dec[latents]

    def latent_pre(self, x_n: Tensor, latents: Tensor) -> Tensor:
        """`(B, n)` pre-activations of `latents`, for encoders that return no dense `hidden_pre`."""
        raise NotImplementedError

    def score_scale(self) -> Tensor | None:
        """What gates compare pre-activations against, per latent: the detached decoder norms
        (`sparsity_include_decoder_norm`), or None (the pre-activations themselves)."""
        return self.decoder_norms().detach() if self.spec.sparsity_include_decoder_norm else None

    @torch.no_grad()
    def set_decoder_norm(self, norm: float | Tensor) -> None:
        """Scale every decoder row to `norm` (a scalar or a `(d_sae,)` tensor)."""
        target = torch.as_tensor(norm, dtype=self.W_dec.dtype, device=self.W_dec.device)
        self.W_dec.mul_((target / self.decoder_norms().clamp_min(1e-12)).reshape(-1, 1))

    @torch.no_grad()
    def load_weights(self, tensors: dict[str, Tensor]) -> None:
        """Copy tensors named as in `weights_dict` into the parameters (strict: same names and
        shapes). `weights_dict` returns detached views, so copying into them fills the parameters."""
        mine = self.weights_dict()
        if set(mine) != set(tensors):
            raise ValueError(f"weights mismatch: expected {sorted(mine)}, got {sorted(tensors)}")
        for name, t in mine.items():
            if t.shape != tensors[name].shape:
                raise ValueError(f"{name}: expected shape {tuple(t.shape)}, got {tuple(tensors[name].shape)}")
            t.copy_(tensors[name])

    def parameter_groups(self, lr: float, jumprelu_lr_factor: float = 1.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: everything at `lr`, JumpReLU log thresholds at
        `lr * jumprelu_lr_factor` (a smaller lr smooths training, per the seeds)."""
        special = [p for name, p in self.named_parameters() if name.endswith("log_jumprelu_threshold")]
        ids = {id(p) for p in special}
        groups: list[dict[str, Any]] = [{"params": [p for p in self.parameters() if id(p) not in ids], "lr": lr}]
        if special:
            groups.append({"params": special, "lr": lr * jumprelu_lr_factor, "name": "log_jumprelu_threshold"})
        return groups

    def per_layer_metrics(self, out: LossOutput) -> dict[int, dict[str, float]]:
        """Metrics of each output layer of one batch, by layer index (none for one layer)."""
        return {}

    def encode(self, x: Tensor, k: int | None = None) -> FeatureActs:
        """Feature activations of raw input `x (B, d_in)`; `k` overrides top_k (TopK family)."""
        return self._encode_normed(x * self.input_factor(x).to(x.dtype), k)

    def forward(self, x: Tensor, k: int | None = None) -> Tensor:
        """Reconstruction of raw `x`, de-normalised to raw output space.

        For token-/batch-wise normalisation the output factor is taken from the input (exact for
        an SAE, whose output is its input)."""
        x = x.to(self.dtype)
        f_in = self.input_factor(x).to(x.dtype)
        x_hat = self._reconstruct_normed(x * f_in, k)
        if self.spec.norm_activation in ("dataset-wise", "inference"):
            # One factor, or one per layer (a CLT's (B, L, d_out) output).
            return x_hat / self.norm_factor_out.to(x_hat.dtype).unsqueeze(-1)
        return x_hat / f_in

    # -- the loss ------------------------------------------------------------------------

    def prepare_batch(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> tuple[Tensor, Tensor]:
        """(normalised input, normalised target) of a raw batch; kinds that score only some
        positions (Lorsa's padding) drop the others from the target here."""
        if x_out is None and not self.target_is_input:
            raise ValueError(f"a {self.dictionary_type} trains on input and output activations "
                             "(spec.sae.hookPointOut / hookPointsOut)")
        x_out = x_in if x_out is None else x_out
        x_in, x_out = x_in.to(self.dtype), x_out.to(self.dtype)
        return x_in * self.input_factor(x_in), x_out * self.output_factor(x_out)

    def _per_token(self, t: Tensor) -> Tensor:
        """`(tokens, features)` view of an output-space tensor: the rows the loss averages over."""
        return t.reshape(-1, t.shape[-1])

    def compute_loss(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> LossOutput:
        """Total loss and its terms on one batch (raw activations in; normalised space inside):
        the reconstruction MSE, then with a trainer the sparsity penalty, JumpReLU's Lp and
        Aux-K, added in that order."""
        x_n, target = self.prepare_batch(x_in, x_out, ctx)
        acts = self._encode_normed(x_n, ctx.k, ctx.attention_mask)
        x_hat = self._reconstruct_from(acts, x_n)
        terms = {"mse": mse_loss(self._per_token(x_hat), self._per_token(target))}
        if ctx.trainer is not None:
            terms.update(self._penalties(acts, x_n, x_hat, target, ctx))
        loss = terms["mse"]
        for name, term in terms.items():
            if name != "mse":
                loss = loss + term
        out = {name: term.detach() for name, term in terms.items()}
        out["l0"] = acts.l0().mean()
        return LossOutput(loss=loss, terms=out, x_hat=x_hat, target=target, acts=acts)

    def _penalties(self, acts: FeatureActs, x_n: Tensor, x_hat: Tensor, target: Tensor,
                   ctx: LossContext) -> dict[str, Tensor]:
        trainer = ctx.trainer
        assert trainer is not None
        terms: dict[str, Tensor] = {}
        kind = resolve_sparsity_loss_type(self.spec.act_fn, trainer.sparsity_loss_type)
        jump = self.jumprelu if trainer.lp_coefficient else None
        norms = self.decoder_norms() if kind != "none" or jump is not None else None
        if kind != "none":
            assert norms is not None
            penalty = sparsity_loss(kind, acts.dense(), norms, ctx.l1_coefficient, trainer)
            assert penalty is not None
            terms["sparsity"] = penalty
        if jump is not None:
            assert norms is not None and acts.hidden_pre is not None and trainer.lp_coefficient
            terms["lp"] = jumprelu_lp_loss(acts.hidden_pre, jump.threshold, norms, trainer.lp_coefficient,
                                           gated=self.spec.sparsity_include_decoder_norm)
        if self.spec.is_topk_family and trainer.aux_k_coefficient > 0 and ctx.dead_mask is not None:
            terms["aux_k"] = self._aux_k(acts, x_n, x_hat, target, ctx.dead_mask, trainer.k_aux,
                                         trainer.aux_k_coefficient)
        return terms

    def _aux_k(self, acts: FeatureActs, x_n: Tensor, x_hat: Tensor, target: Tensor, dead_mask: Tensor,
               k_aux: int | None, coefficient: float) -> Tensor:
        """Aux-K: the dead latents with the largest pre-activations reconstruct the residual."""
        dead = dead_mask.to(x_hat.device).nonzero().squeeze(-1)
        if dead.numel() == 0:
            return x_hat.new_zeros(())
        pre = acts.hidden_pre[:, dead] if acts.hidden_pre is not None else self.latent_pre(x_n, dead)
        scale = self.score_scale()
        k_aux = k_aux or max(self.d_out // 2, 1)
        values, indices = topk_select(pre, min(k_aux, dead.numel()), None if scale is None else scale[dead])
        e_hat = self.kernels.sparse_decode(indices, values, self.decoder_rows(dead), None)
        residual, rows = self._per_token(target - x_hat), self._per_token(target)
        return aux_k_loss(e_hat, residual, rows, dead.numel(), k_aux, coefficient)

    # -- state and persistence -----------------------------------------------------------

    def full_state_dict(self) -> dict[str, Tensor]:
        """The state dict of the whole dictionary (a sharded one gathers its slices)."""
        return self.state_dict()

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a whole dictionary's state dict (a sharded one keeps its slices)."""
        self.load_state_dict(state)

    def to_full(self) -> SparseDictionary:
        """The whole dictionary (a sharded one builds it: a collective)."""
        return self

    def config_dict(self) -> dict[str, Any]:
        """What `config.json` holds: the spec manifest and the shapes and norm factors."""
        return {
            "format_version": FORMAT_VERSION,
            "type": self.dictionary_type,
            "spec": self.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
            "d_in": self.d_in,
            "d_out": self.d_out,
            "d_sae": self.d_sae,
            # A float for scalar factors, a list for per-layer ones (CLT).
            "norm_factor_in": self.norm_factor_in.tolist(),
            "norm_factor_out": self.norm_factor_out.tolist(),
        }

    def weights_dict(self) -> dict[str, Tensor]:
        """Parameters by their saved (SAELens) names."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def save(self, directory: str | Path) -> Path:
        """Write `sae.safetensors` (contiguous CPU tensors) and `config.json` into a local
        directory; returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.weights_dict().items()}
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "saeops_type": self.dictionary_type})
        (out / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2, sort_keys=True))
        return out


def read_config(directory: str | Path) -> dict[str, Any]:
    """Parse `config.json` of a saved dictionary."""
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "FeatureActs",
    "LossContext",
    "LossOutput",
    "SparseDictionary",
    "read_config",
]
