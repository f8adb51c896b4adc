"""The Grafana dashboard parses, is importable, and only queries metrics the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._helpers import EXAMPLES, operator_metric_names, runtime_metric_names

DASHBOARD = EXAMPLES / "grafana" / "saeops-dashboard.json"
_METRIC = re.compile(r"\bsaeops_[a-zA-Z0-9_]+\b")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and query variables."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return exprs


def concrete(expr: str) -> str:
    """A Grafana query as plain PromQL: variables replaced, label_values() unwrapped."""
    m = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr)
    if m:
        expr = m.group(1)
    return re.sub(r"\$\{?\w+\}?", ".*", expr).replace("[$__rate_interval]", "[5m]")


def test_parses_and_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "saeops-training" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names[0] == "datasource" and {"namespace", "run"} <= set(names)
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_shows_the_training_and_operator_signals(dashboard: dict[str, Any]) -> None:
    text = " ".join(queries(dashboard))
    for metric in ("saeops_l0", "saeops_explained_variance", "saeops_mse", "saeops_dead_fraction",
                   "saeops_loss", "saeops_tokens_per_second", "saeops_progress_ratio",
                   "saeops_operator_reconciles_total", "saeops_operator_reconcile_seconds",
                   "saeops_operator_runs"):
        assert re.search(rf"\b{metric}", text), f"no panel shows {metric}"


def test_runtime_queries_name_only_exported_runtime_metrics(dashboard: dict[str, Any]) -> None:
    exported = runtime_metric_names()
    from saeops.runtime.telemetry import LABELS

    allowed_labels = {*LABELS, "term", "le"}
    for expr in queries(dashboard):
        names = set(_METRIC.findall(expr))
        if not names or any(n.startswith("saeops_operator_") for n in names):
            continue
        assert names <= exported, f"{expr}: {names - exported} not exported by saeops.runtime.telemetry"
        labels = {m for block in _MATCHERS.findall(expr) for m in _LABEL.findall(block)}
        labels |= {g.strip() for block in _GROUPING.findall(expr) for g in block.split(",") if g.strip()}
        assert labels <= allowed_labels, f"{expr}: labels {labels - allowed_labels} are not exported"


def test_operator_queries_name_only_exported_operator_metrics(dashboard: dict[str, Any]) -> None:
    exported = operator_metric_names()
    if not exported:
        pytest.skip("no saeops_operator_* metric found in operator/saeops/operator/ yet")
    for expr in queries(dashboard):
        names = {n for n in _METRIC.findall(expr) if n.startswith("saeops_operator_")}
        assert names <= exported, f"{expr}: {names - exported} not exported by the operator"


def test_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = [{"record": f"saeops_dashboard:query_{i}", "expr": concrete(e)} for i, e in enumerate(queries(dashboard))]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_metric_name_check_catches_unknown_names() -> None:
    assert not {"saeops_l0_typo"} <= runtime_metric_names()
    assert set(_METRIC.findall('sum by (run) (rate(saeops_l0{run="a"}[5m])) / saeops_mse')) == {
        "saeops_l0", "saeops_mse"}
