"""SAELens' on-disk format (`cfg.json` + `sae_weights.safetensors`, SAELens >= 6): export and import.

Names follow SAELens 6.54's source (`sae_lens/saes/*.py`, `constants.py`):

| saeops                                   | SAELens architecture        | extra cfg / weights             |
|------------------------------------------|-----------------------------|---------------------------------|
| sae relu                                 | `standard`                  |                                 |
| sae topk                                 | `topk`                      | `k`, `rescale_acts_by_decoder_norm` |
| sae jumprelu                             | `jumprelu`                  | `threshold`                     |
| transcoder relu (+ skip)                 | `transcoder` / `skip_transcoder` | `d_out` (`W_skip (d_out, d_in)`) |
| transcoder jumprelu (+ skip)             | `jumprelu_transcoder` / `jumprelu_skip_transcoder` | |

Weights: `W_enc (d_in, d_sae)`, `b_enc`, `W_dec (d_sae, d_out)`, `b_dec`.

Semantics that need translating:
- Normalisation: SAELens has no dataset-wise factor, so a dataset-wise dictionary is exported
  folded (`fold_dataset_norm`, inference mode); token-wise is SAELens' `constant_norm_rescale`
  (same formula); batch-wise has no counterpart.
- JumpReLU: saeops gates on `pre * ||W_dec_i|| > e^t` (with `sparsityIncludeDecoderNorm`);
  SAELens on `pre > threshold`; so `threshold = e^t / ||W_dec_i||`.
- TopK with decoder-norm gating is SAELens' `rescale_acts_by_decoder_norm` (its feature
  activations are then ours times the decoder norm; reconstructions agree).
- Not representable, each refused naming the field: clt / lorsa (`spec.sae.type`), GLU encoders
  (`spec.sae.useGluEncoder`), batchtopk (`spec.sae.actFn`: convert with
  `convert_batchtopk_to_jumprelu` first), TopK transcoders (`spec.sae.actFn`), batch-wise
  normalisation (`spec.sae.normActivation`).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saeops.api.training import DictionarySpec
from saeops.runtime.models.base import SparseDictionary
from saeops.runtime.models.registry import build_dictionary
from saeops.runtime.models.sae import SparseAutoEncoder
from saeops.runtime.models.transcoder import Transcoder

log = logging.getLogger("saeops.export")

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CONFIG = "cfg.json"
SAELENS_FORMAT_VERSION = "6.0.0"
"""Written as `metadata.sae_lens_version`: SAELens treats configs below 6.0 as the old layout."""


class ExportError(ValueError):
    """The dictionary cannot be represented in SAELens' format (the message names the field)."""


def _check_exportable(model: SparseDictionary) -> SparseAutoEncoder:
    spec = model.spec
    if not isinstance(model, SparseAutoEncoder):
        raise ExportError(f"spec.sae.type: SAELens cannot represent a {spec.type} (only sae and transcoder)")
    if spec.use_glu_encoder:
        raise ExportError("spec.sae.useGluEncoder: SAELens has no GLU encoder")
    if spec.act_fn == "batchtopk":
        raise ExportError("spec.sae.actFn: batchtopk has no per-token form in SAELens; convert it first with "
                          "saeops.runtime.models.convert.convert_batchtopk_to_jumprelu")
    if spec.type == "transcoder" and spec.act_fn not in ("relu", "jumprelu"):
        raise ExportError(f"spec.sae.actFn: SAELens has no {spec.act_fn} transcoder (relu or jumprelu only)")
    if spec.norm_activation == "batch-wise":
        raise ExportError("spec.sae.normActivation: batch-wise normalisation has no SAELens counterpart")
    return model


