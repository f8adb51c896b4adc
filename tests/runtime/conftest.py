"""A tiny, fast SAETrainingRun: random TransformerLens model, byte tokenizer, a small jsonl text file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "sparse", "features", "light", "up", "in", "the", "residual", "stream", "of", "a", "small", "transformer", "trained", "on", "text"]


def write_corpus(path: Path, n_docs: int = 60) -> Path:
    with path.open("w") as f:
        for i in range(n_docs):
            words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(40 + i % 17)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


def tiny_run_doc(tmp_path: Path, **trainer: Any) -> dict[str, Any]:
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    return {
        "apiVersion": "saeops.io/v1alpha1",
        "kind": "SAETrainingRun",
        "metadata": {"name": "tiny"},
        "spec": {
            "model": {"name": "native-tiny", "native": {"nLayers": 2, "dModel": 32, "nHeads": 2, "dHead": 16,
                                                        "dMlp": 64, "dVocab": 300, "nCtx": 64},
                      "tokenizer": "bytes", "batchSize": 8},
            "dataset": {"path": str(corpus), "contextSize": 32},
            "activations": {"bufferSize": 1024},
            "sae": {"hookPointIn": "blocks.1.hook_resid_post", "expansionFactor": 4, "actFn": "topk", "topK": 4},
            "initializer": {"initTokens": 256},
            "trainer": {"totalTrainingTokens": 2048, "batchSize": 256, "lr": 1e-3, "logFrequency": 4,
                        "progressBar": False, **trainer},
            "output": {"storageUri": str(tmp_path / "out")},
        },
    }


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(tiny_run_doc(tmp_path)))
    return p
