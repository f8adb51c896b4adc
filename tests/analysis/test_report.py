"""The report: artifact round trip, and a real headless-Chromium render (DOM after the script
ran, plus a screenshot whose pixels must show the highlighted tokens)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from saeops.runtime.analysis import analyze, load_analysis, write_report
from saeops.runtime.storage import open_storage
from tests.analysis.conftest import make_sae, window_stream

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HIGHLIGHT = (255, 140, 0)


@pytest.fixture(scope="module")
def report(tiny_lm, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    torch.set_num_threads(1)
    model = make_sae("relu", d_sae=24)
    res = analyze(tiny_lm, model, window_stream(tiny_lm, corpus).iter_windows(), top_n=4, n_weak=3,
                  context_radius=4)
    out = tmp_path_factory.mktemp("run") / "analysis"
    metrics = {"final": {"l0": 11.0, "explained_variance": 0.5}, "history": [
        {"step": s, "l0": 12.0 - s, "mse": 1.0 / s, "explained_variance": 0.1 * s} for s in range(1, 6)]}
    uri = write_report(res, open_storage(str(out)), metrics)
    assert uri.endswith("analysis/report.html")
    return out, res


def test_artifact_round_trip(report) -> None:
    out, res = report
    loaded = load_analysis(str(out.parent))  # the run's URI finds analysis/
    assert loaded.meta == res.meta and loaded.vocab == res.vocab
    for name in ("count", "frequency", "mean", "max", "hist_counts", "l0_counts"):
        assert torch.equal(getattr(loaded, name), getattr(res, name))
    for group in ("top", "weak", "logits"):
        for k, v in getattr(res, group).items():
            assert torch.equal(getattr(loaded, group)[k], v)
    assert loaded.contexts(0) == res.contexts(0)


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    cmd = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_chromium(report, tmp_path: Path) -> None:
    out, res = report
    url = (out / "report.html").as_uri()
    # The DOM after the page's script ran: index rows and highlighted spans exist only if it did.
    dom = chromium("--dump-dom", url, tmp=tmp_path).stdout
    assert 'data-ready="1"' in dom
    rows = re.findall(r'<tr class="row[^"]*" data-feature="(\d+)"', dom)
    assert sorted(map(int, rows)) == list(range(res.meta["d_sae"]))
    cards = re.findall(r'<article class="card" id="feature-(\d+)"', dom)
    assert cards and int(cards[0]) == int(torch.argmax(res.max))  # index sorted by max activation
    # Chromium writes an opaque colour as rgb(...), a translucent one as rgba(..., alpha).
    alphas = [float(a or 1) for a in re.findall(
        r'<span class="tok[^"]*" data-act="[^"]+" title="[^"]*" '
        r'style="background-color: rgba?\(255, 140, 0(?:, ([\d.]+))?\);"', dom)]
    assert len(alphas) >= len(cards) and all(0 < a <= 1 for a in alphas)
    assert max(alphas) > 0.95  # the feature's max token is (almost) fully coloured
    assert dom.count("data:image/png;base64,") == 3  # density, L0, training curves

    png = tmp_path / "report.png"
    chromium(f"--screenshot={png}", "--window-size=1280,2000", url, tmp=tmp_path)
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(np.int32)
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.std() > 20  # not a blank page
    # Highlighted tokens: fully saturated highlight pixels, and lighter blends of it over white.
    exact = np.all(np.abs(pixels - np.array(HIGHLIGHT)) <= 3, axis=-1).sum()
    blends = ((pixels[..., 0] >= 250) & (pixels[..., 1] - pixels[..., 2] > 40) & (pixels[..., 2] < 230)).sum()
    assert exact > 50 and blends > exact
