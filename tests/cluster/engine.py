"""A container engine for the pod scenarios: Docker, started here when it is not running.

The daemon runs without any bridge network (`--bridge=none --iptables=false --ip-masq=false`),
so no private-range address or network is ever created: containers share the host's network
(`--network=host`) and bind only on loopback addresses. Every container this session starts
carries the label `io.saeops.test.session=<id>`; `cleanup` removes those and nothing else.

`python -m tests.cluster.engine check` (used by `.ci/run`) exits 0 when an engine answers or
could be started here (it is then left running for the tests), 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SESSION_LABEL = "io.saeops.test.session"
DOCKERD_ARGS = ["--bridge=none", "--iptables=false", "--ip-masq=false"]
ALLOWED_NETWORKS = {"host", "none"}
START_DEADLINE_S = 60.0


class EngineUnavailable(Exception):
    """No container engine answers here and none can be started (the reason, in one line)."""


@dataclass
class Docker:
    """The docker CLI, and the containers this session started."""

    binary: str
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=input is None, timeout=timeout,
                              check=False, input=input, env=env)
        if check and proc.returncode != 0:
            err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
            raise RuntimeError(f"docker {' '.join(args[:3])} ...: exit {proc.returncode}: {err.strip()[-2000:]}")
        return proc

    def answers(self) -> bool:
        try:
            return self("info", "--format", "{{.ID}}", check=False, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def image_exists(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False).returncode == 0

    def networks(self) -> set[str]:
        return set(self("network", "ls", "--format", "{{.Name}}").stdout.split())

    def run_detached(self, args: list[str]) -> str:
        """`docker run -d` with this session's label; returns the container id."""
        cid = self("run", "-d", "--label", f"{SESSION_LABEL}={self.session}", *args, timeout=300).stdout.strip()
        with self._lock:
            self.started.add(cid)
        return cid

    def run_to_end(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """`docker run --rm` in the foreground (the container is removed when it ends)."""
        name = f"saeops-oneshot-{uuid.uuid4().hex[:10]}"
        try:
            return self("run", "--rm", "--name", name, "--label", f"{SESSION_LABEL}={self.session}", *args,
                        check=False, timeout=timeout)
        finally:
            self("rm", "-f", name, check=False)

    def states(self) -> dict[str, dict[str, Any]]:
        """State of every container this session started that still exists, by id."""
        with self._lock:
            ids = sorted(self.started)
        if not ids:
            return {}
        out = self("inspect", *ids, check=False).stdout
        found = json.loads(out) if out.strip() else []
        return {c["Id"]: c["State"] for c in found if c["Id"] in ids}

    def logs(self, cid: str) -> str:
        proc = self("logs", cid, check=False)
        return proc.stdout + proc.stderr

    def stop(self, cid: str, grace_s: int) -> None:
        self("stop", "-t", str(grace_s), cid, check=False, timeout=grace_s + 60)

    def remove(self, cid: str) -> None:
        self("rm", "-f", cid, check=False)
        with self._lock:
            self.started.discard(cid)

    def leftovers(self) -> list[str]:
        """Containers labelled with this session, running or not."""
        out = self("ps", "-aq", "--no-trunc", "--filter", f"label={SESSION_LABEL}={self.session}").stdout
        return out.split()

    def cleanup(self) -> None:
        """Remove every container this session started (and nothing else)."""
        for cid in {*self.started, *self.leftovers()}:
            self.remove(cid)


def docker_binary() -> str | None:
    return shutil.which("docker")


def start_dockerd(log_path: Path) -> subprocess.Popen[bytes]:
    """Start dockerd without a bridge network; root only. Raises EngineUnavailable with a reason."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable("no docker daemon running and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable("no docker daemon running, and starting one needs root")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([dockerd, *DOCKERD_ARGS], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def ensure_engine(log_path: Path) -> tuple[Docker, subprocess.Popen[bytes] | None]:
    """A docker client whose daemon answers; starts the daemon when none runs (returned, so the
    caller can stop what it started). Raises EngineUnavailable with a one-line reason."""
    binary = docker_binary()
    if binary is None:
        raise EngineUnavailable("the docker client is not installed (apt-get install docker.io)")
    docker = Docker(binary)
    if docker.answers():
        return docker, None
    proc = start_dockerd(log_path)
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
            raise EngineUnavailable(f"dockerd exited with {proc.returncode}: {' '.join(tail)[:300]}")
        if docker.answers():
            return docker, proc
        threading.Event().wait(0.5)
    stop_dockerd(proc)
    raise EngineUnavailable(f"dockerd did not answer within {START_DEADLINE_S:.0f} s (log: {log_path})")


def stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def cache_dir() -> Path:
    """Where built inputs persist between sessions (the base root filesystem, wheels, contexts)."""
    base = os.environ.get("SAEOPS_CLUSTER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "saeops-cluster-tests")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str]) -> int:
    if argv[1:] != ["check"]:
        print("usage: python -m tests.cluster.engine check", file=sys.stderr)
        return 2
    try:
        _docker, proc = ensure_engine(cache_dir() / "dockerd.log")
    except EngineUnavailable as e:
        print(f"container engine: unavailable: {e}")
        return 1
    print("container engine: " + ("started dockerd (left running)" if proc else "running"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
