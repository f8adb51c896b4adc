"""Load manifests (YAML, JSON, TOML), apply `--set` overrides, and turn errors into one line."""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from saeops.api.resources import KINDS, AnyResource

EXIT_BAD_INPUT = 2
"""Exit status of every command given bad input (after one `error:` line)."""


class SpecError(ValueError):
    """Bad input: one line naming the field or file and the fix."""


def read_document(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML manifest into a dict."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: no such file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            doc = tomllib.loads(text)
        elif p.suffix == ".json":
            doc = json.loads(text)
        else:
            doc = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1} column {mark.column + 1}"
        elif isinstance(e, json.JSONDecodeError):
            where = f" line {e.lineno} column {e.colno}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{p}:{where}: malformed {p.suffix.lstrip('.') or 'yaml'}: {problem}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{p}: expected a mapping with apiVersion, kind, metadata and spec")
    return doc


def parse_scalar(text: str) -> Any:
    """A `--set` value: YAML scalar/flow syntax (16, 4e-4, true, [a, b], {k: v})."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `dotted.path=value` assignments using the manifest's own (camelCase) names."""
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected dotted.path=value, e.g. spec.sae.topK=16")
        path, value = item.split("=", 1)
        set_path(doc, path.strip(), parse_scalar(value))
    return doc


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` (list elements by integer index) in a nested dict, creating mappings."""
    keys = [k for k in path.split(".") if k]
    if not keys:
        raise SpecError(f"--set {path!r}: empty path")
    node: Any = doc
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[int(key)]
            continue
        if not isinstance(node.get(key), dict | list):
            if key in node and node[key] is not None:
                raise SpecError(f"--set {'.'.join(keys[: i + 1])}: is not a mapping")
            node[key] = {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for did-you-mean)."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in getattr(tp, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, root: type[BaseModel], source: str = "") -> str:
    """One line per problem, first problem first; field paths use manifest names."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged"))))
        # Drop pydantic's union-branch labels such as 'int' or 'float' inside a location.
        dotted = ".".join(str(p) for p in loc if not (isinstance(p, str) and p in {"int", "float", "str"}))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            owner = _model_at(root, loc)
            names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
            msg = "unknown field" + (f"; did you mean {'.'.join([*dotted.split('.')[:-1], close[0]])}?" if close else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"].endswith(("_type", "_parsing")):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{dotted or '(document)'}: {msg}")
    prefix = f"{source}: " if source else ""
    extra = f" (+{len(lines) - 1} more: {'; '.join(lines[1:3])})" if len(lines) > 1 else ""
    return prefix + lines[0] + extra


def parse_resource(doc: Mapping[str, Any], source: str = "") -> AnyResource:
    """Validate a manifest dict into its kind's model."""
    prefix = f"{source}: " if source else ""
    api = doc.get("apiVersion")
    if api != "saeops.io/v1alpha1":
        raise SpecError(f"{prefix}apiVersion: expected saeops.io/v1alpha1, got {api!r}")
    kind = doc.get("kind")
    cls = KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; expected one of {', '.join(KINDS)}"
        raise SpecError(f"{prefix}kind: unknown kind {kind!r}{hint}")
    try:
        return cls.model_validate(dict(doc))  # type: ignore[return-value]
    except ValidationError as e:
        raise SpecError(format_validation_error(e, cls, source)) from None


def load_resource(path: str | Path, overrides: Iterable[str] = ()) -> AnyResource:
    """Read, override and validate a manifest file."""
    doc = apply_overrides(read_document(path), overrides)
    return parse_resource(doc, str(path))
