"""Turn a pydantic JSON schema into a Kubernetes structural OpenAPI v3 schema.

Kubernetes wants every node typed (no `anyOf` of types, no `$ref`), OpenAPI 3.0 number
bounds (`exclusiveMinimum: true`), and bounds on every string, list and map so CEL rules
have a finite estimated cost. Pydantic gives JSON Schema 2020-12 with `$defs`; this module
bridges the two. Defaults are deliberately dropped: the operator and the runtime apply the
pydantic defaults, and API-server defaulting would freeze today's defaults into stored objects.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 64

Schema = dict[str, Any]
# Per pydantic model (by $defs name): CEL rules to attach where that model is used.
Rules = dict[str, list[dict[str, str]]]


def _resolve(node: Schema, defs: Schema) -> tuple[Schema, str | None]:
    """Inline one `$ref`; return the referenced schema (copied) and its model name."""
    ref = node.get("$ref")
    if ref is None:
        return node, None
    name = ref.rsplit("/", 1)[-1]
    target = copy.deepcopy(defs[name])
    # The field's own description beats the class docstring.
    for key, value in node.items():
        if key != "$ref":
            target[key] = value
    return target, name


def _collapse_any_of(node: Schema) -> Schema:
    """`X | None` -> X; `int | float` -> number. Keeps sibling keys (description, bounds)."""
    branches = [b for b in node["anyOf"] if b.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(branches) == 1:
        merged = dict(branches[0])
        merged.update(rest)
        return merged
    types = {b.get("type") for b in branches}
    if types <= {"integer", "number"}:
        merged = {"type": "number"}
        for b in branches:
            merged.update({k: v for k, v in b.items() if k != "type"})
        merged.update(rest)
        return merged
    # A genuinely heterogeneous union: keep whatever the value is.
    return {**rest, "x-kubernetes-preserve-unknown-fields": True}


def structural(node: Schema, defs: Schema, rules: Rules, max_length: int = DEFAULT_MAX_LENGTH) -> Schema:
    """Convert one (sub)schema, recursively, to the structural form Kubernetes accepts."""
    node, model = _resolve(node, defs)
    if "anyOf" in node:
        node = _collapse_any_of(node)
        node, model2 = _resolve(node, defs)
        model = model or model2
    if "allOf" in node and len(node["allOf"]) == 1:
        inner, model2 = _resolve(node["allOf"][0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "allOf"}}
        model = model or model2

    out: Schema = {}
    if "description" in node:
        out["description"] = " ".join(node["description"].split())
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    # pydantic writes ge/gt/le/lt on unions as non-standard keys; map them and JSON Schema's
    # numeric exclusive bounds to OpenAPI 3.0's boolean form.
    for src, dst, excl in (
        ("minimum", "minimum", False),
        ("ge", "minimum", False),
        ("exclusiveMinimum", "minimum", True),
        ("gt", "minimum", True),
        ("maximum", "maximum", False),
        ("le", "maximum", False),
        ("exclusiveMaximum", "maximum", True),
        ("lt", "maximum", True),
    ):
        if src in node:
            out[dst] = node[src]
            if excl:
                out["exclusive" + dst.capitalize()] = True

    typ = node.get("type")
    if typ is None and "enum" in node:
        typ = "string"
    if typ is None:
        # Any value (e.g. categorical sweep values: numbers, strings, booleans).
        out["x-kubernetes-preserve-unknown-fields"] = True
        return _attach(out, model, rules)
    out["type"] = typ
    if "enum" in node:
        out["enum"] = list(node["enum"])
    if typ == "string":
        if "enum" not in node:
            out["maxLength"] = node.get("maxLength", max_length)
        if "minLength" in node:
            out["minLength"] = node["minLength"]
        if "pattern" in node:
            out["pattern"] = node["pattern"]
    elif typ == "array":
        if "prefixItems" in node:  # fixed-size tuples: same item type
            items = structural(node["prefixItems"][0], defs, rules, max_length)
        else:
            items = structural(node.get("items", {}), defs, rules, max_length)
        out["items"] = items
        out["maxItems"] = node.get("maxItems", DEFAULT_MAX_ITEMS)
        if "minItems" in node:
            out["minItems"] = node["minItems"]
    elif typ == "object":
        props = node.get("properties")
        if props:
            out["properties"] = {k: structural(v, defs, rules, max_length) for k, v in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        pattern_props = node.get("patternProperties")
        if isinstance(pattern_props, dict) and len(pattern_props) == 1 and not props:
            # pydantic writes a key pattern as patternProperties. Structural schemas cannot
            # constrain map keys (and CEL over unbounded keys is too costly to estimate), so the
            # values keep their schema here and the keys are checked by the spec models.
            extra = next(iter(pattern_props.values()))
        if isinstance(extra, dict):
            out["additionalProperties"] = structural(extra, defs, rules, 1024)
            out["maxProperties"] = node.get("maxProperties", DEFAULT_MAX_PROPERTIES)
        elif not props and extra is not False:
            out["x-kubernetes-preserve-unknown-fields"] = True
    return _attach(out, model, rules)


def _attach(out: Schema, model: str | None, rules: Rules) -> Schema:
    if model and model in rules:
        out["x-kubernetes-validations"] = copy.deepcopy(rules[model])
    return out


def strip_descriptions(node: Any) -> Any:
    """A copy without descriptions (for compact comparisons)."""
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


__all__ = ["DEFAULT_MAX_ITEMS", "DEFAULT_MAX_LENGTH", "strip_descriptions", "structural"]
