"""The base shared by every sparse dictionary (SAE, transcoder, CLT, Lorsa).

Spaces: `encode(x)` and `forward(x)` take *raw* activations and normalise them internally
(`DictionarySpec.norm_activation`); `decode(acts)` returns the reconstruction in the
*normalised* space; `forward(x)` de-normalises it back to raw space; `compute_loss` works
entirely in the normalised space (so logged MSE is comparable across models).

Parameter layout (SAELens-compatible): `W_enc (d_in, d_sae)`, `b_enc (d_sae,)`,
`W_dec (d_sae, d_out)`, `b_dec (d_out,)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saeops.api.training import DictionarySpec, TrainerSpec
from saeops.runtime.models import _ops
from saeops.runtime.models.normalize import norm_factor

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


# ---------------------------------------------------------------- feature activations


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
            self.dense_acts = _ops.sparse_to_dense(self.sparse_values, self.sparse_indices, self.d_sae)
        return self.dense_acts

    def _ensure_sparse(self) -> None:
        if self.sparse_values is None:
            assert self.dense_acts is not None
            self.sparse_values, self.sparse_indices = _ops.dense_to_sparse(self.dense_acts)

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

    @property
    def batch_size(self) -> int:
        t = self.dense_acts if self.dense_acts is not None else self.sparse_values
        assert t is not None
        return t.shape[0]

    @torch.no_grad()
    def l0(self) -> Tensor:
        """Active latents per token, `(B,)` float."""
        if self.dense_acts is not None:
            return (self.dense_acts != 0).sum(-1).to(torch.float32)
        assert self.sparse_values is not None
        return (self.sparse_values != 0).sum(-1).to(torch.float32)

    @torch.no_grad()
    def fired(self) -> Tensor:
        """`(d_sae,)` bool: latents active on at least one token of the batch."""
        if self.dense_acts is not None:
            return (self.dense_acts != 0).any(0)
        assert self.sparse_values is not None and self.sparse_indices is not None
        out = torch.zeros(self.d_sae, dtype=torch.bool, device=self.sparse_values.device)
        out[self.sparse_indices[self.sparse_values != 0]] = True
        return out


# ---------------------------------------------------------------- loss plumbing


@dataclass
class LossContext:
    """Per-step loss settings from the trainer. `l1_coefficient` and `k` are the *current*
    (warmed-up / scheduled) values; `dead_mask` (d_sae,) bool marks latents that have not fired
    within `dead_feature_window` tokens (used by Aux-K)."""

    k: int | None = None
    l1_coefficient: float = 0.0
    sparsity_loss_type: str | None = None
    """power | tanh | tanh-quad | none; None picks the default for the act_fn."""
    p: float = 1.0
    tanh_stretch_coefficient: float = 4.0
    frequency_scale: float = 0.01
    lp_coefficient: float | None = None
    aux_k_coefficient: float = 0.0
    k_aux: int | None = None
    """Dead latents used by Aux-K; None: d_out // 2."""
    dead_mask: Tensor | None = None
    attention_mask: Tensor | None = None
    """Sequence kinds (Lorsa) only: `(B, T)` bool, True at real tokens (padding is neither
    attended to nor scored)."""

    @classmethod
    def from_trainer_spec(
        cls,
        spec: TrainerSpec,
        *,
        k: int | None,
        l1_coefficient: float,
        dead_mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> LossContext:
        """Copy the static settings from a TrainerSpec; the scheduled values come as arguments."""
        return cls(
            k=k,
            l1_coefficient=l1_coefficient,
            sparsity_loss_type=spec.sparsity_loss_type,
            p=spec.p,
            tanh_stretch_coefficient=spec.tanh_stretch_coefficient,
            frequency_scale=spec.frequency_scale,
            lp_coefficient=spec.lp_coefficient,
            aux_k_coefficient=spec.aux_k_coefficient,
            k_aux=spec.k_aux,
            dead_mask=dead_mask,
            attention_mask=attention_mask,
        )


@dataclass
class LossOutput:
    """Result of `compute_loss`. `terms` are detached scalars of what was added to `loss`
    (mse, sparsity, lp, aux_k) plus `l0` (mean active latents per token)."""

    loss: Tensor
    terms: dict[str, Tensor]
    x_hat: Tensor
    """Reconstruction in the normalised space."""
    target: Tensor
    """Normalised target."""
    acts: FeatureActs
    extras: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- base module


class SparseDictionary(nn.Module):
    """Base of all sparse dictionaries. Subclasses implement `_encode_normed`, `decode`,
    `_fold_norm_factors`, and may extend `compute_loss`."""

    dictionary_type: ClassVar[str] = ""

    def __init__(self, spec: DictionarySpec, d_in: int, d_out: int | None = None):
        super().__init__()
        self.spec = spec
        self.d_in = int(d_in)
        self.d_out = int(d_out if d_out is not None else d_in)
        self.d_sae = int(spec.d_sae_for(self.d_in))
        if spec.is_topk_family and spec.top_k > self.d_sae:
            raise ValueError(f"topK={spec.top_k} exceeds dSae={self.d_sae}")
        self.dtype: torch.dtype = getattr(torch, spec.dtype)
        # Dataset-wise factors (sqrt(d) / E||x||); 1 until the trainer sets them.
        self.register_buffer("norm_factor_in", torch.ones((), dtype=torch.float32))
        self.register_buffer("norm_factor_out", torch.ones((), dtype=torch.float32))

    # -- normalisation -------------------------------------------------------------------

    def set_dataset_norm_factors(self, factor_in: float, factor_out: float | None = None) -> None:
        """Set the dataset-wise factors (see `normalize.compute_dataset_norm_factor`)."""
        self.norm_factor_in.fill_(float(factor_in))
        self.norm_factor_out.fill_(float(factor_out if factor_out is not None else factor_in))

    def input_factor(self, x: Tensor) -> Tensor:
        """Multiplier to the normalised input space (per token, per batch, or constant)."""
        return norm_factor(x, self.spec.norm_activation, self.norm_factor_in)

    def output_factor(self, x_out: Tensor) -> Tensor:
        """Multiplier to the normalised output space, computed from the target activations."""
        return norm_factor(x_out, self.spec.norm_activation, self.norm_factor_out)

    # -- the dictionary ------------------------------------------------------------------

    def _encode_normed(self, x: Tensor, k: int | None = None) -> FeatureActs:
        raise NotImplementedError

    def decode(self, acts: FeatureActs | Tensor) -> Tensor:
        """Reconstruction in the normalised output space."""
        raise NotImplementedError

    def _reconstruct_normed(self, x_n: Tensor, k: int | None = None) -> Tensor:
        """Normalised input -> normalised reconstruction. Kinds with a path that bypasses the
        latents (a transcoder's skip connection) override this rather than `decode`."""
        return self.decode(self._encode_normed(x_n, k))

    def _fold_norm_factors(self, a: float, c: float) -> None:
        """Rescale weights so raw input (x_n = a x) maps to raw output (x_hat_raw = x_hat_n / c)."""
        raise NotImplementedError

    def decoder_norms(self) -> Tensor:
        """`(d_sae,)` L2 norms of the decoder rows (differentiable)."""
        raise NotImplementedError

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

    @torch.no_grad()
    def set_decoder_norm(self, norm: float | Tensor) -> None:
        """Scale every decoder row to `norm` (a scalar or a `(d_sae,)` tensor)."""
        raise NotImplementedError

    def parameter_groups(self, lr: float, jumprelu_lr_factor: float = 1.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: everything at `lr`, JumpReLU log thresholds at
        `lr * jumprelu_lr_factor` (a smaller lr smooths training, per the seeds)."""
        special = [p for name, p in self.named_parameters() if name.endswith("log_jumprelu_threshold")]
        ids = {id(p) for p in special}
        groups: list[dict[str, Any]] = [{"params": [p for p in self.parameters() if id(p) not in ids], "lr": lr}]
        if special:
            groups.append({"params": special, "lr": lr * jumprelu_lr_factor, "name": "log_jumprelu_threshold"})
        return groups

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
            return x_hat / self.norm_factor_out.to(x_hat.dtype)
        return x_hat / f_in

    def compute_loss(self, x_in: Tensor, x_out: Tensor | None, ctx: LossContext) -> LossOutput:
        """Total loss and its terms on one batch (raw activations in; normalised space inside)."""
        raise NotImplementedError

    # -- persistence ---------------------------------------------------------------------

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
        """Write `sae.safetensors` and `config.json` into a local directory."""
        return save_dictionary(self, directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None) -> SparseDictionary:
        """Load from a directory written by `save` (any registered type)."""
        from saeops.runtime.models.registry import load_dictionary

        return load_dictionary(directory, device=device)


def save_dictionary(model: SparseDictionary, directory: str | Path) -> Path:
    """Write `sae.safetensors` (contiguous CPU tensors) and `config.json`; returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.weights_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "saeops_type": model.dictionary_type})
    (out / CONFIG_FILE).write_text(json.dumps(model.config_dict(), indent=2, sort_keys=True))
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
    "save_dictionary",
]
