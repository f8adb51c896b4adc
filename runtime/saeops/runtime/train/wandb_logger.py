"""Weights & Biases logging of a training run (`spec.trainer.wandb`), from rank 0.

What goes to W&B: the run manifest as the config; at every logging step the metrics the
Prometheus endpoint serves (l0, explained_variance, mse, dead/dense fractions, tokens, step,
progress, learning rate, `loss/<term>`) and the rest of the step's values; the last checkpoint
step; at the end the final metrics as the summary and the artifacts (`sae.safetensors`,
`config.json`, `metrics.json`) as a `model` artifact. The W&B run id is derived from the
resource and its output, so a run resumed after preemption continues the same W&B run.

The `wandb` package is an optional extra (`pip install 'saeops[wandb]'`); its own environment
variables apply (`WANDB_MODE=offline|disabled`, `WANDB_DIR`, `WANDB_API_KEY`, ...).
"""

from __future__ import annotations

import hashlib
import importlib
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from saeops.api import SAETrainingRun, SpecError, WandbSpec
from saeops.runtime.artifacts import CONFIG, METRICS, WEIGHTS
from saeops.runtime.storage import Storage

INSTALL_HINT = "pip install 'saeops[wandb]'"


def import_wandb() -> ModuleType:
    """The wandb package; a SpecError naming the field and the fix when it is not installed."""
    try:
        return importlib.import_module("wandb")
    except ImportError:
        raise SpecError(f"spec.trainer.wandb is set but the wandb package is not installed: {INSTALL_HINT}") from None


class WandbLogger:
    """One W&B run for one training run; every method is a no-op on ranks other than 0."""

    def __init__(self, run: SAETrainingRun, spec: WandbSpec, *, output_uri: str, main: bool) -> None:
        self.wandb = import_wandb()
        self.main = main
        self.run: Any = None
        if not main:
            return
        name = run.metadata.name
        identity = f"{run.metadata.namespace or 'default'}/{name}@{output_uri}"
        self.run = self.wandb.init(
            project=spec.project, entity=spec.entity, name=spec.name or name,
            id=hashlib.sha1(identity.encode()).hexdigest()[:16], resume="allow",
            config=run.to_manifest(), job_type="train",
        )

    def log(self, step: int, metrics: dict[str, float], loss_terms: dict[str, float]) -> None:
        """One logging step: the Prometheus metrics and the loss terms (as `loss/<term>`)."""
        if self.run is not None:
            self.run.log({**metrics, **{f"loss/{k}": v for k, v in loss_terms.items()}}, step=step)

    def checkpoint(self, step: int) -> None:
        """A checkpoint was saved at `step` (into that step's row: the summary keeps the last)."""
        if self.run is not None:
            self.run.log({"checkpoint_step": step}, step=step)

    def finish(self, final: dict[str, float], storage: Storage) -> None:
        """The final metrics and the written artifacts; closes the W&B run."""
        if self.run is None:
            return
        self.run.summary.update(final)
        artifact = self.wandb.Artifact(f"{self.run.name}-dictionary", type="model", metadata=final)
        with tempfile.TemporaryDirectory(prefix="saeops-wandb-") as tmp:
            for name in (WEIGHTS, CONFIG, METRICS):
                path = Path(tmp) / name
                path.write_bytes(storage.get_bytes(name))
                artifact.add_file(str(path), name=name)
            self.run.log_artifact(artifact)
        self.run.finish()
        self.run = None

    def abort(self, *, preempted: bool) -> None:
        """The run stopped early: preempted (it resumes, into the same W&B run) or failed."""
        if self.run is not None:
            if preempted:
                self.run.mark_preempting()
            self.run.finish(exit_code=143 if preempted else 1)
            self.run = None


__all__ = ["INSTALL_HINT", "WandbLogger", "import_wandb"]
