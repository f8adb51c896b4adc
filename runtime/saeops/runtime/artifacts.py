"""Run artifacts: `sae.safetensors`, `config.json` (the spec), `metrics.json`.

`metrics.json` is a contract read by the operator, dashboards and outside tools:
`{"final": {l0, explained_variance, mse, dead_fraction, tokens, seconds, ...}, "history": [...]}`.
`metrics.json` is written last, so its presence means the artifact set is complete.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from saeops.runtime.storage import Storage

WEIGHTS = "sae.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"
FINAL_KEYS = ("l0", "explained_variance", "mse", "dead_fraction", "tokens", "seconds")


def write_artifacts(storage: Storage, model: Any, manifest: dict[str, Any], metrics: dict[str, Any]) -> dict[str, str]:
    """Save the dictionary and its config/metrics; returns artifact URIs by name."""
    missing = [k for k in FINAL_KEYS if k not in metrics.get("final", {})]
    if missing:
        raise ValueError(f"metrics.final lacks {missing}")
    with tempfile.TemporaryDirectory(prefix="saeops-artifacts-") as tmp:
        model.save(tmp)
        # The model's config.json describes the dictionary; the run manifest is kept beside it.
        config = json.loads((Path(tmp) / CONFIG).read_text())
        config["run"] = manifest
        storage.put_bytes(CONFIG, json.dumps(config, indent=2).encode())
        storage.put_file(WEIGHTS, str(Path(tmp) / WEIGHTS))
    storage.put_bytes(METRICS, json.dumps(metrics, indent=2).encode())
    return {name: storage.url(name) for name in (WEIGHTS, CONFIG, METRICS)}
