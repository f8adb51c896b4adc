"""One dictionary of a training group: its spec, output, dictionary, optimiser (Trainer),
checkpoints, metrics, W&B run and artifacts. A single run is a group of one member; a sweep's
trials that share an activation stream, or a run naming one dictionary per hook point, are
groups of several. The group (`group.py`) owns the stream, the process group and the loop."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from saeops.api import SAETrainingRun, SpecError
from saeops.api.layout import CHECKPOINTS
from saeops.runtime.analysis import analyze_run
from saeops.runtime.artifacts import write_artifacts
from saeops.runtime.distributed.comm import DistributedComm
from saeops.runtime.distributed.context import DistContext
from saeops.runtime.distributed.preemption import PREEMPTED_MARKER
from saeops.runtime.distributed.sharded import ShardedSAE, shardable
from saeops.runtime.evaluate import evaluate_run
from saeops.runtime.models import (
    Initializer,
    SparseAutoEncoder,
    SparseDictionary,
    build_dictionary,
    init_inputs,
    initialize_from_language_model,
)
from saeops.runtime.runner import RunResult, check_dataset_path, check_hook_points, open_output
from saeops.runtime.storage import Storage
from saeops.runtime.telemetry import RunMetrics
from saeops.runtime.train.checkpoint import Checkpointer, on_main
from saeops.runtime.train.identity import check_output
from saeops.runtime.train.sources import Source
from saeops.runtime.train.trainer import Trainer
from saeops.runtime.train.wandb_logger import WandbLogger

log = logging.getLogger("saeops.run")


class Member:
    """One SAETrainingRun trained from a (possibly shared) activation stream."""

    def __init__(self, run: SAETrainingRun, ctx: DistContext) -> None:
        self.run, self.spec, self.ctx = run, run.spec, ctx
        self.name = run.metadata.name
        self.key = self.name
        """How the group reports it: the trial's name, or the hook point for one run's dictionaries."""
        self.metrics: RunMetrics | None = None
        self.wandb: WandbLogger | None = None
        self.checkpoint_step: int | None = None
        self.error: str | None = None
        self.values: dict[str, float] = {}
        self.final: dict[str, float] = {}
        """The final metrics, set by `end`."""
        self.result: RunResult | None = None
        self.storage: Storage = None  # type: ignore[assignment]  # set by open()
        self.trainer: Trainer = None  # type: ignore[assignment]  # set by build()
        self.checkpointer: Checkpointer = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- before training

    @property
    def hooks(self) -> tuple[str, str]:
        """(hook read, hook reconstructed): the metrics' hook_point label is the second."""
        sae = self.spec.sae
        return sae.hook_point_in or sae.hook_points_in[0], sae.out_hook or sae.hook_points_out[0]

    def open(self) -> None:
        """Open and check the output before anything is written: an output holding another
        run's training (another spec, another resource, an old pickled checkpoint) is refused,
        and left as it is."""
        ctx = self.ctx
        self.storage = open_output(self.spec.output)
        on_main(ctx if ctx.distributed else None, lambda: check_output(self.storage, self.run))
        check_dataset_path(self.spec.dataset)
        if self.spec.trainer.wandb is not None:
            self.wandb = WandbLogger(self.run, self.spec.trainer.wandb, output_uri=self.storage.url(""),
                                     main=ctx.is_main)

    def check_source(self, src: Source, dims: dict[str, int]) -> None:
        """Hook points exist, widths agree with the spec, k fits the dictionary."""
        spec, hooks = self.spec, self.spec.sae.hook_points()
        if src.lm is not None:
            check_hook_points(src.lm, self.run)
        if spec.sae.d_model is not None and spec.sae.d_model != dims[hooks[0]]:
            raise SpecError(f"spec.sae.dModel={spec.sae.d_model} but {hooks[0]} has width {dims[hooks[0]]}")
        d_sae = spec.sae.d_sae_for(dims[hooks[0]])
        if spec.sae.is_topk_family and spec.sae.top_k > d_sae:
            raise SpecError(f"spec.sae.topK={spec.sae.top_k} exceeds dSae={d_sae}")

    def build(self, src: Source, dims: dict[str, int], device: torch.device) -> None:
        """Dictionary and trainer, from the latest checkpoint when there is one."""
        spec, ctx = self.spec, self.ctx
        self.checkpointer = Checkpointer(self.storage.child(CHECKPOINTS), keep=spec.trainer.keep_checkpoints,
                                         ctx=ctx if ctx.distributed else None, run=self.run)
        checkpoint = self.checkpointer.read_latest()
        model = self._dictionary(dims, src, checkpoint, device)
        self.trainer = Trainer(model, spec.trainer, device=device,
                               comm=DistributedComm(ctx, model) if ctx.distributed else None,
                               on_log=self._on_log)
        if checkpoint is not None:
            step = self.checkpointer.restore(checkpoint, model, self.trainer)
            log.info("%s: resumed from checkpoint at step %d", self.name, step)
        if ctx.is_main:
            self.checkpointer.storage.delete(PREEMPTED_MARKER)

    def _dictionary(self, dims: dict[str, int], src: Source, checkpoint: dict[str, Any] | None,
                    device: torch.device) -> SparseDictionary:
        """The dictionary this rank trains: initialised identically on every rank (or left for
        the checkpoint to fill), then sharded when `parallelism.tensor > 1`."""
        spec = self.spec
        hook_in, hook_out = self.hooks
        # Seeded here, right before the parameters are drawn, so a member of a group gets the
        # same initial weights as the same run alone (whatever ran before it in the process).
        torch.manual_seed(spec.trainer.seed)
        model = build_dictionary(spec.sae, dims[hook_in], dims[hook_out]).to(device)
        if checkpoint is None:
            t0 = time.perf_counter()
            sample = src.sample(spec.initializer.init_tokens, seed=spec.trainer.seed + 1)
            x_in, x_out = init_inputs(spec.sae, sample)
            Initializer(spec.initializer, seed=spec.trainer.seed).initialize(
                model, x_in.to(device), x_out.to(device), k=spec.trainer.initial_k or spec.sae.top_k,
            )
            if src.lm is not None:
                initialize_from_language_model(model, src.lm, spec.initializer)
            log.info("%s: initialised %s (d_sae=%d) in %.1fs", self.name, spec.sae.type, model.d_sae,
                     time.perf_counter() - t0)
            if self.ctx.distributed:
                # Same sample and seed give the same init; broadcasting makes it bitwise sure.
                for t in model.state_dict().values():
                    self.ctx.world.broadcast_(t)
        par = spec.parallelism
        reason = shardable(spec.sae, model.d_sae, par.tensor, spec.trainer)
        if par.tensor > 1 and reason is not None:
            raise SpecError(reason)
        # Data-parallel BatchTopK goes through ShardedSAE too (one shard), so its selection
        # spans the global batch as in one process; otherwise it would be per local batch.
        if par.tensor > 1 or (par.data > 1 and spec.sae.act_fn == "batchtopk" and reason is None):
            assert isinstance(model, SparseAutoEncoder)  # what `shardable` accepts
            return ShardedSAE.from_full(model, self.ctx.tensor, data=self.ctx.data, batch_group=self.ctx.world)
        return model

    # ---------------------------------------------------------------- training

    @property
    def step(self) -> int:
        return self.trainer.state.step

    @property
    def active(self) -> bool:
        return self.error is None and not self.trainer.done

    def advance(self, batch: dict[str, torch.Tensor]) -> None:
        self.values = self.trainer.advance(batch) or self.values

    def fail(self, e: BaseException) -> None:
        """This member stops here with its own error; the group trains on without it."""
        from saeops.runtime.errors import error_line

        self.error = error_line(e)
        when = "before training" if self.trainer is None else f"at step {self.step}"
        log.error("%s failed %s: %s", self.name, when, self.error)
        if self.wandb is not None:
            self.wandb.abort(preempted=False)

    def checkpoint(self) -> None:
        """Save a checkpoint (every rank takes part) and show its step on the metrics endpoint."""
        self.save_checkpoint()
        self.saved()

    def save_checkpoint(self) -> None:
        """Write the checkpoint of this step (the part a group may run beside other members')."""
        self.checkpointer.save(self.trainer.model, self.trainer)

    def saved(self) -> None:
        """After `save_checkpoint`: its step on the metrics endpoint and in W&B."""
        self.checkpoint_step = step = self.step
        if self.metrics is not None:
            self.metrics.update(self.hooks[1], {"checkpoint_step": step})
        if self.wandb is not None:
            self.wandb.checkpoint(step)

    def due(self, stopping: bool) -> bool:
        """A checkpoint is due after this step (the interval, or a stop)."""
        interval = self.spec.trainer.checkpoint_interval
        return stopping or bool(interval and self.step % interval == 0)

    def mark_preempted(self) -> None:
        if self.ctx.is_main:
            self.checkpointer.storage.put_json(PREEMPTED_MARKER, {"step": self.step})

    def _on_log(self, values: dict[str, float]) -> None:
        """After each logging step: the Prometheus gauges and W&B."""
        total = self.spec.trainer.total_steps * self.spec.trainer.batch_size
        shown = {k: v for k, v in values.items() if not k.startswith("loss_")}
        shown.update(tokens_processed=values["tokens"], tokens_total=total, progress_ratio=values["tokens"] / total)
        if self.checkpoint_step is not None:
            shown["checkpoint_step"] = self.checkpoint_step
        terms = {k[5:]: v for k, v in values.items() if k.startswith("loss_")}
        if self.metrics is not None:
            self.metrics.update(self.hooks[1], shown, terms)
        if self.wandb is not None:
            self.wandb.log(int(values["step"]), shown, terms)
        log.debug("%s step %d: %s", self.name, int(values["step"]), values)

    # ---------------------------------------------------------------- after training

    def end(self) -> None:
        """Training is over: the final metrics (the last window's when the stream ended early).
        The final checkpoint comes next (`unsaved`), then `finish`."""
        trainer = self.trainer
        final = trainer.end(self.values)
        if not final and trainer.state.history:  # restarted after the last step: nothing left to train
            final = trainer.state.history[-1]
        self.final = {**final, "tokens": float(trainer.state.tokens), "seconds": trainer.state.seconds}

    @property
    def unsaved(self) -> bool:
        """The final state is in no checkpoint yet (the interval did not just write it)."""
        step = self.trainer.state.step
        return bool(step % (self.spec.trainer.checkpoint_interval or step + 1))

    def finish(self) -> None:
        """After `end` and the final checkpoint: metrics.json and artifacts (rank 0 writes),
        evaluation and analysis when asked for."""
        trainer, ctx, final = self.trainer, self.ctx, self.final
        metrics = {"final": final, "history": trainer.state.history}
        full = trainer.model.to_full()  # a collective when sharded
        artifacts: dict[str, str] = {}
        if ctx.is_main:
            artifacts = write_artifacts(self.storage, full, self.run.to_manifest(), metrics)
            artifacts.update(self._after_training(final))
            if self.wandb is not None:
                self.wandb.finish(final, self.storage)
        self.result = RunResult(final=final, artifacts=artifacts, output_uri=self.storage.url(""))

    def _after_training(self, final: dict[str, float]) -> dict[str, str]:
        """Optional evaluation (results into metrics.json's `eval`) and analysis report."""
        spec, storage, out = self.spec, self.storage, {}
        if spec.eval.enabled:
            res = evaluate_run(storage.url(""), tokens=spec.eval.tokens)
            if "loss_recovered" in res:
                final["loss_recovered"] = float(res["loss_recovered"])
            log.info("evaluation: loss recovered %.4f", res.get("loss_recovered", float("nan")))
        if spec.analysis.enabled:
            out["report"] = analyze_run(storage.url(""), spec.analysis.tokens, spec.analysis.top_n,
                                        spec.analysis.max_features, storage=storage)
        return out
