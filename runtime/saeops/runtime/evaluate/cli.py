"""`saeops eval RUN`: splice a trained run's dictionary into its language model.

RUN is a run's output location (a local directory, `file://` or `s3://` URI) holding the
artifacts `sae.safetensors` + `config.json` (whose `run` key is the training manifest: model,
dataset). Results are printed as JSON and, unless `--no-write`, stored in the run's
`metrics.json` under `eval`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from saeops.api import SAETrainingRun
from saeops.api.load import CommandParser
from saeops.runtime.data import load_text_dataset, pack_windows
from saeops.runtime.evaluate.splice import EvalError, evaluate_splice
from saeops.runtime.lm import load_language_model
from saeops.runtime.models import load_dictionary
from saeops.runtime.storage import open_storage

METRICS = "metrics.json"


def eval_tokens(lm: Any, dataset_spec: Any, n_tokens: int) -> torch.Tensor:
    """`(N, context_size)` token windows of the run's dataset, about `n_tokens` in all."""
    ds = load_text_dataset(dataset_spec)
    prefix, suffix = lm.window_frame(dataset_spec.prepend_bos)
    texts = ((i, row[dataset_spec.text_field]) for i, row in enumerate(ds))
    n_windows = max(1, n_tokens // dataset_spec.context_size)
    windows = []
    for w in pack_windows(texts, lm.encode_batch, dataset_spec.context_size, prefix, suffix,
                          lm.separator_token_id):
        windows.append(torch.from_numpy(w.tokens))
        if len(windows) >= n_windows:
            break
    if not windows:
        raise EvalError("spec.dataset: no complete context window in the dataset")
    return torch.stack(windows)


def evaluate_run(location: str, *, tokens: int, batch_size: int = 8, device: str | None = None,
                 write: bool = True) -> dict[str, Any]:
    """Evaluate the run stored at `location`; returns the eval dict (also written to metrics.json)."""
    storage = open_storage(location)
    with tempfile.TemporaryDirectory(prefix="saeops-eval-") as tmp:
        for name in ("config.json", "sae.safetensors"):
            storage.get_file(name, str(Path(tmp) / name))
        config = json.loads((Path(tmp) / "config.json").read_text())
        model = load_dictionary(tmp)
    if "run" not in config:
        raise EvalError(f"{location}: config.json has no training manifest (key run)")
    run = SAETrainingRun.model_validate(config["run"])
    lm = load_language_model(run.spec.model, device=device)
    model = model.to(lm.device)
    toks = eval_tokens(lm, run.spec.dataset, tokens)
    result = evaluate_splice(lm, model, toks, batch_size=batch_size)
    if write:
        metrics = storage.get_json(METRICS) if storage.exists(METRICS) else {}
        metrics["eval"] = result
        storage.put_json(METRICS, metrics)
    return result


def main_eval(argv: list[str] | None = None) -> int:
    """Entry point of `saeops eval`. Exit 0 on success, 2 on bad input."""
    p = CommandParser(prog="saeops eval", description=__doc__.splitlines()[0])
    p.add_argument("run", help="run output location (directory, file:// or s3:// URI)")
    p.add_argument("--tokens", type=int, default=16384, help="tokens to evaluate (default 16384)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the run's model device)")
    p.add_argument("--no-write", action="store_true", help="do not store results in metrics.json")
    args = p.parse_args(argv)
    try:
        result = evaluate_run(args.run, tokens=args.tokens, batch_size=args.batch_size, device=args.device,
                              write=not args.no_write)
    except (EvalError, FileNotFoundError) as e:
        print(f"saeops eval: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


__all__ = ["eval_tokens", "evaluate_run", "main_eval"]
