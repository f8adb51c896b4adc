"""Read manifest text with bounded cost: a hostile file is refused before it can allocate.

Caps, each refused with one line naming the file: size (`MAX_BYTES`), encoding (UTF-8),
nesting (`MAX_DEPTH`), values after YAML alias expansion (`MAX_NODES`: a 1 KB "billion laughs"
would otherwise expand to gigabytes once validated or printed), duplicate keys (YAML, JSON;
TOML refuses them itself), non-string keys, and YAML tags that JSON has no value for. YAML is
checked on the parser's event stream (no recursion, stops at the first excess) before any
object is built; timestamps stay strings and `4e-4` is a float, as `kubectl` reads them.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import yaml

MAX_BYTES = 1 << 20
"""Largest manifest file (1 MiB; the API server's own request limit is about 3 MiB)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists (manifests use about 8)."""
MAX_NODES = 20_000
"""Most values in one document, counting every alias as the values it stands for."""

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # type: ignore[assignment]
_MERGE = "tag:yaml.org,2002:merge"


class DocumentError(ValueError):
    """The text is not an acceptable manifest document (message without the file name)."""


class _Loader(_SafeLoader):  # type: ignore[misc, valid-type]
    """SafeLoader (libyaml when present) that refuses duplicate and non-string keys and the tags
    JSON cannot hold."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is not a string (quote it)", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key[:64]!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def _as_string(self, node: yaml.ScalarNode) -> str:
        return str(self.construct_scalar(node))

    def _refuse(self, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag} has no JSON value and is not allowed in a manifest", node.start_mark)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader._as_string)
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader._refuse)
# YAML 1.2 (and kubectl) read `4e-4` and `1E6` as numbers; YAML 1.1 needs a dot.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _check_events(events: Iterator[yaml.Event]) -> None:
    """Depth and expanded size from the event stream, before anything is composed."""
    stack: list[int] = [0]
    anchors: dict[str, int] = {}
    open_anchors: list[str | None] = []
    docs = 0
    for ev in events:
        if isinstance(ev, yaml.DocumentStartEvent):
            docs += 1
            if docs > 1:
                raise DocumentError("more than one YAML document; put one resource per file")
        elif isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in anchors:
                raise DocumentError(f"alias *{ev.anchor} refers to an anchor that is not complete (recursive "
                                    "or undefined)")
            stack[-1] += anchors[ev.anchor]
        elif isinstance(ev, yaml.ScalarEvent):
            stack[-1] += 1
            if ev.anchor:
                anchors[ev.anchor] = 1
        elif isinstance(ev, yaml.CollectionStartEvent):
            if len(stack) > MAX_DEPTH:
                raise DocumentError(f"nested deeper than {MAX_DEPTH} levels")
            stack.append(1)
            open_anchors.append(ev.anchor)
        elif isinstance(ev, yaml.CollectionEndEvent):
            size = stack.pop()
            anchor = open_anchors.pop()
            if anchor:
                anchors[anchor] = size
            stack[-1] += size
        else:
            continue
        if stack[-1] > MAX_NODES or sum(stack) > MAX_NODES:
            raise DocumentError(f"more than {MAX_NODES} values (aliases counted as what they expand to)")


def _check_tree(doc: Any) -> None:
    """Depth and size of a parsed JSON/TOML value, iteratively."""
    todo: list[tuple[Any, int]] = [(doc, 0)]
    nodes = 0
    while todo:
        value, depth = todo.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise DocumentError(f"more than {MAX_NODES} values")
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise DocumentError(f"nested deeper than {MAX_DEPTH} levels")
            children = value.values() if isinstance(value, dict) else value
            todo.extend((c, depth + 1) for c in children)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def decode(data: bytes) -> str:
    """UTF-8 text (a BOM is dropped); DocumentError naming the first bad byte otherwise."""
    if len(data) > MAX_BYTES:
        raise DocumentError(f"larger than {MAX_BYTES} bytes (1 MiB); a manifest is a few KB")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DocumentError(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                            "save the manifest as UTF-8") from None


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}malformed yaml: {problem}"


def load_yaml(text: str) -> Any:
    """One YAML document, within the caps (an empty document is None)."""
    try:
        _check_events(yaml.parse(text, Loader=_Loader))
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise DocumentError(_yaml_error(e)) from None
    except RecursionError:  # libyaml bounds nesting itself; this is the pure-Python fallback
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None


def load_json(text: str) -> Any:
    try:
        doc = json.loads(text, object_pairs_hook=_json_pairs)
    except json.JSONDecodeError as e:
        raise DocumentError(f"line {e.lineno} column {e.colno}: malformed json: {e.msg}") from None
    except RecursionError:
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_tree(doc)
    return doc


def load_toml(text: str) -> Any:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DocumentError(f"malformed toml: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_tree(doc)
    return doc


def parse_text(text: str, fmt: str) -> Any:
    """Parse `text` as `fmt` (yaml, json or toml) within the caps."""
    return {"json": load_json, "toml": load_toml}.get(fmt, load_yaml)(text)


def parse_value(text: str) -> Any:
    """A `--set` value: YAML scalar or flow syntax (16, 4e-4, true, [a, b], {k: v}), within the
    caps; text that is not YAML stays a string."""
    try:
        return load_yaml(text)
    except DocumentError:
        return text


__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "DocumentError", "decode", "parse_text", "parse_value"]
