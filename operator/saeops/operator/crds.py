"""The three CustomResourceDefinitions, generated from the spec models (`saeops crds`).

The committed YAML in `crds/` is this module's output; a test regenerates and compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from saeops.api import ActivationCache, Resource, SAESweep, SAETrainingRun
from saeops.api.names import GROUP, VERSION
from saeops.operator.crd_schema import Rules, structural

_PROCS = ("(has(self.resources) && has(self.resources.numNodes) ? self.resources.numNodes : 1) * "
          "(has(self.resources) && has(self.resources.numProcPerNode) ? self.resources.numProcPerNode : 1)")
_PARALLELISM_RULE = {
    # Without data, the models default it to the process count / tensor; given, it must match
    # (torchrun starts numNodes x numProcPerNode processes; the pods fail at start otherwise).
    "rule": "!has(self.parallelism) || !has(self.parallelism.data) || self.parallelism.data * "
            f"(has(self.parallelism.tensor) ? self.parallelism.tensor : 1) == {_PROCS}",
    "message": "parallelism.data x parallelism.tensor must equal resources.numNodes x "
               "resources.numProcPerNode (or leave parallelism.data out)",
}

# Unions the pydantic validators enforce, restated in CEL so `kubectl apply` rejects them
# before the operator ever sees the object. Keyed by the pydantic model's name.
UNION_RULES: Rules = {
    "ModelSpec": [
        {"rule": "has(self.path) != has(self.native)", "message": "set exactly one of path or native"},
    ],
    "ActivationsSpec": [
        {"rule": "!(has(self.cacheRef) && has(self.cacheUri))", "message": "set at most one of cacheRef or cacheUri"},
    ],
    "SweepParameter": [
        {
            "rule": "(has(self.categorical) ? 1 : 0) + (has(self.uniform) ? 1 : 0) + (has(self.logUniform) ? 1 : 0) == 1",
            "message": "set exactly one of categorical, uniform, logUniform",
        },
    ],
    "Range": [{"rule": "self.min < self.max", "message": "min must be < max"}],
    "DictionarySpec": [
        {
            "rule": "has(self.type) && self.type == 'clt' ? (has(self.hookPointsIn) && size(self.hookPointsIn) > 0) : has(self.hookPointIn)",
            "message": "hookPointIn is required (hookPointsIn for type clt)",
        },
        {
            "rule": "!has(self.dSae) || !has(self.actFn) || !(self.actFn in ['topk', 'batchtopk', 'layertopk', "
                    "'batchlayertopk']) || (has(self.topK) ? self.topK : 50) <= self.dSae",
            "message": "topK must be <= dSae (TopK family)",
        },
    ],
    # The API server's own toleration rules (a Job breaking them is refused with 422).
    "Toleration": [
        {"rule": "(has(self.key) && size(self.key) > 0) || (has(self.operator) && self.operator == 'Exists')",
         "message": "operator must be Exists when key is empty"},
        {"rule": "!(has(self.operator) && self.operator == 'Exists' && has(self.value) && size(self.value) > 0)",
         "message": "value must be empty when operator is Exists"},
        {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
         "message": "tolerationSeconds needs effect NoExecute"},
    ],
    "SAETrainingRunSpec": [_PARALLELISM_RULE],
    "ActivationCacheSpec": [_PARALLELISM_RULE],
}

# Identity fields: changing them would make the status and artifacts describe another run.
# Budget and lifecycle fields (suspend, deadlines, maxTrials, parallelTrials,
# maxFailedTrials) stay mutable so GitOps edits go through.
IMMUTABLE: dict[str, tuple[str, ...]] = {
    "SAETrainingRun": ("model", "dataset", "activations", "sae", "initializer", "trainer", "output"),
    "ActivationCache": ("model", "dataset", "hookPoints", "totalTokens", "dtype", "output"),
    "SAESweep": ("trialTemplate", "parameters", "searchAlgorithm", "objective"),
}

_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    "SAETrainingRun": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent"},
        {"name": "L0", "type": "string", "jsonPath": ".status.metrics.l0"},
        {"name": "EV", "type": "string", "jsonPath": ".status.metrics.explained_variance"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
        _AGE,
    ],
    "ActivationCache": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent"},
        {"name": "Tokens", "type": "integer", "jsonPath": ".status.progress.tokens"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
        _AGE,
    ],
    "SAESweep": [
        {"name": "Done", "type": "integer", "jsonPath": ".status.trialsSucceeded"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.trialsFailed"},
        {"name": "Trials", "type": "integer", "jsonPath": ".status.trials"},
        {"name": "Max", "type": "integer", "jsonPath": ".spec.maxTrials"},
        {"name": "Best", "type": "string", "jsonPath": ".status.bestTrial.name"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        _AGE,
    ],
}

RESOURCE_CLASSES: tuple[type[Resource], ...] = (ActivationCache, SAETrainingRun, SAESweep)


def openapi_schema(cls: type[Resource]) -> dict[str, Any]:
    """The structural openAPIV3Schema of one kind."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    props = raw["properties"]
    spec = structural(props["spec"], defs, UNION_RULES)
    for field in IMMUTABLE[cls.KIND]:
        if field in spec["properties"]:
            spec["properties"][field].setdefault("x-kubernetes-validations", []).append(
                {"rule": "self == oldSelf", "message": f"spec.{field} is immutable"}
            )
    status = structural(props["status"], defs, UNION_RULES)
    conds = status["properties"]["conditions"]
    # Server-side apply and `kubectl` merge conditions by type.
    conds["x-kubernetes-list-type"] = "map"
    conds["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "type": "object",
        "description": " ".join((cls.__doc__ or cls.KIND).split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "maxLength": 253, "description": "saeops.io/v1alpha1."},
            "kind": {"type": "string", "maxLength": 63, "description": f"{cls.KIND}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd(cls: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{cls.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "saeops", "app.kubernetes.io/part-of": "saeops"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": cls.KIND,
                "listKind": f"{cls.KIND}List",
                "plural": cls.PLURAL,
                "singular": cls.KIND.lower(),
                "shortNames": list(cls.SHORT_NAMES),
                "categories": ["saeops"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS[cls.KIND],
                    "schema": {"openAPIV3Schema": openapi_schema(cls)},
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for the three kinds."""
    return {f"{GROUP}_{cls.PLURAL}.yaml": crd(cls) for cls in RESOURCE_CLASSES}


def render_yaml(obj: dict[str, Any]) -> str:
    """Stable YAML (key order kept, wide lines) so regeneration is byte-identical."""
    header = "# Generated by `saeops crds` from saeops.api; do not edit by hand.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True)


def write_crds(out_dir: str | Path) -> list[Path]:
    """Write one YAML file per kind into `out_dir`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, obj in all_crds().items():
        path = out / name
        path.write_text(render_yaml(obj), encoding="utf-8")
        paths.append(path)
    return paths

