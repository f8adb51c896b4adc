"""Spec of a sparse dictionary, its initialisation and its trainer (names follow the seeds)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from saeops.api.base import MAX_STEPS, MAX_TOKENS, Seed, SpecModel
from saeops.api.common import StorageLocation, TorchDtype
from saeops.api.k8s import DNSLabel

ActFn = Literal["relu", "jumprelu", "topk", "batchtopk", "layertopk", "batchlayertopk"]
TOPK_FAMILY = ("topk", "batchtopk", "layertopk", "batchlayertopk")
MAX_LATENTS = 1 << 26


def _steps_or_fraction(value: int | float) -> int | float:
    # A float >= 1 is ambiguous (1.0: one step, or all of them?): steps are integers.
    if isinstance(value, float) and not 0.0 <= value < 1.0:
        raise ValueError(f"{value!r}: a fraction of the total steps is in [0, 1); give a number of steps "
                         "as an integer")
    return value


StepsOrFraction = Annotated[int | float, AfterValidator(_steps_or_fraction)]
"""A number of steps (integer) or a fraction of the total steps (a float in [0, 1))."""


def _betas(value: tuple[float, float]) -> tuple[float, float]:
    for i, b in enumerate(value):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}]={b!r}: each Adam beta is in [0, 1)")
    return value


def resolve_steps(value: StepsOrFraction, total_steps: int) -> int:
    """Steps given as an int, or as a fraction (float < 1) of the total steps."""
    if isinstance(value, float) and value < 1.0:
        return int(value * total_steps)
    return int(value)


class LorsaSpec(SpecModel):
    """Low-rank sparse attention: many rank-1 OV heads sharing QK groups."""

    n_qk_heads: int = Field(8, ge=1, le=4096)
    """Number of QK heads (groups of OV heads share one)."""
    d_qk_head: int = Field(16, ge=1, le=1024)
    """Width of one QK head."""
    positional_embedding: Literal["none", "rotary"] = "none"
    """Positional scheme of the QK heads (match the model's)."""
    rotary_base: float = Field(10000.0, gt=0)
    """Rotary base when positional_embedding is rotary."""
    init_from_model: bool = False
    """Initialise QK weights from the model's own attention layer."""


class DictionarySpec(SpecModel):
    """The sparse dictionary: architecture, activation function, normalisation."""

    type: Literal["sae", "transcoder", "clt", "lorsa"] = "sae"
    """Kind of dictionary: `sae` reconstructs its input; `transcoder` reads hookPointIn and
    reconstructs hookPointOut; `clt` reads one hook per layer and writes every later layer;
    `lorsa` reconstructs an attention layer's output from its input."""
    hook_point_in: str | None = Field(None, max_length=253)
    """Hook point the dictionary reads (e.g. `blocks.3.hook_resid_post`)."""
    hook_point_out: str | None = Field(None, max_length=253)
    """Hook point it reconstructs; defaults to hookPointIn (an SAE)."""
    hook_points_in: list[str] = Field(default_factory=list, max_length=256)
    """CLT only: one input hook point per layer, in layer order."""
    hook_points_out: list[str] = Field(default_factory=list, max_length=256)
    """CLT only: one output hook point per layer, in layer order."""
    per_hook_point: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=64)
    """Type sae only, instead of hookPointIn: train one SAE per hook point listed, all with these
    settings, from one model forward per batch (e.g. one SAE per layer). Each SAE's artifacts and
    checkpoints go under output.storageUri/<hook point>."""
    d_model: int | None = Field(None, ge=1, le=131072)
    """Width of the activations; read from the model when left out."""
    expansion_factor: float = Field(8.0, gt=0, le=4096)
    """d_sae = d_model * expansionFactor (ignored when dSae is set)."""
    d_sae: int | None = Field(None, ge=1, le=MAX_LATENTS)
    """Number of latents; overrides expansionFactor."""
    act_fn: ActFn = "relu"
    """Activation function: relu, jumprelu, topk, batchtopk (CLT also layertopk, batchlayertopk)."""
    top_k: int = Field(50, ge=1, le=MAX_LATENTS)
    """k of the TopK family (L0 of the activations for topk)."""
    jumprelu_threshold_window: float = Field(2.0, gt=0)
    """Width of the straight-through window around the JumpReLU threshold."""
    use_decoder_bias: bool = True
    """Add a learned decoder bias."""
    use_glu_encoder: bool = False
    """Gate the encoder with a GLU (an extra encoder matrix)."""
    skip_connection: bool = False
    """Transcoder only: add a learned linear skip path from input to output."""
    norm_activation: Literal["token-wise", "batch-wise", "dataset-wise", "inference"] = "dataset-wise"
    """Activation normalisation to an average norm of sqrt(d_model)."""
    sparsity_include_decoder_norm: bool = True
    """Gate on pre-activations scaled by decoder norms (then scale back), so the dictionary cannot
    trade larger decoder norms for smaller activations."""
    use_triton_kernel: bool = False
    """Use the Triton sparse kernels on CUDA."""
    sparsity_threshold_for_triton_spmm_kernel: float = Field(0.996, ge=0, le=1)
    """Use the sparse decoder path only when at least this fraction of activations is zero."""
    dtype: TorchDtype = "float32"
    """Dtype of the dictionary's parameters."""
    lorsa: LorsaSpec | None = None
    """Lorsa settings (type lorsa only)."""

    @property
    def is_topk_family(self) -> bool:
        return self.act_fn in TOPK_FAMILY

    @model_validator(mode="after")
    def _check(self) -> DictionarySpec:
        if self.type == "clt":
            if not self.hook_points_in:
                raise ValueError("hookPointsIn: a clt needs one input hook point per layer")
            if len(self.hook_points_out) != len(self.hook_points_in):
                raise ValueError("hookPointsOut: a clt needs as many output hook points as inputs")
        elif self.per_hook_point:
            if self.type != "sae":
                raise ValueError("perHookPoint is for type: sae (one SAE per hook point); give a "
                                 f"{self.type} its hookPointIn")
            if self.hook_point_in is not None or self.hook_point_out is not None:
                raise ValueError("set hookPointIn or perHookPoint, not both")
            if len(set(self.per_hook_point)) < len(self.per_hook_point):
                raise ValueError("perHookPoint: each hook point once")
            if self.hook_points_in or self.hook_points_out:
                raise ValueError("hookPointsIn/hookPointsOut are for type: clt only")
        else:
            if self.hook_point_in is None:
                raise ValueError("hookPointIn is required (or perHookPoint: one SAE per hook point)")
            if self.hook_points_in or self.hook_points_out:
                raise ValueError("hookPointsIn/hookPointsOut are for type: clt only")
        if self.act_fn in ("layertopk", "batchlayertopk") and self.type != "clt":
            raise ValueError(f"actFn {self.act_fn} is for type: clt only; use topk or batchtopk")
        # k only matters for the TopK family (relu/jumprelu ignore it, whatever its default).
        if self.is_topk_family and self.d_model is not None and self.top_k > self.d_sae_for(self.d_model):
            raise ValueError(f"topK={self.top_k} exceeds dSae={self.d_sae_for(self.d_model)}")
        if self.is_topk_family and self.d_sae is not None and self.top_k > self.d_sae:
            raise ValueError(f"topK={self.top_k} exceeds dSae={self.d_sae}")
        if self.d_model is not None and not 1 <= self.d_sae_for(self.d_model) <= MAX_LATENTS:
            raise ValueError(f"dModel x expansionFactor = {self.d_sae_for(self.d_model)} latents; "
                             f"use 1 to {MAX_LATENTS}")
        return self

    @property
    def out_hook(self) -> str | None:
        return self.hook_point_out or self.hook_point_in

    def d_sae_for(self, d_model: int) -> int:
        """Number of latents for a given input width."""
        return self.d_sae if self.d_sae is not None else round(d_model * self.expansion_factor)

    def hook_points(self) -> list[str]:
        """Every hook point the dictionary reads or writes, in first-seen order."""
        if self.type == "clt":
            pts = [*self.hook_points_in, *self.hook_points_out]
        elif self.per_hook_point:
            pts = list(self.per_hook_point)
        else:
            pts = [p for p in (self.hook_point_in, self.out_hook) if p is not None]
        return list(dict.fromkeys(pts))


