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
    assert res.meta["run"] == "tiny" and res.meta["tokens"] == 600
    assert res.top["value"].shape == (20, 4) and res.count.shape == (128,)
    assert res.logits is not None  # the native model has an unembedding
    html = (run / "analysis" / "report.html").read_text()
    assert "training curves" in html and "Feature index" in html
    assert "<b>600</b><span>analysed tokens</span>" in html  # the report states the count


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("args", "words"), [
    (["--tokens", "0"], ["--tokens", "0 must be >= 1"]),
    (["--tokens", "-5"], ["--tokens", ">= 1"]),
    (["--tokens", "2k"], ["--tokens", "'2k' is not a whole number"]),
    (["--tokens", "1.5"], ["--tokens", "whole number"]),
    (["--tokens"], ["--tokens", "expected one argument"]),
    (["--top-n", "0"], ["--top-n", ">= 1"]),
    (["--max-features", "0"], ["--max-features", ">= 1"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_bad_arguments_one_error_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             args: list[str], words: list[str]) -> None:
    # Through the top-level CLI as a user types it; the arguments are refused before RUN is read.
    assert main(["analyze", str(tmp_path), *args]) == 2
    out = capsys.readouterr()
    line = one_error_line(out.err)
    assert out.out == "" and all(w in line for w in words), line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_run_one_error_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "saeops analyze" in line and "config.json" in line, line


def test_help_states_the_exact_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--help"]) == 0
    assert "exactly this many tokens" in " ".join(capsys.readouterr().out.split())
