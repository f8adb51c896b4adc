"""Sparse dictionaries -- SAE, transcoder, cross-layer transcoder, Lorsa -- their activation
functions, losses, normalisation, initialisation, conversion and registry."""

from saeops.runtime.models.activation import BatchTopK, JumpReLU, ReLU, TopK, build_activation
from saeops.runtime.models.acts import FeatureActs
from saeops.runtime.models.base import SparseDictionary
from saeops.runtime.models.clt import CrossLayerTranscoder
from saeops.runtime.models.convert import convert_batchtopk_to_jumprelu
from saeops.runtime.models.init import Initializer, geometric_median, init_inputs
from saeops.runtime.models.init_from_model import initialize_from_language_model
from saeops.runtime.models.lorsa import LowRankSparseAttention
from saeops.runtime.models.losses import LossContext, LossOutput
from saeops.runtime.models.normalize import compute_dataset_norm_factor, norm_factor
from saeops.runtime.models.registry import DICTIONARIES, build_dictionary, load_dictionary
from saeops.runtime.models.sae import SparseAutoEncoder
from saeops.runtime.models.transcoder import Transcoder

__all__ = [
    "DICTIONARIES",
    "BatchTopK",
    "CrossLayerTranscoder",
    "FeatureActs",
    "Initializer",
    "JumpReLU",
    "LossContext",
    "LossOutput",
    "LowRankSparseAttention",
    "ReLU",
    "SparseAutoEncoder",
    "SparseDictionary",
    "TopK",
    "Transcoder",
    "build_activation",
    "build_dictionary",
    "compute_dataset_norm_factor",
    "convert_batchtopk_to_jumprelu",
    "geometric_median",
    "init_inputs",
    "initialize_from_language_model",
    "load_dictionary",
    "norm_factor",
]
