"""A training job: wires spec -> storage, language model, activation stream, dictionary, trainer,
checkpoints, metrics endpoint and artifacts. Used by `saeops run` and by the pods' entry point."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from saeops.api import SAETrainingRun, SpecError
from saeops.runtime.analysis import analyze_run
from saeops.runtime.artifacts import write_artifacts
from saeops.runtime.distributed.comm import DistributedComm
from saeops.runtime.distributed.context import DistContext, init_distributed
from saeops.runtime.distributed.faults import maybe_fail
from saeops.runtime.distributed.preemption import PREEMPTED_MARKER, Preempted, StopFlag
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
from saeops.runtime.runner import RunResult, check_dataset_path, check_hook_points, open_output, pick_device
from saeops.runtime.storage import Storage
from saeops.runtime.telemetry import RunMetrics
from saeops.runtime.train.checkpoint import Checkpointer
from saeops.runtime.train.sources import CacheSource, LiveSource, Source, SourceFactory
from saeops.runtime.train.trainer import Trainer
from saeops.runtime.train.wandb_logger import WandbLogger, import_wandb

log = logging.getLogger("saeops.run")


class TrainingJob:
    """One SAETrainingRun executed in this process."""

    def __init__(self, run: SAETrainingRun, *, progress: bool = True, metrics_port: int | None = None,
                 source: SourceFactory | None = None) -> None:
        """`source` replaces the live/cache source (tests)."""
        self.run = run
        self.spec = run.spec
        self.show_progress = progress and run.spec.trainer.progress_bar
        self.metrics_port = metrics_port
        self.metrics: RunMetrics | None = None
        self.wandb: WandbLogger | None = None
        self.bar: Any = None
        self.checkpoint_step: int | None = None
        self.source_factory = source
        self.ctx = DistContext()

    # ---------------------------------------------------------------- pieces

    def _activation_source(self, device: torch.device) -> tuple[Source, dict[str, int]]:
        """Returns (source, d_model per hook point); checks hook points and widths."""
        spec = self.spec
        hooks = spec.sae.hook_points()
        # Ranks of one tensor group share a batch: the stream is split by data rank only.
        rank, world_size = self.ctx.data.rank, self.ctx.data.size
        src: Source
        if self.source_factory is not None:
            src = self.source_factory(spec, hooks, rank=rank, world_size=world_size)
        elif spec.activations.cache_uri or spec.activations.cache_ref:
            src = CacheSource(spec, hooks, rank=rank, world_size=world_size)
        else:
            live = LiveSource(spec, hooks, device, rank=rank, world_size=world_size)
            check_hook_points(live.lm, self.run)
            src = live
        dims = src.dims()
        if spec.sae.d_model is not None and spec.sae.d_model != dims[hooks[0]]:
            raise SpecError(f"spec.sae.dModel={spec.sae.d_model} but {hooks[0]} has width {dims[hooks[0]]}")
        d_sae = spec.sae.d_sae_for(dims[hooks[0]])
        if spec.sae.is_topk_family and spec.sae.top_k > d_sae:
            raise SpecError(f"spec.sae.topK={spec.sae.top_k} exceeds dSae={d_sae}")
        return src, dims

    def _serve_metrics(self) -> None:
        # `saeops run --metrics-port`, or in pods the operator's SAEOPS_METRICS_PORT (rank 0 only).
        port = self.metrics_port if self.spec.metrics.enabled else None
        self.metrics = RunMetrics(self.run.metadata.name, self.run.metadata.namespace or "default")
        if port is not None:
            bound = self.metrics.serve(port)
            log.info("serving Prometheus metrics on :%d/metrics", bound)

    # ---------------------------------------------------------------- run

    def run_job(self) -> RunResult:
        """Train (resuming from the latest checkpoint) and write artifacts. In a distributed run
        every rank calls this; rank 0 alone writes. Raises `Preempted` after a SIGTERM checkpoint."""
        if self.spec.trainer.wandb is not None:
            import_wandb()  # a missing package fails before any work
        par = self.spec.parallelism
        self.ctx = init_distributed(par.data, par.tensor, pick_device(self.spec.model.device))
        stop = StopFlag().install()
        try:
            result = self._train(stop)
        except BaseException as e:
            if self.wandb is not None:
                self.wandb.abort(preempted=isinstance(e, Preempted))
            raise
        finally:
            stop.uninstall()
        # Only after a clean finish: after an error, exiting is what tells the other ranks.
        self.ctx.close()
        return result

    def _build(self, dims: dict[str, int], src: Source, checkpoint: dict[str, Any] | None,
               device: torch.device) -> SparseDictionary:
        """The dictionary this rank trains: initialised identically on every rank (or left for
        the checkpoint to fill), then sharded when `parallelism.tensor > 1`."""
        spec = self.spec
        hook_in, hook_out = self._hooks()
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
            log.info("initialised %s (d_sae=%d) in %.1fs", spec.sae.type, model.d_sae, time.perf_counter() - t0)
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

    def _hooks(self) -> tuple[str, str]:
        sae = self.spec.sae
        return sae.hook_point_in or sae.hook_points_in[0], sae.out_hook or sae.hook_points_out[0]

    def _train(self, stop: StopFlag) -> RunResult:
        spec, ctx = self.spec, self.ctx
        storage = open_output(spec.output)
        check_dataset_path(spec.dataset)
        if spec.trainer.wandb is not None:
            self.wandb = WandbLogger(self.run, spec.trainer.wandb, output_uri=storage.url(""), main=ctx.is_main)
        torch.manual_seed(spec.trainer.seed)
        device = ctx.device if ctx.distributed else pick_device(spec.model.device)
        src, dims = self._activation_source(device)
        checkpointer = Checkpointer(storage.child("checkpoints"), keep=spec.trainer.keep_checkpoints,
                                    ctx=ctx if ctx.distributed else None)
        checkpoint = checkpointer.read_latest()
        model = self._build(dims, src, checkpoint, device)
        trainer = Trainer(model, spec.trainer, device=device,
                          comm=DistributedComm(ctx, model) if ctx.distributed else None,
                          on_log=self._on_log, on_step=partial(self._on_step, checkpointer, stop))
        if checkpoint is not None:
            log.info("resumed from checkpoint at step %d", checkpointer.restore(checkpoint, model, trainer))
            del checkpoint
        if ctx.is_main:
            checkpointer.storage.delete(PREEMPTED_MARKER)
            self._serve_metrics()
            if self.show_progress:
                self.bar = tqdm(total=spec.trainer.total_steps * spec.trainer.batch_size, initial=trainer.state.tokens,
                                unit="tok", unit_scale=True, desc=self.run.metadata.name, dynamic_ncols=True)
        try:
            final = trainer.fit(src.stream(seed=spec.trainer.seed, skip_batches=trainer.state.step))
        finally:
            if self.bar is not None:
                self.bar.close()
        if not final and trainer.state.history:  # restarted after the last step: nothing left to train
            final = trainer.state.history[-1]
        if trainer.state.step % (spec.trainer.checkpoint_interval or trainer.state.step + 1):
            self._checkpoint(checkpointer, trainer)  # the final state, unless the interval just wrote it
        final = {**final, "tokens": float(trainer.state.tokens), "seconds": trainer.state.seconds}
        metrics = {"final": final, "history": trainer.state.history}
        full = model.to_full()  # a collective when sharded
        artifacts: dict[str, str] = {}
        if ctx.is_main:
            artifacts = write_artifacts(storage, full, self.run.to_manifest(), metrics)
            artifacts.update(self._after_training(storage, final))
            if self.wandb is not None:
                self.wandb.finish(final, storage)
        ctx.barrier()
        if self.metrics is not None:
            self._linger(stop)
            self.metrics.close()
        return RunResult(final=final, artifacts=artifacts, output_uri=storage.url(""))

    def _linger(self, stop: StopFlag) -> None:
        """Serve the final metrics a while longer (`spec.metrics.lingerSeconds`), until SIGTERM."""
        linger = self.spec.metrics.linger_seconds
        if not linger or self.metrics is None or self.metrics.port is None:
            return
        log.info("serving final metrics for %d s more", linger)
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and not stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            pass

    def _after_training(self, storage: Storage, final: dict[str, float]) -> dict[str, str]:
        """Optional evaluation (results into metrics.json's `eval`) and analysis report."""
        spec, out = self.spec, {}
        if spec.eval.enabled:
            res = evaluate_run(storage.url(""), tokens=spec.eval.tokens)
            if "loss_recovered" in res:
                final["loss_recovered"] = float(res["loss_recovered"])
            log.info("evaluation: loss recovered %.4f", res.get("loss_recovered", float("nan")))
        if spec.analysis.enabled:
            out["report"] = analyze_run(storage.url(""), spec.analysis.tokens, spec.analysis.top_n,
                                        spec.analysis.max_features, storage=storage)
        return out

    def _checkpoint(self, checkpointer: Checkpointer, trainer: Trainer) -> None:
        """Save a checkpoint (every rank takes part) and show its step on the metrics endpoint."""
        checkpointer.save(trainer.model, trainer)
        self.checkpoint_step = step = trainer.state.step
        if self.metrics is not None:
            self.metrics.update(self._hooks()[1], {"checkpoint_step": step})
        if self.wandb is not None:
            self.wandb.checkpoint(step)

    def _on_step(self, checkpointer: Checkpointer, stop: StopFlag, trainer: Trainer) -> None:
        """After each step: progress, a checkpoint every `checkpointInterval` steps, and on SIGTERM
        (agreed by all ranks at the same step boundary) a checkpoint, the preemption marker and
        `Preempted`."""
        step = trainer.state.step
        if self.bar is not None:
            self.bar.update(trainer.state.tokens - self.bar.n)
        maybe_fail("step", step)
        interval = self.spec.trainer.checkpoint_interval
        stopping = self.ctx.any(stop.is_set)
        if stopping or (interval and step % interval == 0):
            self._checkpoint(checkpointer, trainer)
        if stopping:
            if self.ctx.is_main:
                checkpointer.storage.put_json(PREEMPTED_MARKER, {"step": step})
            raise Preempted(step)

    def _on_log(self, values: dict[str, float]) -> None:
        """After each logging step: the Prometheus gauges, W&B and the progress bar."""
        total = self.spec.trainer.total_steps * self.spec.trainer.batch_size
        shown = {k: v for k, v in values.items() if not k.startswith("loss_")}
        shown.update(tokens_processed=values["tokens"], tokens_total=total, progress_ratio=values["tokens"] / total)
        if self.checkpoint_step is not None:
            shown["checkpoint_step"] = self.checkpoint_step
        terms = {k[5:]: v for k, v in values.items() if k.startswith("loss_")}
        if self.metrics is not None:
            self.metrics.update(self._hooks()[1], shown, terms)
        if self.wandb is not None:
            self.wandb.log(int(values["step"]), shown, terms)
        log.debug("step %d: %s", int(values["step"]), values)
        if self.bar is not None:
            self.bar.set_postfix(l0=f"{values['l0']:.1f}", ev=f"{values['explained_variance']:.3f}")
