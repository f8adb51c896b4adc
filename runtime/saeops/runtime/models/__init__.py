"""Sparse dictionaries: the SAE (transcoder, CLT and Lorsa later), their activation functions,
losses, normalisation, initialisation and registry."""

from saeops.runtime.models.activation import BatchTopK, JumpReLU, ReLU, TopK, build_activation
from saeops.runtime.models.base import FeatureActs, LossContext, LossOutput, SparseDictionary, save_dictionary
from saeops.runtime.models.init import Initializer, geometric_median
from saeops.runtime.models.normalize import compute_dataset_norm_factor, fold_dataset_norm, norm_factor
from saeops.runtime.models.registry import DICTIONARIES, build_dictionary, load_dictionary
from saeops.runtime.models.sae import SparseAutoEncoder

__all__ = [
    "DICTIONARIES",
    "BatchTopK",
    "FeatureActs",
    "Initializer",
    "JumpReLU",
    "LossContext",
    "LossOutput",
    "ReLU",
    "SparseAutoEncoder",
    "SparseDictionary",
    "TopK",
    "build_activation",
    "build_dictionary",
    "compute_dataset_norm_factor",
    "fold_dataset_norm",
    "geometric_median",
    "load_dictionary",
    "norm_factor",
    "save_dictionary",
]
