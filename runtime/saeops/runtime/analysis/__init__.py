"""Feature analysis of trained dictionaries: top-activating contexts, statistics, an HTML
report, and steering / ablation helpers (`saeops analyze`).

    from saeops.runtime.analysis import analyze_run, load_analysis, steer, ablate
    report_uri = analyze_run("runs/quickstart", tokens=32768)
    result = load_analysis("runs/quickstart")      # AnalysisResult
    result.contexts(42)                            # feature 42's top contexts
"""

from saeops.runtime.analysis.analyze import AnalysisError, AnalysisResult, analyze, logit_effects
from saeops.runtime.analysis.artifact import load_analysis, save_analysis
from saeops.runtime.analysis.cli import analyze_run, main_analyze, write_report
from saeops.runtime.analysis.intervene import ablate, steer
from saeops.runtime.analysis.report import render_report
from saeops.runtime.analysis.topn import StreamingTopK, sparse_candidates

__all__ = [
    "AnalysisError",
    "AnalysisResult",
    "StreamingTopK",
    "ablate",
    "analyze",
    "analyze_run",
    "load_analysis",
    "logit_effects",
    "main_analyze",
    "render_report",
    "save_analysis",
    "sparse_candidates",
    "steer",
    "write_report",
]
