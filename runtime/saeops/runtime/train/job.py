"""A training job: wires spec -> storage, language model, activation stream, dictionary, trainer,
checkpoints, metrics endpoint and artifacts. Used by `saeops run` and by the pods' entry point."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from saeops.runtime.artifacts import write_artifacts
from saeops.runtime.runner import RunResult, check_dataset, check_hook_points, open_output, pick_device
from saeops.runtime.spec import SAETrainingRun, SpecError
from saeops.runtime.telemetry import RunMetrics
from saeops.runtime.train.checkpoint import Checkpointer
from saeops.runtime.train.trainer import Trainer

log = logging.getLogger("saeops.run")


class TrainingJob:
    """One SAETrainingRun executed in this process."""

    def __init__(self, run: SAETrainingRun, *, progress: bool = True, metrics_port: int | None = None) -> None:
        self.run = run
        self.spec = run.spec
        self.show_progress = progress and run.spec.trainer.progress_bar
        self.metrics_port = metrics_port
        self.metrics: RunMetrics | None = None

    # ---------------------------------------------------------------- pieces

    def _activation_source(self, device: torch.device) -> tuple[Any, dict[str, int]]:
        """Returns (stream factory, d_model per hook point); checks hook points and widths."""
        spec = self.spec
        hooks = spec.sae.hook_points()
        if spec.activations.cache_uri or spec.activations.cache_ref:
            from saeops.runtime.train.sources import CacheSource

            src = CacheSource(spec, hooks)
        else:
            from saeops.runtime.train.sources import LiveSource

            src = LiveSource(spec, hooks, device)
            check_hook_points(src.lm, self.run)
        dims = src.dims()
        if spec.sae.d_model is not None and spec.sae.d_model != dims[hooks[0]]:
            raise SpecError(f"spec.sae.dModel={spec.sae.d_model} but {hooks[0]} has width {dims[hooks[0]]}")
        d_sae = spec.sae.d_sae_for(dims[hooks[0]])
        if spec.sae.is_topk_family and spec.sae.top_k > d_sae:
            raise SpecError(f"spec.sae.topK={spec.sae.top_k} exceeds dSae={d_sae}")
        return src, dims

    def _progress_bar(self, initial: int) -> Any:
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.spec.trainer.total_steps * self.spec.trainer.batch_size, initial=initial,
                    unit="tok", unit_scale=True, desc=self.run.metadata.name, dynamic_ncols=True)

    def _serve_metrics(self) -> None:
        port = self.metrics_port
        if port is None and os.environ.get("SAEOPS_IN_CLUSTER") and self.spec.metrics.enabled:
            port = self.spec.metrics.port
        self.metrics = RunMetrics(self.run.metadata.name, self.run.metadata.namespace or "default")
        if port is not None:
            bound = self.metrics.serve(port)
            log.info("serving Prometheus metrics on :%d/metrics", bound)

    # ---------------------------------------------------------------- run

    def run_job(self) -> RunResult:
        spec = self.spec
        storage = open_output(self.run)
        check_dataset(self.run)
        torch.manual_seed(spec.trainer.seed)
        device = pick_device(spec.model.device)
        src, dims = self._activation_source(device)

        from saeops.runtime.models import Initializer, build_dictionary

        hook_in = spec.sae.hook_point_in or spec.sae.hook_points_in[0]
        hook_out = spec.sae.out_hook or spec.sae.hook_points_out[0]
        model = build_dictionary(spec.sae, dims[hook_in], dims[hook_out]).to(device)
        import saeops.kernels

        saeops.kernels.configure(use_triton_kernel=spec.sae.use_triton_kernel)
        checkpointer = Checkpointer(storage.child("checkpoints"), keep=spec.trainer.keep_checkpoints)
        trainer = Trainer(model, spec.sae, spec.trainer, hook_in=hook_in, hook_out=hook_out, device=device)

        resumed = checkpointer.load_latest(model, trainer)
        if resumed is None:
            t0 = time.perf_counter()
            sample = src.sample(spec.initializer.init_tokens, seed=spec.trainer.seed + 1)
            Initializer(spec.initializer, seed=spec.trainer.seed).initialize(
                model, sample[hook_in].to(device), sample[hook_out].to(device),
                k=spec.trainer.initial_k or spec.sae.top_k,
            )
            log.info("initialised %s (d_sae=%d) in %.1fs", spec.sae.type, model.d_sae, time.perf_counter() - t0)
        else:
            log.info("resumed from checkpoint at step %d", resumed)

        self._serve_metrics()
        trainer.on_log = self._on_log(trainer, hook_out)
        interval = spec.trainer.checkpoint_interval
        if interval:
            trainer.on_step = lambda st: (st.step % interval == 0) and checkpointer.save(model, trainer)
        bar = self._progress_bar(trainer.state.tokens)
        trainer.progress = bar
        try:
            batches: Iterator[dict[str, torch.Tensor]] = src.stream(seed=spec.trainer.seed,
                                                                    skip_batches=trainer.state.step)
            final = trainer.fit(batches)
        finally:
            if bar is not None:
                bar.close()
        final = {**final, "tokens": float(trainer.state.tokens), "seconds": trainer.state.seconds}
        metrics = {"final": final, "history": trainer.state.history}
        artifacts = write_artifacts(storage, model, self.run.to_manifest(), metrics)
        if self.metrics is not None:
            self.metrics.close()
        return RunResult(final=final, artifacts=artifacts, output_uri=storage.url(""))

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