class InitializerSpec(SpecModel):
    """How the dictionary's parameters are initialised before training."""

    bias_init_method: Literal["all_zero", "geometric_median"] = "geometric_median"
    """Decoder bias: zeros, or the geometric median of a sample of activations."""
    grid_search_init_norm: bool = True
    """Grid-search the decoder norm that minimises the initial MSE."""
    init_encoder_bias_with_mean_hidden_pre: bool = False
    """Set the encoder bias so the mean pre-activation over a sample is zero."""
    init_encoder_with_decoder_transpose: bool = True
    """Initialise the encoder as the decoder's transpose."""
    init_decoder_norm: float | None = Field(None, gt=0)
    """Fixed decoder row norm (when not grid-searched); default 0.1 * sqrt(d_model)/sqrt(d_sae)
    scaled to unit inputs."""
    init_log_jumprelu_threshold_value: float | None = None
    """Initial log threshold of JumpReLU (default log(0.1))."""
    initialize_W_D_with_active_subspace: bool = Field(False, alias="initializeWDWithActiveSubspace")
    """Confine decoder rows to the top principal subspace of the activations."""
    d_active_subspace: int | None = Field(None, ge=1)
    """Dimension of that subspace (about d_model / 2 for attention outputs)."""
    initialize_tc_with_mlp: bool = False
    """Transcoder only: initialise from the model's MLP weights where shapes allow."""
    init_tokens: int = Field(4096, ge=64, le=10_000_000)
    """Activations sampled for initialisation statistics."""


