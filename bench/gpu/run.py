"""One prepared GPU run for saeops (issue 18), in at most ~8 minutes, results in one directory:

1. env: the GPU, torch, Triton, which peers import;
2. the kernel tests on CUDA (`SAEOPS_TEST_DEVICE=cuda pytest tests/kernels`);
3. the step benchmark (`bench/kernels/bench_gpu.py`) at four shapes: d768 16x k32 fp32 and
   bf16, d4096 32x k64 bf16, d2304 (Gemma-2-2B) 64x k64 bf16;
4. peers: saeops, sparsify and SAELens each train the same TopK SAE on the same synthetic
   activations for a fixed number of steps at the same four shapes (one process per library:
   `peer_<library>.py`); tokens/s, step / encoder GEMM, peak GPU memory, EV.

Each part fails soft: a failing or timed-out part is reported and the others still run; a
missing peer is "not installed". Writes into --out (default $OUT): env.log, tests.log,
step.log, peers.log, run.log, results.jsonl, results.md (printed at the end too). Exit status
1 when a part failed or was skipped, else 0.

    bash bench/gpu/run.sh                          # on the GPU machine (installs carried wheels)
    .venv/bin/python bench/gpu/run.py --tiny       # the same on the CPU at tiny shapes (~1-2 min)

Peers' interpreters: this one when it imports the library, else SAEOPS_SPARSIFY_PYTHON /
SAEOPS_SAELENS_PYTHON, else .venv-saelens or bench/peers/.venvs/<name>.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shapes as shapes_mod
from report import Part, markdown, parse_step_table, pytest_summary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NOT_INSTALLED = 3  # harness.NOT_INSTALLED (not imported here: the harness needs torch)

# library -> (runner, module, interpreter variable, fallback interpreters)
PEERS: dict[str, tuple[str, str, str | None, tuple[str, ...]]] = {
    "saeops": ("peer_saeops.py", "saeops.runtime", None, ()),
    "sparsify": ("peer_sparsify.py", "sparsify", "SAEOPS_SPARSIFY_PYTHON", ("bench/peers/.venvs/eai-sparsify/bin/python",)),
    "sae-lens": ("peer_saelens.py", "sae_lens", "SAEOPS_SAELENS_PYTHON",
                 (".venv-saelens/bin/python", "bench/peers/.venvs/sae-lens/bin/python")),
}  # fmt: skip

ENV_SNIPPET = """
import importlib.util, json, platform, torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "not installed"
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "triton": tv,
    "gpu": torch.cuda.get_device_name(0) if cuda else "none",
    "importable": ", ".join(m for m in ("sparsify", "sae_lens", "pydantic") if importlib.util.find_spec(m))}))
