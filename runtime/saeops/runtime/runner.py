"""Run an SAETrainingRun on this machine: the code path shared by `saeops run` and the pods.

Order matters for "bad input loses nothing": everything that can be checked is checked
(spec, output writable, dataset present, hook points exist, cache compatible) before any
training work, and artifacts are written only at the end, `metrics.json` last.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from saeops.api import DatasetSpec, OutputSpec, SAETrainingRun, SpecError
from saeops.runtime.lm import UnknownHookPointError
from saeops.runtime.storage import StorageError, open_storage

log = logging.getLogger("saeops.run")


@dataclass
class RunResult:
    """What a finished run reports."""

    final: dict[str, float]
    artifacts: dict[str, str]
    output_uri: str


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def open_output(out: OutputSpec) -> Any:
    """Open and probe the output location before any work (a bad one is an input error)."""
    try:
        storage = open_storage(out.storage_uri, endpoint_url=out.endpoint_url, region=out.region,
                               path_style=out.force_path_style or None)
        storage.check_writable()
    except StorageError as e:
        raise SpecError(f"spec.output.storageUri: {e}") from None
    return storage


def check_dataset_path(ds: DatasetSpec | None) -> None:
    if ds is None or ds.path.startswith("builtin:"):
        return
    if not os.path.exists(ds.path):
        raise SpecError(f"spec.dataset.path: {ds.path} does not exist")


def check_hook_points(lm: Any, run: SAETrainingRun) -> None:
    """Every hook point the dictionary reads or writes exists in the model (did-you-mean on error)."""
    try:
        lm.check_hook_points(run.spec.sae.hook_points())
    except UnknownHookPointError as e:
        raise SpecError(f"spec.sae: {e}") from None
