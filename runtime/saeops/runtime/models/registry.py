"""Registry of sparse dictionary types: build from a spec, load from a saved directory."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from saeops.api.training import DictionarySpec
from saeops.runtime.models.base import WEIGHTS_FILE, SparseDictionary, read_config
from saeops.runtime.models.clt import CrossLayerTranscoder
from saeops.runtime.models.lorsa import LowRankSparseAttention
from saeops.runtime.models.sae import SparseAutoEncoder
from saeops.runtime.models.transcoder import Transcoder

DICTIONARIES: dict[str, type[SparseDictionary]] = {
    "sae": SparseAutoEncoder,
    "transcoder": Transcoder,
    "clt": CrossLayerTranscoder,
    "lorsa": LowRankSparseAttention,
}


def dictionary_class(kind: str) -> type[SparseDictionary]:
    """The class registered for a `DictionarySpec.type`."""
    try:
        return DICTIONARIES[kind]
    except KeyError:
        raise NotImplementedError(
            f"sae.type {kind!r} is not implemented yet (available: {', '.join(sorted(DICTIONARIES))})"
        ) from None


def build_dictionary(spec: DictionarySpec, d_in: int, d_out: int | None = None) -> SparseDictionary:
    """A freshly (default-)initialised dictionary of `spec.type`."""
    return dictionary_class(spec.type)(spec, d_in, d_out)


def load_dictionary(directory: str | Path, device: str | torch.device | None = None) -> SparseDictionary:
    """Load a dictionary written by `SparseDictionary.save` from a local directory."""
    cfg = read_config(directory)
    spec = DictionarySpec.model_validate(cfg["spec"])
    model = build_dictionary(spec, cfg["d_in"], cfg["d_out"])
    if model.d_sae != cfg["d_sae"]:
        raise ValueError(f"config d_sae={cfg['d_sae']} does not match the spec's {model.d_sae}")
    model.load_weights(load_file(str(Path(directory) / WEIGHTS_FILE)))
    model.set_dataset_norm_factors(cfg["norm_factor_in"], cfg["norm_factor_out"])
    return model.to(device) if device is not None else model


__all__ = ["DICTIONARIES", "build_dictionary", "dictionary_class", "load_dictionary"]
