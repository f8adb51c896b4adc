"""The bounded manifest reader and `--set`: every hostile document is one SpecError naming the
file (or the --set path), never a traceback, and never a large allocation."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from saeops.api import SpecError, apply_overrides, read_document, set_path
from saeops.api.reader import MAX_BYTES, MAX_DEPTH, MAX_NODES, parse_value


def laughs(levels: int = 9, width: int = 9) -> str:
    """The 'billion laughs': ~1 KB of YAML whose aliases expand to width**levels strings."""
    lines = ["apiVersion: saeops.io/v1alpha1", "kind: SAETrainingRun", "metadata:", "  name: x",
             "  annotations:", "    a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, data: str | bytes, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def refused(tmp_path: Path, data: str | bytes, needle: str, name: str = "m.yaml") -> str:
    p = write(tmp_path, data, name)
    with pytest.raises(SpecError) as err:
        read_document(p)
    msg = str(err.value)
    assert msg.startswith(str(p)) and needle in msg and "\n" not in msg, msg
    return msg


def test_billion_laughs_is_refused_without_allocating(tmp_path: Path) -> None:
    text = laughs()
    assert len(text) < 1200
    tracemalloc.start()
    try:
        refused(tmp_path, text, f"more than {MAX_NODES} values")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path, "base: &b {x: 1}\nuse: *b\nmerged:\n  <<: *b\n  y: 2\n"))
    assert doc == {"base": {"x": 1}, "use": {"x": 1}, "merged": {"x": 1, "y": 2}}


@pytest.mark.parametrize(("text", "needle"), [
    ("a: &a [*a]\n", "not complete"),
    ("a: *nope\n", "not complete"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "malformed yaml"),
    ("".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "x: 1\n",
     f"nested deeper than {MAX_DEPTH}"),
    ("a: [" + ", ".join(["1"] * (MAX_NODES + 10)) + "]\n", f"more than {MAX_NODES} values"),
    ("kind: a\nkind: b\n", "duplicate key 'kind'"),
    ("spec:\n  sae: {topK: 1, topK: 2}\n", "duplicate key 'topK'"),
    ("a: 1\n---\nb: 2\n", "more than one YAML document"),
    ("a: !!python/object:os.system {}\n", "malformed yaml"),
    ("a: !!binary aGVsbG8=\n", "tag:yaml.org,2002:binary has no JSON value"),
    ("a: !!set {x}\n", "has no JSON value"),
    ("1: x\n", "key 1 is not a string"),
    ("on: x\n", "key True is not a string"),
    ("? [a, b]\n: c\n", "not a string"),
    ("a: 'x\x00y'\n", "malformed yaml"),
    ("a: [1, 2\n", "line 2 column 1: malformed yaml"),
    ("", "expected a mapping"),
    ("- a\n- b\n", "expected a mapping"),
    ("just text\n", "expected a mapping"),
])
def test_hostile_yaml(tmp_path: Path, text: str, needle: str) -> None:
    refused(tmp_path, text, needle)


@pytest.mark.parametrize(("data", "needle"), [
    ("kind: qué\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 8)"),
    (bytes(range(256)), "not UTF-8"),
    ("kind: x\n".encode("utf-16"), "not UTF-8"),
    (b"a: 1\n#" + b"x" * MAX_BYTES, "larger than 1048576 bytes"),
])
def test_bad_bytes(tmp_path: Path, data: bytes, needle: str) -> None:
    refused(tmp_path, data, needle)


def test_utf8_bom_and_timestamps_and_yaml12_floats(tmp_path: Path) -> None:
    doc = read_document(write(tmp_path, "\ufeffa: 2026-01-01\nb: 4e-4\nc: 1E6\nd: '4e-4'\ne: 12\n"))
    assert doc == {"a": "2026-01-01", "b": 4e-4, "c": 1e6, "d": "4e-4", "e": 12}


@pytest.mark.parametrize(("text", "needle"), [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ("[" * 100_000 + "]" * 100_000, "nested deeper than"),
    ('{"a": ' + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "}", "nested deeper than"),
    ('{"a": [1, 2', "malformed json"),
    ('"text"', "expected a mapping"),
])
def test_hostile_json(tmp_path: Path, text: str, needle: str) -> None:
    refused(tmp_path, text, needle, "m.json")


@pytest.mark.parametrize(("text", "needle"), [
    ("a = 1\na = 2\n", "malformed toml"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("a = [1, 2\n", "malformed toml"),
])
def test_hostile_toml(tmp_path: Path, text: str, needle: str) -> None:
    refused(tmp_path, text, needle, "m.toml")


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        read_document(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="not a regular file"):
        read_document(tmp_path)  # a directory
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(SpecError, match="not a regular file"):
        read_document(tmp_path / "fifo.yaml")  # would block a reader forever


def test_json_nan_reaches_the_model_which_names_the_field(tmp_path: Path) -> None:
    from saeops.api import load_resource

    doc = json.loads(json.dumps(_quickstart_doc()))
    doc["spec"]["trainer"]["weightDecay"] = float("nan")
    p = tmp_path / "m.json"
    p.write_text(json.dumps(doc))  # json.dumps writes NaN, which json.loads reads back
    with pytest.raises(SpecError, match=r"spec\.trainer\.weightDecay: Input should be a finite number"):
        load_resource(p)


def _quickstart_doc() -> dict:
    from tests.spec.test_spec import quickstart_doc

    return quickstart_doc()


# ---------------------------------------------------------------- --set


@pytest.mark.parametrize(("path", "needle"), [
    ("spec.resources.tolerations.3.key", "there is no list at spec.resources.tolerations"),
    ("spec.list.5", "index 5 is out of range (the list has 2 items)"),
    ("spec.list.x", "spec.list is a list; index it with a number"),
    ("spec.list.-1", "index it with a number"),
    ("spec.list.99999999999999", "index it with a number"),
    ("spec.n.x", "spec.n is a number, not a mapping"),
    ("spec.s.x.y", "spec.s is a string, not a mapping"),
    ("spec..x", "empty path segment"),
    (".spec", "empty path segment"),
    ("", "empty path segment"),
    (".".join(["a"] * (MAX_DEPTH + 1)), "segments"),
])
def test_bad_set_paths(path: str, needle: str) -> None:
    doc = {"spec": {"list": [1, 2], "n": 3, "s": "x"}}
    with pytest.raises(SpecError) as err:
        set_path(doc, path, 1)
    assert needle in str(err.value)
    assert doc == {"spec": {"list": [1, 2], "n": 3, "s": "x"}}


def test_good_set_paths() -> None:
    doc = {"spec": {"list": [{"k": 1}, 2]}}
    apply_overrides(doc, ["spec.list.0.k=5", "spec.list.1=[a, b]", "spec.new.deep.x=4e-4", "spec.empty="])
    assert doc == {"spec": {"list": [{"k": 5}, ["a", "b"]], "new": {"deep": {"x": 4e-4}}, "empty": None}}


def test_set_values_are_bounded_like_files() -> None:
    bomb = laughs().split("annotations:\n", 1)[1]
    assert parse_value("{" + bomb.replace("\n    ", ", ").strip().rstrip(",") + "}") != {}  # stays text
    assert isinstance(parse_value("{a: &x [1], b: [" + ", ".join(["*x"] * 30_000) + "]}"), str)
    assert parse_value("[1, 2") == "[1, 2"
    assert parse_value("16") == 16 and parse_value("true") is True and parse_value("4e-4") == 4e-4
