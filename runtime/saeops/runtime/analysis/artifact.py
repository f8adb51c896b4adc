"""The analysis artifact: `analysis/features.safetensors` (every tensor, columnar) and
`analysis/analysis.json` (metadata and the token display strings), through `saeops` storage.

    result = load_analysis("s3://bucket/runs/run1/analysis")   # or the run's URI
    result.contexts(42)                                        # top contexts of feature 42
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saeops.runtime.analysis.analyze import AnalysisResult
from saeops.runtime.storage import open_storage

TENSORS = "features.safetensors"
META = "analysis.json"
FORMAT_VERSION = 1
_STATS = ("features", "count", "frequency", "mean", "max", "hist_edges", "hist_counts", "l0_counts")


def to_tensors(result: AnalysisResult) -> dict[str, torch.Tensor]:
    """Flat name -> tensor map (`top.value`, `weak.tokens`, `logits.top_ids`, ...)."""
    out = {name: getattr(result, name) for name in _STATS}
    for group in ("top", "weak", "logits"):
        for k, v in (getattr(result, group) or {}).items():
            out[f"{group}.{k}"] = v
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def save_analysis(result: AnalysisResult, storage: Any) -> dict[str, str]:
    """Write both files into `storage` (a Storage opened at the analysis directory); the JSON
    goes last so its presence means the artifact is complete. Returns their URIs."""
    with tempfile.TemporaryDirectory(prefix="saeops-analysis-") as tmp:
        path = str(Path(tmp) / TENSORS)
        save_file(to_tensors(result), path, metadata={"format": "saeops-analysis", "version": str(FORMAT_VERSION)})
        storage.put_file(TENSORS, path)
    doc = {"format_version": FORMAT_VERSION, "meta": result.meta,
           "vocab": {str(k): v for k, v in result.vocab.items()}}
    storage.put_bytes(META, json.dumps(doc).encode())
    return {name: storage.url(name) for name in (TENSORS, META)}


def load_analysis(uri: str) -> AnalysisResult:
    """Load an analysis from its directory URI (or from the run's, whose `analysis/` holds it)."""
    storage = open_storage(uri)
    if not storage.exists(META) and storage.exists(f"analysis/{META}"):
        storage = storage.child("analysis")
    doc = storage.get_json(META)
    with tempfile.TemporaryDirectory(prefix="saeops-analysis-") as tmp:
        path = str(Path(tmp) / TENSORS)
        storage.get_file(TENSORS, path)
        tensors = load_file(path)
    groups: dict[str, dict[str, torch.Tensor]] = {"top": {}, "weak": {}, "logits": {}}
    for name, t in tensors.items():
        if "." in name:
            group, key = name.split(".", 1)
            groups[group][key] = t
    return AnalysisResult(
        meta=doc["meta"], **{name: tensors[name] for name in _STATS}, top=groups["top"], weak=groups["weak"],
        logits=groups["logits"] or None, vocab={int(k): v for k, v in doc["vocab"].items()},
    )


__all__ = ["META", "TENSORS", "load_analysis", "save_analysis", "to_tensors"]