"""


class Runner:
    """Runs the parts in order under one deadline; each subprocess gets what is left of it
    minus the minimum the later parts are promised."""

    def __init__(self, out: Path, budget: float, tiny: bool) -> None:
        self.out, self.tiny = out, tiny
        self.start = time.monotonic()
        self.deadline = self.start + budget
        self.parts: list[Part] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The checkout's sources (the GPU machine has them on no path); each script's own
        # folder comes first on its sys.path by itself, the runners add bench/peers.
        paths = [REPO / "runtime", REPO / "kernels", REPO]
        self.env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])])
        if tiny:  # the C++ CPU kernels' first build (~40 s) is beside the point of a tiny run,
            self.env.setdefault("SAEOPS_CPU_EXT", "0")
            # and so is interpreted Triton (seconds per step; the kernel tests set it themselves,
            # and a pytest session that imported them leaves it in the environment).
            self.env.pop("TRITON_INTERPRET", None)

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f}s] {msg}"
        print(line, flush=True)
        with (self.out / "run.log").open("a") as f:
            f.write(line + "\n")

    def call(self, cmd: list[str], log: str, cap: float, reserve: float, cwd: Path = REPO,
             env: dict[str, str] | None = None) -> tuple[int | None, str, float]:  # fmt: skip
        """(exit status or None when it ran out of time, its output, seconds); output is
        appended to `log` under a header. A timed-out command's whole process group is killed."""
        limit = min(cap, self.deadline - time.monotonic() - reserve)
        if limit < 5:
            return None, f"skipped: {limit:.0f} s left of the budget", 0.0
        self.log(f"$ {' '.join(cmd)}  (limit {limit:.0f} s)")
        t0 = time.monotonic()
        with tempfile.TemporaryFile("w+") as buf:
            rc: int | None
            try:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env or self.env, stdout=buf, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)  # fmt: skip
            except OSError as e:  # not there, not executable: a failed part, not a failed run
                buf.write(f"could not start: {e}\n")
                rc = 127
            else:
                try:
                    rc = proc.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):  # it may end on its own meanwhile
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    rc = None
            buf.seek(0)
            text = buf.read()
        secs = time.monotonic() - t0
        with (self.out / log).open("a") as f:
            f.write(f"==== $ {' '.join(cmd)}\n{text}\n==== exit {rc if rc is not None else 'TIMEOUT'} after {secs:.1f} s\n\n")
        self.log(f"  exit {rc if rc is not None else f'TIMEOUT ({limit:.0f} s)'} after {secs:.1f} s")
        return rc, text, secs

    def part(self, name: str, rc: int | None, secs: float, note: str = "", text: str = "") -> Part:
        if rc is None:
            status = text if text.startswith("skipped") else f"failed (timed out after {secs:.0f} s)"
        else:
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        p = Part(name, status, secs, note)
        self.parts.append(p)
        return p


def peer_python(module: str, var: str | None, fallbacks: tuple[str, ...]) -> tuple[str | None, str]:
    """(interpreter, why) for a peer; None when no interpreter has it."""
    if var is None:  # saeops: this checkout, through the children's PYTHONPATH
        return sys.executable, "this interpreter"
    if os.environ.get(var):
        py = os.environ[var]
        return (py, var) if Path(py).exists() else (None, f"{var}={py} does not exist")
    if importlib.util.find_spec(module.split(".")[0]) is not None:
        return sys.executable, "this interpreter"
    for rel in fallbacks:
        if (REPO / rel).exists():
            return str(REPO / rel), rel
    return None, f"no interpreter with {module} here; set {var}"


def run_env(r: Runner) -> dict[str, str]:
    meta: dict[str, str] = {}
    if not r.tiny:
        r.call(["nvidia-smi"], "env.log", 20, 0)
    rc, text, secs = r.call([sys.executable, "-c", ENV_SNIPPET], "env.log", 60, 0)
    with contextlib.suppress(ValueError, IndexError):  # no JSON line: the note stays empty
        meta = json.loads(text.strip().splitlines()[-1])
    r.part("env", rc, secs, ", ".join(f"{k} {v}" for k, v in meta.items()), text)
    return meta


def run_tests(r: Runner, reserve: float) -> None:
    target = ["tests/kernels/test_api.py"] if r.tiny else ["tests/kernels"]
    env = dict(r.env) if r.tiny else dict(r.env, SAEOPS_TEST_DEVICE="cuda")
    rc, text, secs = r.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *target],
                            "tests.log", 150, reserve, env=env)  # fmt: skip
    r.part(f"kernel tests ({' '.join(target)}{'' if r.tiny else ', CUDA'})", rc, secs, pytest_summary(text), text)


def run_step(r: Runner, shape: shapes_mod.Shape, reserve: float) -> dict[str, Any]:
    cmd = [sys.executable, "bench_gpu.py", *shape.step_bench_args()]
    if r.tiny:
        cmd += ["--device", "cpu", "--warmup", "1"]
    rc, text, secs = r.call(cmd, "step.log", 120, reserve, cwd=REPO / "bench" / "kernels")
    rows = parse_step_table(text) if rc == 0 else {}
    p = r.part(f"step bench {shape.key} ({shape.describe()})", rc, secs, f"{len(rows)} rows", text)
    if rc == 0 and not rows:
        p.status = "failed (no table in its output; see step.log)"
    return rows