class WandbSpec(SpecModel):
    """Weights & Biases logging (only when wandb is installed)."""

    project: str = Field(..., max_length=253)
    """W&B project."""
    name: str | None = Field(None, max_length=253)
    """Run name (defaults to the resource name)."""
    entity: str | None = Field(None, max_length=253)
    """W&B entity."""


class TrainerSpec(SpecModel):
    """Optimiser, schedules, losses and logging."""

    total_training_tokens: int = Field(..., ge=1, le=MAX_TOKENS)
    """Activations (tokens) to train on; steps = totalTrainingTokens / batchSize."""
    batch_size: int = Field(4096, ge=1, le=1 << 24)
    """Activations per optimiser step (global, across data-parallel ranks)."""
    lr: float = Field(4e-4, gt=0, le=10)
    """Peak learning rate."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """Optimiser."""
    betas: Annotated[tuple[float, float], AfterValidator(_betas)] = Field((0.9, 0.999), strict=False)
    """Adam betas, each in [0, 1)."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay (adamw)."""
    lr_warm_up_steps: StepsOrFraction = Field(0, ge=0, le=MAX_STEPS)
    """Linear warm-up steps (int) or fraction of total steps (float < 1)."""
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up."""
    lr_cool_down_steps: StepsOrFraction = Field(0.2, ge=0, le=MAX_STEPS)
    """Decay steps at the end for cosine/linear (int or fraction)."""
    lr_end_ratio: float = Field(0.0, ge=0, le=1)
    """Final lr as a fraction of the peak for cosine/linear."""
    jumprelu_lr_factor: float = Field(1.0, gt=0)
    """Multiplier of the lr for JumpReLU log thresholds (0.1 smooths training)."""
    amp_dtype: TorchDtype = "float32"
    """Autocast dtype of the dictionary's forward."""
    clip_grad_norm: float = Field(0.0, ge=0)
    """Clip the gradient norm (0: off)."""
    sparsity_loss_type: Literal["power", "tanh", "tanh-quad", "none"] | None = None
    """Sparsity penalty; default `power` for relu/jumprelu and `none` for the TopK family."""
    l1_coefficient: float = Field(8e-5, ge=0)
    """Coefficient of the sparsity penalty."""
    l1_coefficient_warmup_steps: StepsOrFraction = Field(0.1, ge=0, le=MAX_STEPS)
    """Linear warm-up of the sparsity coefficient from 0 (int or fraction)."""
    p: float = Field(1.0, gt=0)
    """Power of the Lp sparsity penalty."""
    tanh_stretch_coefficient: float = Field(4.0, gt=0)
    """Stretch c of the tanh penalty."""
    frequency_scale: float = Field(0.01, gt=0)
    """Frequency scale s of the tanh-quad penalty."""
    lp_coefficient: float | None = Field(None, ge=0)
    """JumpReLU pre-activation penalty coefficient (None: off)."""
    aux_k_coefficient: float = Field(0.0, ge=0)
    """Aux-K loss coefficient for TopK/BatchTopK (dead latents reconstruct the residual)."""
    k_aux: int | None = Field(None, ge=1, le=MAX_LATENTS)
    """Dead latents used by the Aux-K loss (default d_model / 2)."""
    initial_k: int | None = Field(None, ge=1, le=MAX_LATENTS)
    """Starting k of the k schedule (>= topK)."""
    k_warmup_steps: StepsOrFraction = Field(0.1, ge=0, le=MAX_STEPS)
    """Steps (or fraction) over which k decays from initialK to topK."""
    k_cold_booting_steps: StepsOrFraction = Field(0, ge=0, le=MAX_STEPS)
    """Steps (or fraction) k stays at initialK before decaying."""
    k_schedule_type: Literal["linear", "exponential"] = "linear"
    """Shape of the k decay."""
    k_exponential_factor: float = Field(3.0, gt=0)
    """Curvature of the exponential k decay."""
    dead_feature_window: int = Field(1_000_000, ge=1, le=MAX_TOKENS)
    """A latent is dead when it has not fired in this many tokens."""
    dense_feature_threshold: float = Field(0.1, gt=0, le=1)
    """A latent is dense when it fires on more than this fraction of tokens."""
    log_frequency: int = Field(100, ge=1, le=MAX_STEPS)
    """Log metrics every this many steps."""
    checkpoint_interval: int = Field(0, ge=0, le=MAX_STEPS)
    """Checkpoint every this many steps (0: only at the end and on SIGTERM)."""
    keep_checkpoints: int = Field(2, ge=1, le=100)
    """Checkpoints kept (older ones are deleted)."""
    seed: Seed = 42
    """Seed of initialisation, shuffling and every random choice (0 <= seed < 2**63)."""
    progress_bar: bool = True
    """Show a progress bar in local runs."""
    wandb: WandbSpec | None = None
    """W&B logging (off unless set)."""

    @model_validator(mode="after")
    def _check(self) -> TrainerSpec:
        if self.total_training_tokens < self.batch_size:
            raise ValueError(
                f"totalTrainingTokens={self.total_training_tokens} is smaller than batchSize={self.batch_size}"
            )
        return self

    @property
    def total_steps(self) -> int:
        return self.total_training_tokens // self.batch_size


