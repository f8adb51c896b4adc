"""`builtin:python-docs`: English prose from this Python installation's documentation strings.

Nothing is downloaded. The text is, in this order, each a fixed sorted sequence:

1. the language reference topics `pydoc` ships (`pydoc_data.topics`, the text of `help('for')`);
2. every module, class and function docstring of the standard library's `.py` sources, read
   with `ast` (no module is imported, so modules with import side effects such as
   `antigravity` or `this` are harmless, and private helpers' documentation counts too);
3. docstrings of the public C extension modules (`math`, `itertools`, `builtins`, ...), which
   have no source and are imported (a few with side effects, like `readline`, are skipped).

Test suites and third-party `site-packages` are excluded; identical texts are kept once.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import sys
import sysconfig
import tempfile
import tokenize
from collections.abc import Iterator
from pathlib import Path

MIN_CHARS = 80  # shorter docstrings are mostly "Return self." style boilerplate
FILE_NAME = "python-docs.jsonl"
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                       "turtledemo", "lib2to3"})
# C modules whose import changes process state (terminal, signals) or that are platform-only.
SKIP_C_MODULES = frozenset({"readline", "curses", "tkinter", "msvcrt", "winreg", "nt", "winsound"})


# reST underlines ("*****", "====="): markup, not language; they would dominate some windows.
RULE_LINE = re.compile(r"^[ \t]*([*=\-~^#+])\1{2,}[ \t]*$\n?", re.MULTILINE)


def _ok(text: str | None) -> str | None:
    if not isinstance(text, str):
        return None
    text = RULE_LINE.sub("", inspect.cleandoc(text)).strip()
    return text if len(text) >= MIN_CHARS else None


def stdlib_source_files() -> list[Path]:
    """Sorted `.py` files of the standard library, tests and site-packages left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if any(p in SKIP_DIRS or p.startswith("config-") for p in rel.parts):
            dirnames[:] = []
            continue
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docs_of_source(path: Path) -> Iterator[str]:
    try:
        with tokenize.open(path) as f:
            tree = ast.parse(f.read(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return

    def visit(node: ast.AST) -> Iterator[str]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = _ok(ast.get_docstring(node, clean=True))
            if doc:
                yield doc
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(tree)


def c_module_names() -> list[str]:
    """Public modules implemented in C (built in, or shared libraries in lib-dynload)."""
    names = set(sys.builtin_module_names)
    # The stdlib path, not platstdlib: inside a venv platstdlib points at the venv.
    dynload = Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"
    if dynload.is_dir():
        names.update(p.name.split(".")[0] for p in dynload.iterdir() if p.suffix == ".so")
    return sorted(n for n in names if not n.startswith("_") and n not in SKIP_C_MODULES)


def _docs_of_c_module(name: str) -> Iterator[str]:
    try:
        mod = importlib.import_module(name)
    except Exception:
        return
    doc = _ok(mod.__doc__)
    if doc:
        yield doc
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_"):
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            doc = _ok(obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__)
            if doc:
                yield doc
        if inspect.isclass(obj):
            for mname, member in sorted(vars(obj).items()):
                if not mname.startswith("_") and (inspect.isroutine(member) or inspect.isdatadescriptor(member)):
                    doc = _ok(getattr(member, "__doc__", None))
                    if doc:
                        yield doc


def iter_documents(sources: list[Path] | None = None, c_modules: list[str] | None = None,
                   topics: bool = True) -> Iterator[str]:
    """Unique documentation strings in a fixed order (arguments restrict the sources, for tests)."""
    seen: set[str] = set()

    def fresh(docs: Iterator[str]) -> Iterator[str]:
        for text in docs:
            if text not in seen:
                seen.add(text)
                yield text

    if topics:
        try:
            from pydoc_data.topics import topics as table
        except ImportError:
            table = {}
        yield from fresh(t for k in sorted(table) if (t := _ok(table[k])))
    for path in stdlib_source_files() if sources is None else sources:
        yield from fresh(_docs_of_source(path))
    for name in c_module_names() if c_modules is None else c_modules:
        yield from fresh(_docs_of_c_module(name))


def extract_python_docs(out_path: Path | str, *, sources: list[Path] | None = None,
                        c_modules: list[str] | None = None, topics: bool = True) -> Path:
    """Write the documentation strings as jsonl (`{"text": ...}` per line) to `out_path`.

    Written to a temporary file in the same directory and renamed, so readers never see a
    partial file and concurrent writers (several ranks) are harmless. Returns `out_path`.
    """
    out = Path(out_path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for text in iter_documents(sources, c_modules, topics):
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def python_docs_path() -> Path:
    """Where `builtin:python-docs` lives: `$SAEOPS_DATA_DIR/python-docs.jsonl`, else
    `~/.cache/saeops/datasets/python-docs.jsonl`."""
    root = os.environ.get("SAEOPS_DATA_DIR") or os.path.join(Path.home(), ".cache", "saeops", "datasets")
    return Path(root) / FILE_NAME


def ensure_python_docs() -> Path:
    """The builtin dataset's file, extracted on first use and reused afterwards."""
    path = python_docs_path()
    if not path.exists():
        extract_python_docs(path)
    return path
