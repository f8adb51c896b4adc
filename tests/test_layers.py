"""The import rule of docs/architecture.md, checked two ways.

1. Statically, over every `import` in the product code, top-level or inside a function: each
   package imports only the layers below it, and the module graph has no cycle.
2. Dynamically: each package imports in a fresh interpreter with the forbidden packages
   blocked (so a lazy import that slipped past the AST check still fails here).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "saeops.api": ROOT / "runtime" / "saeops" / "api",
    "saeops.kernels": ROOT / "kernels" / "saeops" / "kernels",
    "saeops.operator": ROOT / "operator" / "saeops" / "operator",
    "saeops.runtime": ROOT / "runtime" / "saeops" / "runtime",
    "saeops.cli": ROOT / "runtime" / "saeops" / "cli.py",
}
# What each layer may import of saeops (besides itself), and third-party roots it must not.
ALLOWED = {
    "saeops.api": set(),
    "saeops.kernels": set(),
    "saeops.operator": {"saeops.api"},
    "saeops.runtime": {"saeops.api", "saeops.kernels"},
    "saeops.cli": {"saeops.api", "saeops.operator", "saeops.runtime", "saeops.kernels"},
}
FORBIDDEN_THIRD_PARTY = {
    "saeops.api": {"torch", "kopf", "kubernetes", "boto3"},
    "saeops.operator": {"torch", "boto3", "safetensors", "transformers"},
}


def modules(package: str) -> Iterator[tuple[str, Path]]:
    path = PACKAGES[package]
    if path.is_file():
        yield package, path
        return
    for file in sorted(path.rglob("*.py")):
        rel = file.relative_to(path).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join([package, *parts]), file


def imports(name: str, file: Path) -> Iterator[tuple[str, int]]:
    """Every module `name` imports (absolute names), anywhere in the file."""
    tree = ast.parse(file.read_text(), str(file))
    is_pkg = file.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for alias in node.names:
                # `from pkg import submodule` depends on the submodule (its package's __init__
                # runs first, as for any submodule, but that is no dependency of ours).
                sub = f"{mod}.{alias.name}"
                yield (sub if sub in ALL or _is_module(sub) else mod), node.lineno


def _is_module(name: str) -> bool:
    parts = name.split(".")
    for package, path in PACKAGES.items():
        if name.startswith(package + ".") and path.is_dir():
            rel = path.joinpath(*parts[len(package.split(".")):])
            return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()
    return False


def layer_of(module: str) -> str | None:
    for package in sorted(PACKAGES, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return None


ALL = {name: file for package in PACKAGES for name, file in modules(package)}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_follow_the_layers(package: str) -> None:
    bad = []
    for name, file in modules(package):
        for mod, line in imports(name, file):
            target = layer_of(mod)
            root = mod.split(".")[0]
            if target is not None and target != package and target not in ALLOWED[package]:
                bad.append(f"{file.relative_to(ROOT)}:{line} imports {mod}")
            if root in FORBIDDEN_THIRD_PARTY.get(package, ()):
                bad.append(f"{file.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, f"{package} breaks the import rule:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    """No cycle among product modules, counting imports inside functions too."""
    graph: dict[str, set[str]] = {}
    for name, file in ALL.items():
        deps = set()
        for mod, _ in imports(name, file):
            # A module, or the package whose __init__ defines the imported name.
            target = mod if mod in ALL else mod.rsplit(".", 1)[0]
            if target in ALL and target != name:
                deps.add(target)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


BLOCKER = textwrap.dedent("""
    import importlib, pkgutil, sys
    blocked = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ImportError(f"{{name}} is blocked for {package}")
            return None

    sys.meta_path.insert(0, Block())
    pkg = importlib.import_module({package!r})
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), {package!r} + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
""")


@pytest.mark.parametrize("package", ["saeops.api", "saeops.kernels", "saeops.operator"])
def test_package_imports_with_other_layers_blocked(package: str) -> None:
    others = {p for p in PACKAGES if p != package and p not in ALLOWED[package]}
    blocked = sorted(others | FORBIDDEN_THIRD_PARTY.get(package, set()))
    code = BLOCKER.format(blocked=blocked, package=package)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