def run_peer(r: Runner, lib: str, selected: list[shapes_mod.Shape], reserve: float) -> list[dict[str, Any]]:
    script, module, var, fallbacks = PEERS[lib]
    py, why = peer_python(module, var, fallbacks)
    keys = ",".join(s.key for s in selected)
    if py is None:
        r.parts.append(Part(f"peer {lib}", f"not installed ({why})"))
        return [{"library": lib, "shape": s.key, "status": "not installed"} for s in selected]
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        cmd = [py, str(HERE / script), "--shapes", keys, "--out", str(rows_file)]
        cmd += ["--tiny", "--device", "cpu"] if r.tiny else ["--device", "cuda"]
        rc, text, secs = r.call(cmd, "peers.log", 200, reserve)
        rows = [json.loads(ln) for ln in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {row["shape"] for row in rows}
    lost = "timed out" if rc is None else f"runner exited {rc}"
    rows += [{"library": lib, "shape": s.key, "status": f"failed ({lost})"} for s in selected if s.key not in done]
    ok = sum(row.get("status") == "ok" for row in rows)
    if rc == NOT_INSTALLED:
        r.parts.append(Part(f"peer {lib}", f"not installed ({why} lacks it)", secs, rows[0]["status"] if rows else ""))
    else:
        r.part(f"peer {lib}", rc, secs, f"{ok}/{len(selected)} shapes ok, python: {why}", text)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny shapes (what the CI test runs)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/saeops-gpu-run"))
    ap.add_argument("--budget", type=float, default=0, help="seconds for the whole run (default 420; tiny 400)")
    ap.add_argument("--parts", default="env,tests,step,peers", help="comma-separated subset of env,tests,step,peers")
    ap.add_argument("--shapes", default="", help="comma-separated shape keys (default: all four)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    try:
        selected = shapes_mod.select(args.tiny, args.shapes)
        bad = sorted((parts - {"env", "tests", "step", "peers"}) | (set(peers) - set(PEERS)))
        if bad:
            raise ValueError(f"--parts/--peers: unknown {', '.join(bad)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    r = Runner(args.out, args.budget or (400 if args.tiny else 420), args.tiny)
    r.log(f"out {args.out}; parts {sorted(parts)}; shapes {[s.key for s in selected]}; peers {peers}")

    # Minimum seconds promised to what comes later, so a hanging early part cannot eat them.
    share = {"tests": 40.0, "step": 25.0, "peer": 70.0}
    todo: list[tuple[str, float, Callable[[float], Any]]] = []
    if "tests" in parts:
        todo.append(("tests", share["tests"], lambda res: run_tests(r, res)))
    step: dict[str, Any] = {}
    for s in selected if "step" in parts else []:
        todo.append(("step", share["step"], lambda res, s=s: step.__setitem__(s.key, run_step(r, s, res))))
    peer_rows: list[dict[str, Any]] = []
    for lib in peers if "peers" in parts else []:
        todo.append(("peer", share["peer"], lambda res, lib=lib: peer_rows.extend(run_peer(r, lib, selected, res))))

    meta: dict[str, str] = {"mode": "tiny, CPU" if args.tiny else "GPU"}
    meta["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if "env" in parts:
        meta.update(run_env(r))
    for i, (_, _, fn) in enumerate(todo):
        fn(sum(t[1] for t in todo[i + 1 :]))

    meta["wall"] = f"{time.monotonic() - r.start:.0f} s"
    (args.out / "results.md").write_text(markdown(meta, selected, r.parts, step, peer_rows))
    with (args.out / "results.jsonl").open("w") as f:
        f.write(json.dumps({"meta": meta, "parts": [vars(p) for p in r.parts]}) + "\n")
        for key, rows in step.items():
            f.write(json.dumps({"part": "step", "shape": key, "rows": rows}) + "\n")
        for row in peer_rows:
            f.write(json.dumps({"part": "peer", **row}) + "\n")
    print((args.out / "results.md").read_text(), flush=True)
    return 1 if any(p.failed for p in r.parts) else 0


if __name__ == "__main__":
    sys.exit(main())
