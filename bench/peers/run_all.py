"""One command for the peer benchmark: set up the venvs, make the activations, train with each
library in its own venv (one after another, never concurrently), measure the GEMM floor and
profile a saeops step, then print the table and write it into bench/RESULTS.md under "## Peers".

    .venv/bin/python bench/peers/run_all.py [--relu] [--only saeops,sae-lens] [--no-results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common  # constants only (this runs under the main venv, which has torch)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENVS = HERE / ".venvs"
RESULTS_DIR = HERE / "results"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
MAIN_PY = REPO / ".venv" / "bin" / "python"

# name -> (venv python, runner, supports ReLU+L1)
LIBRARIES: dict[str, tuple[Path, str, bool]] = {
    "saeops": (MAIN_PY, "run_saeops.py", True),
    "sae-lens": (VENVS / "sae-lens" / "bin" / "python", "run_saelens.py", True),
    "eai-sparsify": (VENVS / "eai-sparsify" / "bin" / "python", "run_sparsify.py", False),
    "llamascopium": (VENVS / "llamascopium" / "bin" / "python", "run_llamascopium.py", True),
}
NOTES_HEADING = "### Reading (hand-written"
VERSION_PINS = ("torch", "sae-lens", "transformer-lens", "eai-sparsify", "llamascopium", "transformers")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")),
        "0",
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "mem_gib": f"{int(mem) / 2**20:.0f}",
        "kernel": platform.release(),
    }


def status_of(name: str) -> str:
    if name == "saeops":
        return "ok" if MAIN_PY.exists() else "skipped: no /work/main/.venv"
    f = VENVS / f"{name}.status"
    return f.read_text().strip() if f.exists() else "skipped: not set up"


def versions(name: str) -> str:
    if name == "saeops":
        out = subprocess.run([str(MAIN_PY), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    else:
        f = VENVS / f"{name}.freeze"
        out = f.read_text() if f.exists() else ""
    keep = [ln for ln in out.splitlines() if ln.split("==")[0].lower() in VERSION_PINS or ln.startswith("-e")]
    return ", ".join(
        ln.split(" @ ")[0].replace("-e ", "") for ln in keep if "saeops" not in ln or name == "saeops"
    )


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, str]:
    """Run one step, output to `log`; returns (exit code, last JSON line or '')."""
    with log.open("w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
    return rc, lines[-1] if lines else ""


def fmt_ratio(value: float, ref: float | None) -> str:
    if ref is None or ref == 0:
        return ""
    return f" ({value / ref:.2f}x)"


def table(rows: list[dict[str, Any]], floor: dict[str, Any] | None) -> str:
    ref = next((r for r in rows if r["library"] == "saeops" and "ev" in r), None)
    head = (
        "| library | variant | tokens/s | train s | wall s | peak RSS MiB | EV | L0 | dead % |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    out = [head]
    for r in rows:
        if "ev" not in r:
            out.append(f"| {r['library']} | {r.get('variant', '')} | {r['note']} | | | | | | |")
            continue
        same = ref if ref is not None and ref.get("variant") == r.get("variant") else None

        def cell(key: str, spec: str, scale: float = 1.0, row: dict[str, Any] = r, base: Any = same) -> str:
            return f"{row[key] * scale:{spec}}" + (fmt_ratio(row[key], base[key]) if base else "")

        out.append(
            f"| {r['library']} {r['version']} | {r['variant']} | {cell('tokens_per_s', ',.0f')} | "
            f"{cell('train_s', '.1f')} | {cell('wall_s', '.1f')} | {cell('peak_rss_mib', ',.0f')} | "
            f"{cell('ev', '.4f')} | {r['l0']:.1f} | {cell('dead_fraction', '.2f', 100)} |"
        )
    if floor is not None:
        out.append(
            f"| dense encoder GEMM alone (floor) | 4096x384 @ 384x6144 | {floor['tokens_per_s']:,.0f}"
            f"{fmt_ratio(floor['tokens_per_s'], ref['tokens_per_s']) if ref else ''} | "
            f"{floor['gemm_ms_median']:.0f} ms | | | | | |"
        )
    return "\n".join(out)


def goals(rows: list[dict[str, Any]], floor: dict[str, Any] | None) -> list[str]:
    topk = [r for r in rows if r.get("variant") == "topk" and "ev" in r]
    me = next((r for r in topk if r["library"] == "saeops"), None)
    peers = [r for r in topk if r["library"] != "saeops"]
    if me is None or not peers:
        return ["(goals not checked: saeops or every peer missing)"]
    out = []
    sp = next((r for r in peers if r["library"] == "eai-sparsify"), None)
    if sp is not None:
        ratio = me["tokens_per_s"] / sp["tokens_per_s"]
        out.append(
            f"- tokens/s vs sparsify: {ratio:.2f}x (goal >= 1.5x): {'met' if ratio >= 1.5 else 'NOT met'}"
        )
    gemm_ms = me.get("gemm_ms") or (floor or {}).get("gemm_ms_median")
    if gemm_ms:
        step_ms = common.BATCH / me["tokens_per_s"] * 1e3
        r = step_ms / gemm_ms
        out.append(
            f"- saeops mean step {step_ms:.0f} ms / encoder GEMM {gemm_ms:.0f} ms (measured in the same process"
            f" right after training) = {r:.2f} (goal <= 1.7): {'met' if r <= 1.7 else 'NOT met'}"
        )
    best_ev = max(peers, key=lambda r: r["ev"])
    out.append(
        f"- EV {me['ev']:.4f} vs best peer {best_ev['ev']:.4f} ({best_ev['library']}): "
        f"{'met' if me['ev'] >= best_ev['ev'] else 'NOT met'}"
    )
    best_dead = min(peers, key=lambda r: r["dead_fraction"])
    out.append(
        f"- dead {me['dead_fraction'] * 100:.2f}% vs best peer {best_dead['dead_fraction'] * 100:.2f}% "
        f"({best_dead['library']}): {'met' if me['dead_fraction'] <= best_dead['dead_fraction'] else 'NOT met'}"
    )
    return out


def write_results(section: str) -> None:
    """Replace (or add) the '## Peers' section of bench/RESULTS.md, leaving other sections alone."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Peers\n.*?(?=^## |\Z)", re.S | re.M)
    old = pattern.search(text)
    notes = re.search(rf"^{re.escape(NOTES_HEADING)}.*", old.group(0), re.S | re.M) if old else None
    if notes:  # the hand-written reading of the figures survives a re-run (re-check it)
        section = section.rstrip() + "\n\n" + notes.group(0).rstrip() + "\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    RESULTS_MD.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(LIBRARIES))
    ap.add_argument("--relu", action="store_true", help="also train ReLU+L1 SAEs where a library has them")
    ap.add_argument("--skip-setup", action="store_true")
    ap.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--max-steps", type=int, default=0, help="smoke test: batches per run (0 = all)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per library run")
    args = ap.parse_args()
    t0 = time.perf_counter()
    names = [n for n in LIBRARIES if not args.only or n in args.only.split(",")]
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")

    if not args.skip_setup:
        subprocess.run(
            ["bash", str(HERE / "setup_envs.sh"), *[n for n in names if n != "saeops"]], check=True
        )
    acts = HERE / "data" / "acts.safetensors"
    subprocess.run([str(MAIN_PY), str(HERE / "make_activations.py"), "--out", str(acts)], check=True)
    meta = json.loads(acts.with_suffix(".json").read_text())

    load_before = loadavg()
    rows: list[dict[str, Any]] = []
    variants = ["topk", "relu"] if args.relu else ["topk"]
    for variant in variants:
        for name in names:
            py, runner, has_relu = LIBRARIES[name]
            if variant == "relu" and not has_relu:
                continue
            st = status_of(name)
            if st != "ok":
                rows.append({"library": name, "variant": variant, "note": st})
                continue
            cmd = [str(py), runner, "--acts", str(acts), "--variant", variant]
            if args.max_steps:
                cmd += ["--max-steps", str(args.max_steps)]
            load = loadavg()
            print(f"[{time.perf_counter() - t0:6.0f}s] {name} ({variant}), load {load} ...", flush=True)
            rc, line = run(cmd, RESULTS_DIR / f"{name}-{variant}.log", args.timeout)
            if rc != 0 or not line:
                rows.append(
                    {
                        "library": name,
                        "variant": variant,
                        "note": f"failed (exit {rc}); see bench/peers/results/{name}-{variant}.log",
                    }
                )
                continue
            row = json.loads(line) | {"load_at_start": load}
            rows.append(row)
            print(
                f"         {row['tokens_per_s']:,.0f} tok/s, EV {row['ev']:.4f}, dead {row['dead_fraction']:.2%}"
            )

    print("encoder GEMM floor and saeops profile ...", flush=True)
    rc, line = run([str(MAIN_PY), "floor.py"], RESULTS_DIR / "floor.log", 300)
    floor = json.loads(line) if rc == 0 and line else None
    profile_txt = RESULTS_DIR / "profile_saeops.txt"
    rc, _ = run(
        [str(MAIN_PY), "profile_saeops.py", "--acts", str(acts), "--out", str(profile_txt)],
        RESULTS_DIR / "profile.log",
        600,
    )
    profile = (
        profile_txt.read_text()
        if rc == 0 and profile_txt.exists()
        else "(profile failed; see results/profile.log)"
    )
    load_after = loadavg()
    total = time.perf_counter() - t0

    with (RESULTS_DIR / "results.jsonl").open("w") as f:
        for r in rows + ([floor] if floor else []):
            f.write(json.dumps(r) + "\n")

    tbl = table(rows, floor)
    goal_lines = goals(rows, floor)
    print("\n" + tbl + "\n\n" + "\n".join(goal_lines))

    m = machine()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "runtime", "kernels"], capture_output=True, text=True, cwd=REPO
    ).stdout
    saeops_rev = f"{head}{' + uncommitted changes in runtime/ or kernels/' if dirty.strip() else ''}"
    cmd = ".venv/bin/python bench/peers/run_all.py" + (" --relu" if args.relu else "")
    vers = "\n".join(f"- {n}: {versions(n)}" for n in names if status_of(n) == "ok")
    skipped = "\n".join(f"- {n}: {status_of(n)}" for n in names if status_of(n) != "ok") or "- none"
    loads = ", ".join(
        f"{r['library']} ({r['variant']}) {r['load_at_start']}" for r in rows if "load_at_start" in r
    )
    section = f"""## Peers

Same activations, same budget, each library's own public trainer (see `bench/peers/README.md`
for what was held equal and what could not be). Produced by `{cmd}` on {stamp} in {total / 60:.1f} min,
saeops at {saeops_rev}.

Machine: {m["nproc"]} cores ({m["cpu"]}), {m["mem_gib"]} GiB, Linux {m["kernel"]}, Python {platform.python_version()}.
The machine was shared with other work: load average (1/5/15 min) {load_before} before,
{load_after} after; at each run's start: {loads}. Absolute tokens/s are therefore low and noisy;
runs were sequential, so ratios are the comparable figures.

Data: {meta["train_tokens"]:,} training tokens ({meta["train_tokens"] // common.BATCH} batches of {common.BATCH}) + {meta["eval_tokens"]:,} held-out tokens,
all-MiniLM-L6-v2 `blocks.3.hook_resid_post`, context {meta["context"]}, [CLS]/[SEP] dropped,
{meta["documents"]:,} CPython docstrings/help topics ({meta["text_source"]}), sha256 {meta["sha256"][:16]}.
TopK k={common.K}, d_sae {common.D_SAE} ({common.EXPANSION}x), batch {common.BATCH}, Adam lr {common.LR:g}, fp32,\n{common.THREADS} threads.
tokens/s = training tokens / seconds inside the library's fit call (init and eval excluded; see README);
EV, L0, dead % on the held-out tokens by one harness function (dead = never fires on them).
Ratios in parentheses are to saeops.

{tbl}

Goals (issue 9):
{chr(10).join(goal_lines)}

Versions:
{vers}

Not run:
{skipped}

Profile of a saeops training step (`bench/peers/profile_saeops.py`):

```
{profile.strip()}
```
"""
    (RESULTS_DIR / "peers_section.md").write_text(section)
    if not args.no_results:
        write_results(section)
        print(f"\nwrote {RESULTS_MD.relative_to(REPO)} (## Peers)")
    print(f"total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
