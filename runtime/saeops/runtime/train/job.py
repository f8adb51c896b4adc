"""A training job: wires spec -> storage, language model, activation stream, dictionary, trainer,
checkpoints, metrics endpoint and artifacts. Used by `saeops run` and by the pods' entry point."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from saeops.api import SAETrainingRun, SpecError
from saeops.runtime.artifacts import write_artifacts
from saeops.runtime.runner import RunResult, check_dataset_path, check_hook_points, open_output, pick_device
from saeops.runtime.telemetry import RunMetrics
from saeops.runtime.train.checkpoint import Checkpointer
from saeops.runtime.train.trainer import Trainer

log = logging.getLogger("saeops.run")


class TrainingJob:
    """One SAETrainingRun executed in this process."""

    def __init__(self, run: SAETrainingRun, *, progress: bool = True, metrics_port: int | None = None,
                 source: Callable[..., Any] | None = None) -> None:
        """`source(spec, hooks, rank=, world_size=)` replaces the live/cache source (tests)."""
        self.run = run
        self.spec = run.spec
        self.show_progress = progress and run.spec.trainer.progress_bar
        self.metrics_port = metrics_port
        self.metrics: RunMetrics | None = None
        self.source_factory = source
        from saeops.runtime.distributed.context import DistContext

        self.ctx = DistContext()

    # ---------------------------------------------------------------- pieces

    def _activation_source(self, device: torch.device) -> tuple[Any, dict[str, int]]:
        """Returns (stream factory, d_model per hook point); checks hook points and widths."""
        spec = self.spec
        hooks = spec.sae.hook_points()
        # Ranks of one tensor group share a batch: the stream is split by data rank only.
        part = {"rank": self.ctx.data.rank, "world_size": self.ctx.data.size}
        if self.source_factory is not None:
            src = self.source_factory(spec, hooks, **part)
        elif spec.activations.cache_uri or spec.activations.cache_ref:
            from saeops.runtime.train.sources import CacheSource

            src = CacheSource(spec, hooks, **part)
        else:
            from saeops.runtime.train.sources import LiveSource

            src = LiveSource(spec, hooks, device, **part)
            check_hook_points(src.lm, self.run)
        dims = src.dims()
        if spec.sae.d_model is not None and spec.sae.d_model != dims[hooks[0]]:
            raise SpecError(f"spec.sae.dModel={spec.sae.d_model} but {hooks[0]} has width {dims[hooks[0]]}")
        d_sae = spec.sae.d_sae_for(dims[hooks[0]])
        if spec.sae.is_topk_family and spec.sae.top_k > d_sae:
            raise SpecError(f"spec.sae.topK={spec.sae.top_k} exceeds dSae={d_sae}")
        return src, dims

    def _progress_bar(self, initial: int) -> Any:
        if not self.show_progress or not self.ctx.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.spec.trainer.total_steps * self.spec.trainer.batch_size, initial=initial,
                    unit="tok", unit_scale=True, desc=self.run.metadata.name, dynamic_ncols=True)

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
        from saeops.runtime.distributed.context import init_distributed
        from saeops.runtime.distributed.preemption import StopFlag

        spec = self.spec
        par = spec.parallelism
        self.ctx = init_distributed(par.data, par.tensor, pick_device(spec.model.device))
        stop = StopFlag().install()
        try:
            result = self._train(stop)
        finally:
            stop.uninstall()
        # Only after a clean finish: after an error, exiting is what tells the other ranks.
        self.ctx.close()
        return result

    def _build(self, dims: dict[str, int], src: Any, checkpoint: dict[str, Any] | None, device: torch.device) -> Any:
        """The dictionary this rank trains: initialised identically on every rank (or left for
        the checkpoint to fill), then sharded when `parallelism.tensor > 1`."""
        from saeops.runtime.models import Initializer, build_dictionary
        from saeops.runtime.models.init import init_inputs
        from saeops.runtime.models.init_from_model import initialize_from_language_model

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
            lm = getattr(src, "lm", None)
            if lm is not None:
                initialize_from_language_model(model, lm, spec.initializer)
            log.info("initialised %s (d_sae=%d) in %.1fs", spec.sae.type, model.d_sae, time.perf_counter() - t0)
            if self.ctx.distributed:
                # Same sample and seed give the same init; broadcasting makes it bitwise sure.
                for t in model.state_dict().values():
                    self.ctx.world.broadcast_(t)
        from saeops.runtime.distributed.sharded import ShardedSAE, check_shardable

        par, tr = spec.parallelism, spec.trainer
        try:
            check_shardable(spec.sae, model.d_sae, par.tensor, sparsity_loss=tr.sparsity_loss_type,
                            aux_k=tr.aux_k_coefficient)
            shardable = True
        except SpecError:
            if par.tensor > 1:
                raise
            shardable = False
        # Data-parallel BatchTopK goes through ShardedSAE too (one shard), so its selection
        # spans the global batch as in one process; otherwise it would be per local batch.
        if par.tensor > 1 or (par.data > 1 and spec.sae.act_fn == "batchtopk" and shardable):
            model = ShardedSAE.from_full(model, self.ctx.tensor, data=self.ctx.data, batch_group=self.ctx.world)
        return model

    def _hooks(self) -> tuple[str, str]:
        sae = self.spec.sae
        return sae.hook_point_in or sae.hook_points_in[0], sae.out_hook or sae.hook_points_out[0]

    def _train(self, stop: Any) -> RunResult:
        from saeops.runtime.distributed.preemption import PREEMPTED_MARKER

        spec, ctx = self.spec, self.ctx
        storage = open_output(spec.output)
        check_dataset_path(spec.dataset)
        torch.manual_seed(spec.trainer.seed)
        device = ctx.device if ctx.distributed else pick_device(spec.model.device)
        src, dims = self._activation_source(device)
        import saeops.kernels

        saeops.kernels.configure(use_triton_kernel=spec.sae.use_triton_kernel)
        checkpoints = storage.child("checkpoints")
        checkpointer = Checkpointer(checkpoints, keep=spec.trainer.keep_checkpoints,
                                    ctx=ctx if ctx.distributed else None)
        checkpoint = checkpointer.read_latest()
        model = self._build(dims, src, checkpoint, device)
        comm = None
        if ctx.distributed:
            from saeops.runtime.distributed.comm import DistributedComm

            comm = DistributedComm(ctx, model)
        hook_in, hook_out = self._hooks()
        trainer = Trainer(model, spec.sae, spec.trainer, hook_in=hook_in, hook_out=hook_out, device=device,
                          comm=comm)
        if checkpoint is not None:
            log.info("resumed from checkpoint at step %d", checkpointer.restore(checkpoint, model, trainer))
            del checkpoint
        if ctx.is_main:
            checkpoints.delete(PREEMPTED_MARKER)

        if ctx.is_main:
            self._serve_metrics()
        trainer.on_log = self._on_log(trainer, hook_out)
        trainer.on_step = self._on_step(model, trainer, checkpointer, stop)
        bar = self._progress_bar(trainer.state.tokens)
        trainer.progress = bar
        try:
            batches: Iterator[dict[str, torch.Tensor]] = src.stream(seed=spec.trainer.seed,
                                                                    skip_batches=trainer.state.step)
            final = trainer.fit(batches)
        finally:
            if bar is not None:
                bar.close()
        if not final and trainer.state.history:  # restarted after the last step: nothing left to train
            final = trainer.state.history[-1]
        if trainer.state.step % (spec.trainer.checkpoint_interval or trainer.state.step + 1):
            checkpointer.save(model, trainer)  # the final state, unless the interval just wrote it
        final = {**final, "tokens": float(trainer.state.tokens), "seconds": trainer.state.seconds}
        metrics = {"final": final, "history": trainer.state.history}
        full = model.to_full() if hasattr(model, "to_full") else model  # a collective when sharded
        artifacts: dict[str, str] = {}
        if ctx.is_main:
            artifacts = write_artifacts(storage, full, self.run.to_manifest(), metrics)
            artifacts.update(self._after_training(storage, final))
        ctx.barrier()
        if self.metrics is not None:
            self._linger(stop)
            self.metrics.close()
        return RunResult(final=final, artifacts=artifacts, output_uri=storage.url(""))

    def _linger(self, stop: Any) -> None:
        """Serve the final metrics a while longer (`spec.metrics.lingerSeconds`), until SIGTERM."""
        linger = self.spec.metrics.linger_seconds
        if not linger or self.metrics is None or self.metrics.port is None:
            return
        log.info("serving final metrics for %d s more", linger)
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and not stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            pass

    def _after_training(self, storage: Any, final: dict[str, float]) -> dict[str, str]:
        """Optional evaluation (results into metrics.json's `eval`) and analysis report."""
        spec, out = self.spec, {}
        if spec.eval.enabled:
            from saeops.runtime.evaluate import evaluate_run

            res = evaluate_run(storage.url(""), tokens=spec.eval.tokens)
            if "loss_recovered" in res:
                final["loss_recovered"] = float(res["loss_recovered"])
            log.info("evaluation: loss recovered %.4f", res.get("loss_recovered", float("nan")))
        if spec.analysis.enabled:
            from saeops.runtime.analysis import analyze_run

            out["report"] = analyze_run(storage.url(""), spec.analysis.tokens, spec.analysis.top_n,
                                        spec.analysis.max_features, storage=storage)
        return out

    def _on_step(self, model: Any, trainer: Trainer, checkpointer: Checkpointer, stop: Any) -> Callable[..., None]:
        """After each step: a checkpoint every `checkpointInterval` steps, and on SIGTERM (agreed
        by all ranks at the same step boundary) a checkpoint, the preemption marker and `Preempted`."""
        from saeops.runtime.distributed.faults import maybe_fail
        from saeops.runtime.distributed.preemption import PREEMPTED_MARKER, Preempted

        interval = self.spec.trainer.checkpoint_interval

        def on_step(st: Any) -> None:
            maybe_fail("step", st.step)
            stopping = self.ctx.any(stop.is_set)
            if stopping or (interval and st.step % interval == 0):
                checkpointer.save(model, trainer)
            if stopping:
                if self.ctx.is_main:
                    checkpointer.storage.put_json(PREEMPTED_MARKER, {"step": st.step})
                raise Preempted(st.step)

        return on_step

    def _on_log(self, trainer: Trainer, hook: str):
        total = self.spec.trainer.total_steps * self.spec.trainer.batch_size

        def on_log(values: dict[str, float]) -> None:
            if self.metrics is not None:
                shown = {k: v for k, v in values.items() if not k.startswith("loss_")}
                shown.update(tokens_processed=values["tokens"], tokens_total=total,
                             progress_ratio=values["tokens"] / total)
                terms = {k[5:]: v for k, v in values.items() if k.startswith("loss_")}
                self.metrics.update(hook, shown, terms)
            log.debug("step %d: %s", int(values["step"]), values)
            if trainer.progress is not None:
                trainer.progress.set_postfix(l0=f"{values['l0']:.1f}", ev=f"{values['explained_variance']:.3f}")

        return on_log
