"""`saeops analyze RUN`: top activations, feature cards and an HTML report for a trained run.

RUN is a run's output location (a local directory, `file://` or `s3://` URI) holding
`sae.safetensors` + `config.json` (whose `run` key is the training manifest: model, dataset).
The analysis is written to `RUN/analysis/` (or `--out`): `features.safetensors`,
`analysis.json`, `report.html`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from saeops.api import EXIT_BAD_INPUT, SAETrainingRun
from saeops.api.load import CommandParser, one_line
from saeops.runtime.analysis.analyze import AnalysisError, AnalysisResult, analyze
from saeops.runtime.analysis.artifact import save_analysis
from saeops.runtime.analysis.report import render_report
from saeops.runtime.data import ActivationStream
from saeops.runtime.lm import load_language_model
from saeops.runtime.models import load_dictionary
from saeops.runtime.storage import StorageError, open_storage

log = logging.getLogger("saeops.analysis")
REPORT = "report.html"
ANALYSIS_DIR = "analysis"


def _load_run(storage: Any) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """(dictionary, config.json, metrics.json or None) of the run stored in `storage`."""
    with tempfile.TemporaryDirectory(prefix="saeops-analyze-") as tmp:
        for name in ("config.json", "sae.safetensors"):
            storage.get_file(name, str(Path(tmp) / name))
        config = json.loads((Path(tmp) / "config.json").read_text())
        model = load_dictionary(tmp)
    metrics = storage.get_json("metrics.json") if storage.exists("metrics.json") else None
    return model, config, metrics


def write_report(result: AnalysisResult, out: Any, metrics: dict[str, Any] | None = None) -> str:
    """Save the artifact and `report.html` into storage `out`; returns the report's URI."""
    save_analysis(result, out)
    out.put_bytes(REPORT, render_report(result, metrics).encode())
    return out.url(REPORT)


def analyze_run(output_uri: str, tokens: int = 65536, top_n: int = 16, max_features: int | None = None, *,
                out_uri: str | None = None, device: str | None = None, n_weak: int = 8,
                context_radius: int = 8, storage: Any = None) -> str:
    """Analyse the run stored at `output_uri` over `tokens` tokens of its own dataset and write
    the artifact and report to `out_uri` (default `<run>/analysis/`). Returns the report URI.

    The training job calls this after training when `spec.analysis.enabled`, passing its
    already opened `storage` (which carries the run's S3 endpoint/region settings).
    """
    start = time.monotonic()
    storage = storage if storage is not None else open_storage(output_uri)
    out = open_storage(out_uri) if out_uri else storage.child(ANALYSIS_DIR)
    out.check_writable()
    model, config, metrics = _load_run(storage)
    if "run" not in config:
        raise AnalysisError(f"{output_uri}: config.json has no training manifest (key run)")
    run = SAETrainingRun.model_validate(config["run"])
    if run.spec.dataset is None:
        raise AnalysisError("spec.dataset: the analysis streams text through the model; the run has no dataset")
    lm = load_language_model(run.spec.model, device=device)
    model = model.to(lm.device)
    stream = ActivationStream(lm, run.spec.dataset, [model.spec.hook_point_in], batch_size=1, shuffle=False)
    result = analyze(lm, model, stream.iter_windows(), top_n=top_n, n_weak=n_weak, context_radius=context_radius,
                     max_features=max_features, tokens=tokens)
    result.meta["run"] = run.metadata.name
    uri = write_report(result, out, metrics)
    n = result.meta["tokens"]
    if n < tokens:
        log.warning("the dataset ended after %s of the %s tokens asked for", f"{n:,}", f"{tokens:,}")
    log.info("analysis of %s tokens written in %.1f s: %s", f"{n:,}", time.monotonic() - start, uri)
    return uri


def _positive(value: str) -> int:
    """An integer >= 1 (argparse names the option in the error)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number; give one >= 1") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


def main_analyze(argv: list[str] | None = None) -> int:
    """Entry point of `saeops analyze`. Exit 0 on success, 2 on bad input."""
    p = CommandParser(prog="saeops analyze", description=(__doc__ or "").splitlines()[0])
    p.add_argument("run", help="run output location (directory, file:// or s3:// URI)")
    p.add_argument("--tokens", type=_positive, default=65536,
                   help="analyse exactly this many tokens of the run's dataset (special tokens not counted; "
                        "fewer only if the dataset ends first); the report states the count (default 65536)")
    p.add_argument("--top-n", type=_positive, default=16, help="top-activating contexts per feature (default 16)")
    p.add_argument("--max-features", type=_positive, default=None, help="features with cards (default: all)")
    p.add_argument("--out", default=None, metavar="URI", help="output location (default RUN/analysis)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the run's model device)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, its one line already printed)
        return int(e.code or 0)
    try:
        uri = analyze_run(args.run, args.tokens, args.top_n, args.max_features, out_uri=args.out,
                          device=args.device)
    except (AnalysisError, FileNotFoundError, StorageError) as e:
        print(f"error: saeops analyze: {one_line(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(uri)
    return 0


__all__ = ["analyze_run", "main_analyze", "write_report"]
