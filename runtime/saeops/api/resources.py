"""The three custom resources: SAETrainingRun, ActivationCache, SAESweep (+ their status)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from saeops.api.base import API_VERSION, MAX_TOKENS, Seed, SpecModel
from saeops.api.common import (
    DatasetSpec,
    Metadata,
    MetricsSpec,
    ModelSpec,
    OutputSpec,
    ParallelismSpec,
    SchedulingFields,
    TorchDtype,
    resolve_parallelism,
)
from saeops.api.training import (
    ActivationsSpec,
    AnalysisSpec,
    DictionarySpec,
    EvalSpec,
    InitializerSpec,
    TrainerSpec,
)

MAX_D_ACTIVE_SUBSPACE = 131072


# ---------------------------------------------------------------- status


class Condition(SpecModel):
    """A metav1-style condition."""

    model_config = SpecModel.model_config | {"extra": "ignore"}

    type: str = Field(..., max_length=63)
    """Condition type (Admitted, Running, Succeeded, Failed, Suspended)."""
    status: Literal["True", "False", "Unknown"] = "Unknown"
    """True, False or Unknown."""
    reason: str = Field("", max_length=128)
    """CamelCase reason."""
    message: str = Field("", max_length=4096)
    """Human-readable detail."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """Generation the condition was computed from."""


class Progress(SpecModel):
    """Training or generation progress."""

    model_config = SpecModel.model_config | {"extra": "ignore"}

    tokens: int = 0
    """Tokens processed."""
    total: int = 0
    """Tokens to process."""
    percent: str = "0"
    """Percent done, as a string."""
    eta: str | None = None
    """Estimated completion time (RFC 3339)."""


class RunStatus(SpecModel):
    """Status of an SAETrainingRun or ActivationCache."""

    model_config = SpecModel.model_config | {"extra": "ignore"}

    observed_generation: int | None = None
    """Generation of the spec this status describes."""
    phase: str = "Pending"
    """Pending, Waiting, Running, Suspended, Succeeded or Failed (for printer columns)."""
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Conditions, every type always present."""
    start_time: str | None = None
    """When the job first started."""
    completion_time: str | None = None
    """When the run finished."""
    restarts: int = 0
    """Restarts counted against failurePolicy.maxRestarts."""
    progress: Progress | None = None
    """Tokens done and to do."""
    metrics: dict[str, str] = Field(default_factory=dict, max_length=64)
    """Latest metrics (l0, explained_variance, ...) as strings."""
    last_checkpoint: str | None = None
    """URI of the latest checkpoint."""
    artifacts: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Artifact URIs by name."""
    job_name: str | None = None
    """Current Job."""


class TrialSummary(SpecModel):
    """One trial in a sweep's summary."""

    model_config = SpecModel.model_config | {"extra": "ignore"}

    name: str = Field(..., max_length=63)
    """Trial (SAETrainingRun) name."""
    parameters: dict[str, str] = Field(default_factory=dict)
    """Assigned parameters."""
    metrics: dict[str, str] = Field(default_factory=dict)
    """Final metrics."""


class SweepStatus(SpecModel):
    """Status of an SAESweep: counts and a bounded summary, never every trial."""

    model_config = SpecModel.model_config | {"extra": "ignore"}

    observed_generation: int | None = None
    """Generation of the spec this status describes."""
    phase: str = "Pending"
    """Pending, Running, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Conditions, every type always present."""
    start_time: str | None = None
    """When the first trial was created."""
    completion_time: str | None = None
    """When the sweep finished."""
    trials: int = 0
    """Trials created."""
    trials_running: int = 0
    """Trials running or pending."""
    trials_succeeded: int = 0
    """Trials succeeded."""
    trials_failed: int = 0
    """Trials failed."""
    best_trial: TrialSummary | None = None
    """Best trial by the objective."""
    pareto: list[TrialSummary] = Field(default_factory=list, max_length=32)
    """Pareto front (bounded)."""


# ---------------------------------------------------------------- kinds


