"""The three images the pod scenarios need, built here with no registry:

- the base: Debian bookworm with Python 3.11 from `debootstrap` (root), then `docker import`;
- uv: the `uv` binary from its wheel on PyPI, imported as a one-file image;
- saeops (CPU variant): the repository's Dockerfile built with those two as its bases (build
  arguments, as an air-gapped user would pass their mirror's images), the host's CA bundle
  (TLS interception on the way to the package index) and a wheelhouse holding the CPU torch
  wheel this machine already has (the public index serves the CUDA build).

Each image is built once: the base and uv are keyed by their inputs, the saeops image by a hash
of every file the image copies (the staged build context: Dockerfile, pyproject.toml,
README.md, runtime/, operator/, kernels/, the wheelhouse and the CA bundle) and the build args.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.engine import Docker

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_DIRS = ("runtime", "operator", "kernels")
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".so")
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_TAG = "saeops-test/debian-python:3.11-bookworm"
IMAGE_REPO = "saeops-test/saeops"
BUILD_TIMEOUT_S = 3600


@dataclass
class BuildLog:
    """What was built or reused, and how long it took (reported at the end of the session)."""

    entries: list[tuple[str, str, float]] = field(default_factory=list)

    def add(self, what: str, how: str, seconds: float) -> None:
        self.entries.append((what, how, seconds))

    def summary(self) -> str:
        return "; ".join(f"{w} {h} in {s:.0f} s" for w, h, s in self.entries)


def dockerfile_default(arg: str) -> str:
    """A global ARG's default in the Dockerfile (one source of truth for versions)."""
    m = re.search(rf"^ARG {arg}=\"?([^\"\n]*)\"?$", DOCKERFILE.read_text(), re.M)
    assert m, f"Dockerfile has no default for ARG {arg}"
    return m.group(1)


def uv_version() -> str:
    return dockerfile_default("UV_IMAGE").rsplit(":", 1)[1]


def _run(cmd: list[str], log: Path, timeout: float = BUILD_TIMEOUT_S, env: dict[str, str] | None = None) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{cmd[0]} failed with exit {proc.returncode} (log {log}):\n{tail}")


def build_base(docker: Docker, work: Path, log: BuildLog) -> str:
    """Debian + Python 3.11 from the Debian archive, imported as an image (root only)."""
    if docker.image_exists(BASE_TAG):
        log.add("base", "reused", 0)
        return BASE_TAG
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise RuntimeError(f"building {BASE_TAG} needs root and debootstrap (apt-get install debootstrap)")
    t0 = time.monotonic()
    rootfs = work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    mirror = os.environ.get("SAEOPS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    _run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", DEBIAN_SUITE, str(rootfs), mirror],
         work / "debootstrap.log")
    try:
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([docker.binary, "import", "-", BASE_TAG], stdin=tar.stdout, capture_output=True,
                                  timeout=600, check=False)
        tar.wait()
        if tar.returncode or imported.returncode:
            raise RuntimeError(f"docker import of {rootfs} failed: {imported.stderr.decode(errors='replace')[-500:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    log.add("base", "built", time.monotonic() - t0)
    return BASE_TAG


def build_uv(docker: Docker, work: Path, log: BuildLog) -> str:
    """An image holding only /uv, from the uv wheel (what the official uv image holds)."""
    version = uv_version()
    tag = f"saeops-test/uv:{version}"
    if docker.image_exists(tag):
        log.add("uv", "reused", 0)
        return tag
    t0 = time.monotonic()
    wheels = work / "uv-wheel"
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"uv=={version}",
          "-d", str(wheels)], work / "uv.log", timeout=600)
    (wheel,) = wheels.glob(f"uv-{version}-*.whl")
    tar_path = work / "uv.tar"
    with zipfile.ZipFile(wheel) as z, tarfile.open(tar_path, "w") as tar:
        data = z.read(f"uv-{version}.data/scripts/uv")
        info = tarfile.TarInfo("uv")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    docker("import", "-", tag, input=tar_path.read_bytes(), timeout=600)
    tar_path.unlink()
    log.add("uv", "built", time.monotonic() - t0)
    return tag