def _architecture(model: SparseAutoEncoder) -> str:
    spec = model.spec
    if isinstance(model, Transcoder):
        skip = model.W_skip is not None
        base = "jumprelu_transcoder" if spec.act_fn == "jumprelu" else "transcoder"
        return ("jumprelu_skip_transcoder" if spec.act_fn == "jumprelu" else "skip_transcoder") if skip else base
    return {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[spec.act_fn]


@torch.no_grad()
def export_saelens(model: SparseDictionary, directory: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` in SAELens' format into `directory`; returns it. `metadata` adds to SAELens'
    metadata (model_name, context_size, dataset_path, prepend_bos, ...)."""
    sae = _check_exportable(model)
    if sae.spec.norm_activation == "dataset-wise":
        sae = copy.deepcopy(sae)
        sae.fold_dataset_norm()
    spec = sae.spec
    W_dec = sae.W_dec.detach()
    tensors: dict[str, Tensor] = {
        "W_enc": sae.W_enc.detach(),
        "b_enc": sae.b_enc.detach(),
        "W_dec": W_dec,
        "b_dec": sae.b_dec.detach() if sae.b_dec is not None else torch.zeros(sae.d_out, dtype=W_dec.dtype),
    }
    jump = sae.jumprelu
    if jump is not None:
        theta = jump.threshold.detach()
        tensors["threshold"] = theta / W_dec.norm(dim=-1) if spec.sparsity_include_decoder_norm else theta
    if isinstance(sae, Transcoder) and sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip.detach().T  # SAELens: (d_out, d_in), applied as x @ W_skip.T
    cfg: dict[str, Any] = {
        "architecture": _architecture(sae),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": spec.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": spec.type == "sae",
        "normalize_activations": "constant_norm_rescale" if spec.norm_activation == "token-wise" else "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "hook_name": spec.hook_point_in,
            "exported_by": "saeops",
            **(metadata or {}),
        },
    }
    if spec.type == "transcoder":
        cfg["d_out"] = sae.d_out
        cfg["metadata"]["hook_name_out"] = spec.hook_point_out
    if spec.act_fn == "topk":
        cfg["k"] = spec.top_k
        cfg["rescale_acts_by_decoder_norm"] = spec.sparsity_include_decoder_norm
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to("cpu").contiguous() for k, v in tensors.items()}, str(out / SAELENS_WEIGHTS),
              metadata={"format": "pt"})
    (out / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=2))
    return out


_IMPORT_ACT = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "transcoder": "relu",
               "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu", "jumprelu_skip_transcoder": "jumprelu"}


@torch.no_grad()
def import_saelens(directory: str | Path) -> SparseDictionary:
    """Load a SAELens-format directory as a saeops dictionary (inference mode)."""
    path = Path(directory)
    cfg = json.loads((path / SAELENS_CONFIG).read_text())
    w = load_file(str(path / SAELENS_WEIGHTS))
    arch = cfg.get("architecture", "standard")
    if arch not in _IMPORT_ACT:
        raise ExportError(f"cfg.json architecture: {arch!r} has no saeops counterpart "
                          f"(supported: {', '.join(sorted(_IMPORT_ACT))})")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "constant_norm_rescale"):
        raise ExportError(f"cfg.json normalize_activations: {norm!r} has no saeops counterpart")
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or "unknown"
    is_tc = "transcoder" in arch
    act = _IMPORT_ACT[arch]
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    d_out = int(cfg.get("d_out", d_in))
    dtype = cfg.get("dtype", "float32")
    spec = DictionarySpec(
        type="transcoder" if is_tc else "sae",
        hook_point_in=hook,
        hook_point_out=(meta.get("hook_name_out") or f"{hook}.out") if is_tc else None,
        d_sae=d_sae,
        act_fn=act,  # type: ignore[arg-type]
        top_k=int(cfg.get("k", 50)),
        # SAELens' JumpReLU gates on pre alone; TopK on pre * ||W_dec|| only when rescaling.
        sparsity_include_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        skip_connection="skip" in arch,
        norm_activation="token-wise" if norm == "constant_norm_rescale" else "inference",
        dtype=dtype if dtype in ("float32", "float16", "bfloat16") else "float32",
    )
    model = build_dictionary(spec, d_in, d_out)
    b_enc = w["b_enc"]
    if not is_tc and not cfg.get("apply_b_dec_to_input", True):
        # saeops always centres by b_dec: (x - b) W + b_enc' == x W + b_enc.
        b_enc = b_enc + w["b_dec"] @ w["W_enc"]
    tensors = {"W_enc": w["W_enc"], "b_enc": b_enc, "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if act == "jumprelu":
        tensors["log_jumprelu_threshold"] = w["threshold"].clamp_min(1e-12).log()
    if "skip" in arch:
        tensors["W_skip"] = w["W_skip"].T
    model.load_weights({k: v.to(model.dtype) for k, v in tensors.items()})
    return model


__all__ = ["SAELENS_CONFIG", "SAELENS_WEIGHTS", "ExportError", "export_saelens", "import_saelens"]
