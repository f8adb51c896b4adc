"""Shared helpers of the deploy tests: paths, chart rendering, CRD schemas."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "saeops"
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
OPERATOR_SRC = REPO / "operator" / "saeops" / "operator"

RELEASE = "saeops"
NAMESPACE = "saeops-system"
# The oldest Kubernetes the chart is linted for and the newest schemas kubernetes-validate bundles.
KUBE_VERSIONS = ("1.30.0", "1.37.0")

Obj = dict[str, Any]


def load_yaml_docs(text: str) -> list[Obj]:
    """Non-empty YAML documents of a multi-document string."""
    return [d for d in yaml.safe_load_all(text) if d]


def render_chart(values: Obj | None = None, *, namespace: str = NAMESPACE) -> dict[str, list[Obj]]:
    """Render the chart with the real Helm engine: template path -> objects (NOTES.txt left out)."""
    import helm_python as helm

    chart = helm.Chart.load(CHART)
    try:
        rendered = chart.render(values or {}, name=RELEASE, namespace=namespace)
    finally:
        chart.close()
    return {path: load_yaml_docs(text) for path, text in rendered.items() if not path.endswith("NOTES.txt")}


def render_notes(values: Obj | None = None) -> str:
    import helm_python as helm

    chart = helm.Chart.load(CHART)
    try:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def rendered_objects(values: Obj | None = None, *, namespace: str = NAMESPACE) -> list[Obj]:
    return [obj for objs in render_chart(values, namespace=namespace).values() for obj in objs]


def by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


def crd_files() -> list[Path]:
    return sorted(CRDS.glob("*.yaml")) if CRDS.is_dir() else []


def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version in crds/."""
    out: dict[tuple[str, str], Obj] = {}
    for path in crd_files():
        for crd in load_yaml_docs(path.read_text(encoding="utf-8")):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def strict_structural(schema: Obj) -> Obj:
    """A CRD schema as a JSON schema the way the API server applies it with strict field validation:
    objects with `properties` reject unknown fields unless they preserve them, `nullable` allows
    null, and Kubernetes extensions (CEL rules, list types) are dropped."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        return out

    return walk(copy.deepcopy(schema))


def validate_against_crd(doc: Obj) -> list[str]:
    """Errors of a custom resource against its CRD's schema (empty list: valid)."""
    import jsonschema

    schemas = crd_schemas()
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key not in schemas:
        return [f"no CRD in crds/ serves {key[0]} {key[1]}"]
    validator = jsonschema.Draft4Validator(strict_structural(schemas[key]))
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


_METRIC_CALL = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"'](saeops_operator_[a-z0-9_]+)[\"']")
_METRIC_LITERAL = re.compile(r"[\"'](saeops_operator_[a-z0-9_]+)[\"']")
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("_sum", "_count", "_created"),
    "Info": ("_info",),
}


def operator_metric_names() -> set[str]:
    """Sample names the operator exports, found in its source (`saeops_operator_*`), with the
    suffixes prometheus_client adds for counters, histograms and summaries."""
    names: set[str] = set()
    if not OPERATOR_SRC.is_dir():
        return names
    for path in OPERATOR_SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        typed = {name: kind for kind, name in _METRIC_CALL.findall(text)}
        for name in _METRIC_LITERAL.findall(text):
            kind = typed.get(name)
            base = name.removesuffix("_total") if kind == "Counter" else name
            if kind in (None, "Gauge", "Enum"):
                names.add(base)
            names.update(base + s for s in _SUFFIXES.get(kind or "", ()))
            if kind is None:  # unknown shape: accept the common exposition suffixes
                names.update(base + s for s in ("_total", "_bucket", "_sum", "_count"))
    return names


def runtime_metric_names() -> set[str]:
    """Sample names the runtime exports (the contract in saeops.runtime.telemetry)."""
    from saeops.runtime.telemetry import GAUGES, LOSS_GAUGE

    return {*GAUGES, LOSS_GAUGE}