class Resource(SpecModel):
    """Common envelope of the three kinds."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()

    api_version: Literal["saeops.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    """API version: saeops.io/v1alpha1."""
    kind: str
    """Resource kind."""
    metadata: Metadata
    """Object metadata."""

    @model_validator(mode="after")
    def _kind(self) -> Resource:
        if self.kind != self.KIND:
            raise ValueError(f"kind {self.kind!r} does not match {self.KIND}")
        return self


class SAETrainingRunSpec(SchedulingFields):
    """Train one sparse dictionary."""

    model: ModelSpec
    """Language model."""
    dataset: DatasetSpec | None = None
    """Text dataset (not needed when training from a cache)."""
    activations: ActivationsSpec = Field(default_factory=ActivationsSpec)
    """Activation source: live generation or a cache."""
    sae: DictionarySpec
    """The sparse dictionary."""
    initializer: InitializerSpec = Field(default_factory=InitializerSpec)
    """Parameter initialisation."""
    trainer: TrainerSpec
    """Optimiser, schedules, losses, logging."""
    output: OutputSpec
    """Where artifacts and checkpoints go."""
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    """Data and dictionary parallelism."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    """Prometheus endpoint."""
    eval: EvalSpec = Field(default_factory=EvalSpec)
    """Evaluation after training."""
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    """Feature analysis after training."""

    @model_validator(mode="after")
    def _check(self) -> SAETrainingRunSpec:
        live = self.activations.cache_ref is None and self.activations.cache_uri is None
        if live and self.dataset is None:
            raise ValueError("dataset is required unless activations.cacheRef or cacheUri is set")
        self.parallelism = resolve_parallelism(self.parallelism, self.resources)
        if self.trainer.batch_size % self.parallelism.data:
            raise ValueError(
                f"trainer.batchSize={self.trainer.batch_size} must be divisible by "
                f"parallelism.data={self.parallelism.data}"
            )
        d_sub = self.initializer.d_active_subspace
        if d_sub is not None and d_sub > MAX_D_ACTIVE_SUBSPACE:
            raise ValueError(f"initializer.dActiveSubspace={d_sub} is more than {MAX_D_ACTIVE_SUBSPACE}")
        if self.trainer.initial_k is not None and self.trainer.initial_k < self.sae.top_k:
            raise ValueError(f"trainer.initialK={self.trainer.initial_k} must be >= sae.topK={self.sae.top_k}")
        return self


class SAETrainingRun(Resource):
    """A training run of one sparse dictionary."""

    KIND: ClassVar[str] = "SAETrainingRun"
    PLURAL: ClassVar[str] = "saetrainingruns"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("saerun", "saeruns")

    kind: Literal["SAETrainingRun"] = "SAETrainingRun"
    """SAETrainingRun."""
    spec: SAETrainingRunSpec
    """What to train."""
    status: RunStatus | None = None
    """Observed state (written by the operator)."""


class ActivationCacheSpec(SchedulingFields):
    """Generate activations once, to train many dictionaries from."""

    model: ModelSpec
    """Language model."""
    dataset: DatasetSpec
    """Text dataset."""
    hook_points: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(..., min_length=1, max_length=64)
    """Hook points to cache."""
    total_tokens: int = Field(..., ge=1, le=MAX_TOKENS)
    """Tokens to cache per hook point (after filtering special tokens)."""
    dtype: TorchDtype = "float32"
    """Dtype of the stored activations."""
    shard_size: int = Field(65536, ge=1, le=1 << 26)
    """Tokens per shard."""
    seed: Seed = 42
    """Seed recorded with the cache (the readers' shuffle seed comes from each run)."""
    filter_special_tokens: bool = True
    """Drop BOS/EOS/pad/special-token positions."""
    output: OutputSpec
    """Where the cache is written."""
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    """Data parallelism of the generation."""

    @model_validator(mode="after")
    def _check(self) -> ActivationCacheSpec:
        self.parallelism = resolve_parallelism(self.parallelism, self.resources)
        return self


class ActivationCache(Resource):
    """A cache of language-model activations in object storage."""

    KIND: ClassVar[str] = "ActivationCache"
    PLURAL: ClassVar[str] = "activationcaches"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("actcache", "actcaches")

    kind: Literal["ActivationCache"] = "ActivationCache"
    """ActivationCache."""
    spec: ActivationCacheSpec
    """What to cache."""
    status: RunStatus | None = None
    """Observed state (written by the operator)."""


class Range(SpecModel):
    """A numeric range."""

    min: float
    """Lower bound."""
    max: float
    """Upper bound."""
    steps: int | None = Field(None, ge=1, le=1000)
    """Grid points (grid search only)."""

    @model_validator(mode="after")
    def _order(self) -> Range:
        if not self.min < self.max:
            raise ValueError(f"min={self.min} must be < max={self.max}")
        return self


def _plain_value_problem(value: Any, depth: int = 0) -> str | None:
    """Why a categorical value could not be a manifest value (None when it can)."""
    if depth > 8:
        return "is nested too deeply"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    if value is None or isinstance(value, str | int | float | bool):
        return None
    if isinstance(value, list):
        return next((p for v in value if (p := _plain_value_problem(v, depth + 1))), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "has a mapping with non-string keys"
        return next((p for v in value.values() if (p := _plain_value_problem(v, depth + 1))), None)
    return f"is a {type(value).__name__}, not a number, string, boolean, list or mapping"


class SweepParameter(SpecModel):
    """One swept parameter: a dotted path into trialTemplate and its values."""

    name: str = Field(..., min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
    """Dotted path in manifest names, e.g. `sae.topK` or `trainer.lr`."""
    categorical: list[Any] | None = Field(None, min_length=1, max_length=1000)
    """Explicit values."""
    uniform: Range | None = None
    """Uniform range."""
    log_uniform: Range | None = None
    """Log-uniform range (min > 0)."""
    integer: bool = False
    """Round sampled values to integers."""

    @model_validator(mode="after")
    def _one(self) -> SweepParameter:
        n = sum(x is not None for x in (self.categorical, self.uniform, self.log_uniform))
        if n != 1:
            raise ValueError(f"parameter {self.name}: set exactly one of categorical, uniform, logUniform")
        if self.log_uniform is not None and self.log_uniform.min <= 0:
            raise ValueError(f"parameter {self.name}: logUniform.min must be > 0")
        for i, value in enumerate(self.categorical or ()):
            problem = _plain_value_problem(value)
            if problem:
                raise ValueError(f"parameter {self.name}: categorical[{i}] {problem}")
        return self


class SearchAlgorithm(SpecModel):
    """How parameter assignments are chosen."""

    type: Literal["grid", "random"] = "grid"
    """grid (every combination) or random (seeded sampling)."""
    seed: Seed = 0
    """Seed of random search."""


class Objective(SpecModel):
    """What makes a trial best."""

    metric: str = Field("explained_variance", max_length=128)
    """Metric from metrics.json's `final` (explained_variance, mse, l0, ...)."""
    goal: Literal["maximize", "minimize"] = "maximize"
    """Direction."""
    target: float | None = None
    """Stop the sweep early once a trial reaches this value."""
    pareto_metric: str | None = Field("l0", max_length=128)
    """Second metric (minimised) for the Pareto front, e.g. l0 vs explained_variance."""


class GroupingSpec(SpecModel):
    """How a sweep's trials share one activation stream."""

    enabled: bool = True
    """Train trials that share one activation stream together (same model, dataset, activation
    settings, batch size, token count and seed: one model forward feeds every trial of a group)."""
    max_trials: int = Field(8, ge=1, le=64)
    """Trials in one group at most."""


class SAESweepSpec(SpecModel):
    """A hyper-parameter sweep over SAETrainingRuns."""

    trial_template: SAETrainingRunSpec
    """Spec every trial starts from."""
    parameters: list[SweepParameter] = Field(..., min_length=1, max_length=32)
    """Swept parameters."""
    search_algorithm: SearchAlgorithm = Field(default_factory=SearchAlgorithm)
    """grid or random."""
    objective: Objective = Field(default_factory=Objective)
    """Best-trial objective and Pareto pair."""
    max_trials: int = Field(10, ge=1, le=100_000)
    """Trials to run in total (raise it to resume a finished sweep)."""
    parallel_trials: int = Field(2, ge=1, le=1000)
    """Trials running at once."""
    max_failed_trials: int = Field(3, ge=0, le=100_000)
    """Fail the sweep after this many failed trials."""
    suspend: bool = False
    """Create no new trials while set."""
    grouping: GroupingSpec = Field(default_factory=GroupingSpec)
    """Trials that share one activation stream train together (one forward for the group)."""


class SAESweep(Resource):
    """A sweep of training runs."""

    KIND: ClassVar[str] = "SAESweep"
    PLURAL: ClassVar[str] = "saesweeps"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("saesweep",)

    kind: Literal["SAESweep"] = "SAESweep"
    """SAESweep."""
    spec: SAESweepSpec
    """The sweep."""
    status: SweepStatus | None = None
    """Observed state (written by the operator)."""


KINDS: dict[str, type[Resource]] = {k.KIND: k for k in (SAETrainingRun, ActivationCache, SAESweep)}
AnyResource = SAETrainingRun | ActivationCache | SAESweep