def torch_wheel(work: Path) -> Path | None:
    """This venv's torch wheel (the CPU build), as pip finds it locally; None when pip cannot
    (the image then takes torch from the CPU index)."""
    import torch

    wheelhouse = work / "wheelhouse"
    wheelhouse.mkdir(exist_ok=True)
    version = torch.__version__
    found = sorted(wheelhouse.glob(f"torch-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"torch=={version}", "-d", str(wheelhouse)],
                       capture_output=True, timeout=1800, check=False)
        found = sorted(wheelhouse.glob(f"torch-{version}-*.whl"))
    return found[0] if found else None


def ca_bundle() -> Path | None:
    for candidate in (os.environ.get("SSL_CERT_FILE"), os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def context_sources() -> list[Path]:
    """Every file of the repository the image copies, relative to the root."""
    files = [Path(f) for f in CONTEXT_FILES]
    for top in CONTEXT_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and not SKIP_PARTS & set(rel.parts) and not path.name.endswith(SKIP_SUFFIXES) \
                    and not any(p.endswith(".egg-info") for p in rel.parts):
                files.append(rel)
    return files


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_inputs(work: Path, base: str, uv: str) -> tuple[dict[str, str], dict[str, Path]]:
    """Build args, and the extra files of the context (wheelhouse, CA bundle) by their path in it."""
    extras: dict[str, Path] = {}
    wheel = torch_wheel(work)
    if wheel is not None:
        extras[f"wheelhouse/{wheel.name}"] = wheel
    ca = ca_bundle()
    if ca is not None:
        extras["ca-bundle.crt"] = ca
    args = {"VARIANT": "cpu", "CPU_IMAGE": base, "CUDA_IMAGE": base, "UV_IMAGE": uv,
            "CA_BUNDLE": "ca-bundle.crt" if ca else "", "WHEELHOUSE": "wheelhouse"}
    if os.environ.get("PIP_INDEX_URL"):
        args["INDEX_URL"] = os.environ["PIP_INDEX_URL"]
    return args, extras


def stage_context(dest: Path, extras: dict[str, Path]) -> Path:
    """A build context holding exactly the files the image copies, plus `extras`."""
    shutil.rmtree(dest, ignore_errors=True)
    for rel in context_sources():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    for rel, src in extras.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest / rel)
        except OSError:
            shutil.copy2(src, dest / rel)
    return dest


def image_tag(args: dict[str, str], extras: dict[str, Path]) -> str:
    """The tag of this tree's image: a hash of the build args and every file the image copies."""
    h = hashlib.sha256(json.dumps(args, sort_keys=True).encode())
    for rel in context_sources():
        h.update(f"{rel}\0{_digest(ROOT / rel)}\0".encode())
    for rel, src in sorted(extras.items()):
        h.update(f"{rel}\0{_digest(src)}\0".encode())
    return f"{IMAGE_REPO}:cpu-{h.hexdigest()[:16]}"


def build_saeops(docker: Docker, work: Path, base: str, uv: str, log: BuildLog) -> str:
    """The CPU variant of the Dockerfile, built with the legacy builder (which needs every stage's
    base: CUDA_IMAGE is the local base too); returns its tag. Older tags of the repository are
    removed afterwards, in the background."""
    args, extras = build_inputs(work, base, uv)
    tag = image_tag(args, extras)
    if docker.image_exists(tag):
        log.add("saeops", f"reused ({tag})", 0)
        return tag
    t0 = time.monotonic()
    context = stage_context(work / "context", extras)
    cmd = [docker.binary, "build", "--network=host", "-t", tag]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    _run([*cmd, str(context)], work / "build.log", env={**os.environ, "DOCKER_BUILDKIT": "0"})
    shutil.rmtree(context, ignore_errors=True)
    log.add("saeops", f"built ({tag})", time.monotonic() - t0)
    stale = [ref for ref in docker("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPO).stdout.split()
             if ref != tag and ref.startswith(f"{IMAGE_REPO}:cpu-")]
    if stale:  # in the background: removing GBs of layers can take minutes on a busy disk
        subprocess.Popen([docker.binary, "rmi", *stale], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    return tag


def main() -> int:
    """Build (or reuse) the three images and print what it took: `python -m tests.cluster.images`."""
    from tests.cluster.engine import EngineUnavailable, cache_dir, ensure_engine

    try:
        docker, _started = ensure_engine(cache_dir() / "dockerd.log")
    except EngineUnavailable as e:
        print(f"no container engine: {e}", file=sys.stderr)
        return 1
    log = BuildLog()
    work = cache_dir()
    tag = build_saeops(docker, work, build_base(docker, work, log), build_uv(docker, work, log), log)
    print(f"container images: {log.summary()}")
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