class ActivationsSpec(SpecModel):
    """Where training activations come from: the live model, or an ActivationCache."""

    cache_ref: DNSLabel | None = None
    """Name of an ActivationCache in the same namespace (cluster runs)."""
    cache_uri: StorageLocation | None = Field(None, max_length=4096)
    """Storage URI of a cache (local runs, or a cache made elsewhere)."""
    buffer_size: int = Field(65536, ge=1, le=1 << 28)
    """Tokens in the online shuffle buffer (live generation)."""
    filter_special_tokens: bool = True
    """Drop BOS/EOS/pad/special-token positions."""
    shuffle: bool = True
    """Shuffle activations (a seeded permutation)."""

    @model_validator(mode="after")
    def _one(self) -> ActivationsSpec:
        if self.cache_ref and self.cache_uri:
            raise ValueError("set at most one of cacheRef or cacheUri")
        return self


class EvalSpec(SpecModel):
    """Evaluation after training: splice the reconstruction into the model."""

    enabled: bool = False
    """Run the evaluation at the end of training."""
    tokens: int = Field(16384, ge=1, le=MAX_TOKENS)
    """Tokens evaluated."""


class AnalysisSpec(SpecModel):
    """Feature analysis after training (top activations, HTML report)."""

    enabled: bool = False
    """Produce the analysis artifact and report at the end of training."""
    tokens: int = Field(65536, ge=1, le=MAX_TOKENS)
    """Tokens streamed for the analysis."""
    top_n: int = Field(16, ge=1, le=1024)
    """Top-activating contexts kept per feature."""
    max_features: int | None = Field(None, ge=1, le=MAX_LATENTS)
    """Features shown in the report (None: all)."""
