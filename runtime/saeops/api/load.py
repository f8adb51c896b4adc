"""Load manifests (YAML, JSON, TOML), apply `--set` overrides, and turn errors into one line.

Reading is bounded (`saeops.api.reader`: size, encoding, nesting, alias expansion, duplicate
keys); every failure is a `SpecError` whose message is one line naming the file or the field.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from saeops.api.reader import MAX_BYTES, MAX_DEPTH, DocumentError, decode, parse_text, parse_value
from saeops.api.resources import KINDS, AnyResource, SAESweep, SAETrainingRunSpec, SweepParameter

EXIT_BAD_INPUT = 2
"""Exit status of every command given bad input (after one `error:` line)."""


class SpecError(ValueError):
    """Bad input: one line naming the field or file and the fix."""


_FORMATS = {".json": "json", ".toml": "toml"}
# Control characters, and every other character str.splitlines() breaks at (\x85, U+2028, U+2029).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_MESSAGE = 2000


def one_line(msg: str, limit: int = MAX_MESSAGE) -> str:
    """`msg` as one printable line of bounded length (input can put newlines in field names)."""
    flat = _CONTROL.sub(lambda m: repr(m.group())[1:-1], msg)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class CommandParser(argparse.ArgumentParser):
    """argparse for every `saeops` command: bad arguments are one `error:` line naming the
    command and the option, exit 2 (argparse's own error prints the usage too). Subcommand
    parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {one_line(message)} (see --help)\n")


def read_document(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML manifest into a dict, within `saeops.api.reader`'s caps."""
    p = Path(path)
    try:
        if not p.is_file():
            raise SpecError(f"{p}: not a regular file" if p.exists() else f"{p}: no such file")
        with p.open("rb") as f:
            data = f.read(MAX_BYTES + 1)  # never more, whatever the file claims to be
    except OSError as e:
        raise SpecError(f"{p}: cannot read it ({e.strerror or e})") from None
    try:
        doc = parse_text(decode(data), _FORMATS.get(p.suffix.lower(), "yaml"))
    except DocumentError as e:
        raise SpecError(one_line(f"{p}: {e}")) from None
    if not isinstance(doc, dict):
        raise SpecError(f"{p}: expected a mapping with apiVersion, kind, metadata and spec")
    return doc


def parse_scalar(text: str) -> Any:
    """A `--set` value: YAML scalar/flow syntax (16, 4e-4, true, [a, b], {k: v})."""
    return parse_value(text)


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `dotted.path=value` assignments using the manifest's own (camelCase) names."""
    for item in overrides:
        if "=" not in item:
            raise SpecError(one_line(f"--set {item!r}: expected dotted.path=value, e.g. spec.sae.topK=16"))
        path, value = item.split("=", 1)
        set_path(doc, path.strip(), parse_scalar(value))
    return doc


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict: mappings by key (missing ones are created), list elements
    by an existing integer index. Anything else is a `SpecError` naming the path."""
    keys = path.split(".")
    if not path or any(not k for k in keys):
        raise SpecError(one_line(f"--set {path!r}: empty path segment; write dotted.path=value"))
    if len(keys) > MAX_DEPTH:
        raise SpecError(one_line(f"--set {path[:80]!r}: more than {MAX_DEPTH} segments"))
    node: Any = doc
    for i, key in enumerate(keys):
        here = ".".join(keys[: i + 1])
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"[0-9]{1,6}", key):
                raise SpecError(one_line(f"--set {here}: {'.'.join(keys[:i]) or 'the document'} is a list; "
                                         "index it with a number"))
            index = int(key)
            if index >= len(node):
                raise SpecError(one_line(f"--set {here}: index {index} is out of range (the list has "
                                         f"{len(node)} items)"))
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise SpecError(one_line(f"--set {here}: {'.'.join(keys[:i])} is a {_kind_of(node)}, not a mapping"))
        if last:
            node[key] = value
        elif node.get(key) is None:
            # Mappings are created from here on; a number would index a list that is not there
            # (checked before anything is created, so a refused path changes nothing).
            j = next((j for j in range(i + 1, len(keys)) if keys[j].isdigit()), None)
            if j is not None:
                at = ".".join(keys[:j])
                raise SpecError(one_line(f"--set {'.'.join(keys[: j + 1])}: there is no list at {at} to index; "
                                         f"set the whole list, e.g. {at}=[...]"))
            node[key] = {}
            node = node[key]
        else:
            node = node[key]


def _kind_of(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string"}.get(type(value), type(value).__name__)


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


_INTERNAL_LOC = {"int", "float", "str", "bool", "list", "dict", "none"}


def _loc_part(part: Any) -> str | None:
    """A location part as the user wrote it; None for pydantic's internal schema labels."""
    if isinstance(part, int):
        return str(part)
    text = str(part)
    if text in _INTERNAL_LOC or text.startswith(("function-", "tagged")) or ("[" in text and text != "[key]"):
        return None
    return text if len(text) <= 64 else text[:61] + "..."


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(err: ValidationError, root: type[BaseModel], source: str = "") -> str:
    """One line per problem, first problem first; field paths use manifest names."""
    lines = []
    for e in err.errors():
        parts = [p for p in (_loc_part(x) for x in e["loc"]) if p is not None]
        is_key = parts[-1:] == ["[key]"]
        parts = [p for p in parts if p != "[key]"]
        dotted = ".".join(parts)
        loc = tuple(parts)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            owner = _model_at(root, loc)
            names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5) if loc else []
            msg = "unknown field" + (f"; did you mean {'.'.join([*dotted.split('.')[:-1], close[0]])}?" if close else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"].endswith(("_type", "_parsing")):
            msg = f"{msg} (got {_short_repr(e['input'])})"
        if is_key:
            msg = f"(key) {msg}"
        lines.append(f"{dotted or '(document)'}: {msg}")
    prefix = f"{source}: " if source else ""
    extra = f" (+{len(lines) - 1} more: {'; '.join(lines[1:3])})" if len(lines) > 1 else ""
    return one_line(prefix + lines[0] + extra)


def parse_resource(doc: Mapping[str, Any], source: str = "") -> AnyResource:
    """Validate a manifest dict into its kind's model."""
    prefix = f"{source}: " if source else ""
    api = doc.get("apiVersion")
    if not isinstance(api, str) or api != "saeops.io/v1alpha1":
        raise SpecError(one_line(f"{prefix}apiVersion: expected saeops.io/v1alpha1, got {_short_repr(api)}"))
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise SpecError(one_line(f"{prefix}kind: expected one of {', '.join(KINDS)}, got {_short_repr(kind)}"))
    cls = KINDS.get(kind)
    if cls is None:
        close = difflib.get_close_matches(kind[:64], list(KINDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; expected one of {', '.join(KINDS)}"
        raise SpecError(one_line(f"{prefix}kind: unknown kind {_short_repr(kind)}{hint}"))
    try:
        res = cls.model_validate(dict(doc))
    except ValidationError as e:
        raise SpecError(format_validation_error(e, cls, source)) from None
    if isinstance(res, SAESweep):
        check_sweep_values(res, doc["spec"]["trialTemplate"], source)
    return res  # type: ignore[return-value]


MAX_SWEEP_CHECKS = 256
"""Trial specs built to check a sweep's values (each parameter's values, evenly sampled)."""


def _candidates(p: SweepParameter) -> list[Any]:
    if p.categorical is not None:
        return list(p.categorical)
    rng = p.uniform or p.log_uniform
    assert rng is not None  # the model guarantees exactly one domain
    return [round(v) if p.integer else float(f"{v:.6g}") for v in (rng.min, rng.max)]


def check_sweep_values(sweep: SAESweep, template: Mapping[str, Any], source: str = "") -> None:
    """Every parameter value, set into the trial template alone, gives a valid SAETrainingRun spec
    (the trials would fail one by one otherwise). At most `MAX_SWEEP_CHECKS` values are built,
    spread evenly over each parameter's values, first and last included."""
    prefix = f"{source}: " if source else ""
    params = sweep.spec.parameters
    share = max(2, MAX_SWEEP_CHECKS // len(params))
    for i, p in enumerate(params):
        values = _candidates(p)
        if len(values) > share:
            values = [values[round(j * (len(values) - 1) / (share - 1))] for j in range(share)]
        for value in values:
            spec = copy.deepcopy(dict(template))
            where = f"{prefix}spec.parameters.{i} ({p.name}={_short_repr(value, 40)})"
            try:
                set_path(spec, p.name, value)
                SAETrainingRunSpec.model_validate(spec)
            except SpecError as e:
                raise SpecError(one_line(f"{where}: {e}".replace("--set ", ""))) from None
            except ValidationError as e:
                raise SpecError(one_line(f"{where}: trial spec {format_validation_error(e, SAETrainingRunSpec)}")) from None


def load_resource(path: str | Path, overrides: Iterable[str] = ()) -> AnyResource:
    """Read, override and validate a manifest file."""
    doc = apply_overrides(read_document(path), overrides)
    return parse_resource(doc, str(path))
