"""The scenarios' manifests: the repository's examples, made lean (short token budgets, a
small dictionary) and pointed at the test image and the moto S3 bucket."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.apiserver import NS, ROOT
from tests.cluster.conftest import SECRET_NAME, Cluster

Obj = dict[str, Any]
HOOK = "blocks.3.hook_resid_post"
LEAN_TRAINER = {"totalTrainingTokens": 8192, "batchSize": 1024, "logFrequency": 2, "checkpointInterval": 4}
CACHE_TOKENS = 8192
FROM_CACHE_TOKENS = 65536
"""Eight passes over the cache: 64 short steps, time enough to stop a run between two of them."""
LEAN_SAE = {"expansionFactor": 4, "topK": 16}
LEAN_INIT = {"biasInitMethod": "all_zero", "gridSearchInitNorm": False, "initTokens": 2048}


def example(name: str) -> Obj:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def output(c: Cluster, prefix: str) -> Obj:
    """S3 output in the test bucket; credentials from the Secret in the emulator."""
    return {"storageUri": f"s3://{c.bucket}/{prefix}", "secretRef": {"name": SECRET_NAME},
            "endpointUrl": c.s3_endpoint, "forcePathStyle": True}


def resources(c: Cluster, nodes: int = 1) -> Obj:
    return {"image": c.image, "imagePullPolicy": "Never", "numNodes": nodes}


def quickstart(c: Cluster, name: str, nodes: int = 1, **trainer: Any) -> Obj:
    """examples/quickstart.yaml as a cluster run: `nodes` pods, S3 output, lean budgets."""
    doc = example("quickstart.yaml")
    doc["metadata"] = {"name": name, "namespace": NS}
    spec = doc["spec"]
    spec["model"]["batchSize"] = 8  # 1024-token forward passes: the buffer fills with little work
    spec["activations"]["bufferSize"] = 2048
    spec["sae"].update(LEAN_SAE)
    spec["initializer"] = dict(LEAN_INIT)
    spec["trainer"].update({**LEAN_TRAINER, **trainer})
    spec["resources"] = resources(c, nodes)
    spec["output"] = output(c, f"runs/{name}")
    return doc


def cache(c: Cluster, name: str, tokens: int = CACHE_TOKENS) -> Obj:
    """examples/cache.yaml, one hook point and `tokens` tokens."""
    doc = example("cache.yaml")
    doc["metadata"] = {"name": name, "namespace": NS}
    spec = doc["spec"]
    spec["model"]["batchSize"] = 8
    spec.update(hookPoints=[HOOK], totalTokens=tokens, shardSize=1024, dtype="float32")
    spec["resources"] = resources(c)
    spec["output"] = output(c, f"caches/{name}")
    return doc


def run_from_cache(c: Cluster, name: str, cache_name: str, **trainer: Any) -> Obj:
    """examples/run-from-cache.yaml on `cache_name`, lean."""
    doc = example("run-from-cache.yaml")
    doc["metadata"] = {"name": name, "namespace": NS}
    spec = doc["spec"]
    spec["activations"] = {"cacheRef": cache_name}
    spec["sae"].update({**LEAN_SAE, "hookPointIn": HOOK})
    spec["initializer"] = dict(LEAN_INIT)
    spec["trainer"].update({**LEAN_TRAINER, "totalTrainingTokens": FROM_CACHE_TOKENS, "lr": 2e-3, **trainer})
    spec["resources"] = resources(c)
    spec["output"] = output(c, f"runs/{name}")
    return doc


def sweep(c: Cluster, name: str, cache_name: str) -> Obj:
    """examples/sweep.yaml: two trials (topK 8 and 16) at once, from the cache (one group)."""
    doc = example("sweep.yaml")
    doc["metadata"] = {"name": name, "namespace": NS}
    spec = doc["spec"]
    spec["parameters"] = [{"name": "sae.topK", "categorical": [8, 16]}]
    spec.update(maxTrials=2, parallelTrials=2, maxFailedTrials=0)
    template = copy.deepcopy(run_from_cache(c, "trial", cache_name, totalTrainingTokens=8192)["spec"])
    template["output"] = output(c, f"sweeps/{name}")
    spec["trialTemplate"] = template
    return doc


def write(path: Path, doc: Obj) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
