"""`saeops analyze` on a real (tiny) training run: artifacts, report, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from saeops.cli import main
from saeops.runtime.analysis import load_analysis, main_analyze
from tests.runtime.conftest import tiny_run_doc


def test_analyze_a_trained_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(tiny_run_doc(tmp_path)))
    assert main(["run", str(manifest), "--no-progress"]) == 0
    run = tmp_path / "out"
    capsys.readouterr()
    assert main_analyze([str(run), "--tokens", "600", "--top-n", "4", "--max-features", "20"]) == 0
    assert capsys.readouterr().out.strip() == (run / "analysis" / "report.html").as_uri()
    for name in ("features.safetensors", "analysis.json", "report.html"):
        assert (run / "analysis" / name).is_file()
    res = load_analysis(str(run))
    assert res.meta["run"] == "tiny" and res.meta["tokens"] >= 600
    assert res.top["value"].shape == (20, 4) and res.count.shape == (128,)
    assert res.logits is not None  # the native model has an unembedding
    html = (run / "analysis" / "report.html").read_text()
    assert "training curves" in html and "Feature index" in html


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_analyze([str(tmp_path / "missing")]) == 2
    assert "saeops analyze" in capsys.readouterr().err
    assert main_analyze([str(tmp_path), "--top-n", "0"]) == 2
