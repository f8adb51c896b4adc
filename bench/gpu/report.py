"""Parsing of the parts' outputs and the markdown results table of a GPU run (stdlib only)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shapes import Shape

# bench/kernels/bench_gpu.py prints "name  median ms  min ms  / GEMM  [/ dense]" rows.
_ROW = re.compile(r"^\s*(?P<name>\S.*?)\s{2,}(?P<med>[\d.]+)\s+(?P<min>[\d.]+)\s+(?P<gemm>[\d.]+)(?:\s+(?P<dense>[\d.]+))?\s*$")
GEMM, TRITON, TORCH, DENSE = "GEMM x @ W_enc (floor)", "sparse step (triton)", "sparse step (torch)", "dense step (autograd)"
DASH = "—"


@dataclass
class Part:
    name: str
    status: str  # "ok", "failed (...)", "not installed (...)", "skipped (...)"
    seconds: float = 0.0
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status.startswith(("failed", "skipped"))


def parse_step_table(text: str) -> dict[str, dict[str, float | None]]:
    """Rows of bench_gpu.py's table: name -> median_ms, min_ms, over_gemm, over_dense."""
    rows: dict[str, dict[str, float | None]] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and not line.lstrip().startswith("path"):
            rows[m["name"].strip()] = {
                "median_ms": float(m["med"]), "min_ms": float(m["min"]), "over_gemm": float(m["gemm"]),
                "over_dense": float(m["dense"]) if m["dense"] else None,
            }  # fmt: skip
    return rows


def pytest_summary(text: str) -> str:
    """The last '=== N passed, M failed in 12.3s ===' line of pytest -q, without the bars."""
    lines = [ln.strip(" =") for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return lines[-1] if lines else ""


def _f(v: Any, fmt: str) -> str:
    return DASH if v is None or v != v else format(v, fmt)


def _step_rows(shapes: Sequence[Shape], step: dict[str, dict[str, dict[str, float | None]]]) -> list[str]:
    out = [
        "| shape | GEMM ms | Triton step ms | torch sparse step ms | dense step ms | Triton / GEMM | torch / GEMM | dense / GEMM | Triton / dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in shapes:
        rows = step.get(s.key)
        if not rows:
            out.append(f"| {s.key} ({s.describe()}) | {' | '.join([DASH] * 8)} |")
            continue

        def get(name: str, col: str, rows: dict[str, dict[str, float | None]] = rows) -> float | None:
            return rows.get(name, {}).get(col)

        out.append(
            f"| {s.key} ({s.describe()}) | {_f(get(GEMM, 'median_ms'), '.2f')} | {_f(get(TRITON, 'median_ms'), '.2f')} "
            f"| {_f(get(TORCH, 'median_ms'), '.2f')} | {_f(get(DENSE, 'median_ms'), '.2f')} "
            f"| {_f(get(TRITON, 'over_gemm'), '.2f')} | {_f(get(TORCH, 'over_gemm'), '.2f')} "
            f"| {_f(get(DENSE, 'over_gemm'), '.2f')} | {_f(get(TRITON, 'over_dense'), '.2f')} |"
        )
    return out


def _peer_rows(shapes: Sequence[Shape], peers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    out = [
        "| shape | library | status | tokens/s | vs saeops | step ms | step / GEMM | GEMM ms | peak MiB | EV | L0 | dead % | init s | precision |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for s in shapes:
        rows = [r for r in peers if r.get("shape") == s.key]
        base = next((r for r in rows if r.get("library") == "saeops" and r.get("status") == "ok"), None)
        for r in rows:
            lib = f"{r['library']} {r.get('version', '')}".strip()
            if r.get("status") != "ok":
                out.append(f"| {s.key} | {lib} | {r.get('status')} | {' | '.join([DASH] * 11)} |")
                continue
            vs = r["tokens_per_s"] / base["tokens_per_s"] if base else None
            out.append(
                f"| {s.key} | {lib} | ok | {r['tokens_per_s']:,.0f} | {_f(vs, '.2f')}x | {r['step_ms']:.2f} "
                f"| {r['step_over_gemm']:.2f} | {r['gemm_ms']:.3f} | {r['peak_mib']:,.0f} | {r['ev']:.4f} "
                f"| {r['l0']:.1f} | {100 * r['dead_fraction']:.2f} | {r['init_s']:.2f} | {r['precision']} |"
            )
        prints = {r["data"] for r in rows if r.get("status") == "ok"}
        if len(prints) > 1:
            notes.append(f"- {s.key}: the runners' activations DIFFER ({', '.join(sorted(prints))}): do not compare EV")
    return out, notes


def markdown(
    meta: dict[str, str],
    shapes: Sequence[Shape],
    parts: list[Part],
    step: dict[str, dict[str, dict[str, float | None]]],
    peers: list[dict[str, Any]],
) -> str:
    lines = [f"# GPU run: kernel tests, step benchmark, peers ({meta.get('mode', '')})", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "mode"]
    lines += ["", "## Parts", "", "| part | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {p.name} | {p.status} | {p.seconds:.1f} | {p.note} |" for p in parts]
    lines += ["", "## Step benchmark (`bench/kernels/bench_gpu.py`: medians, step = forward + backward + Adam)", ""]
    lines += _step_rows(shapes, step)
    peer_table, notes = _peer_rows(shapes, peers)
    steps = ", ".join(f"{s.key} {s.steps} x {s.batch}" for s in shapes)
    lines += [
        "", "## Peers: the same TopK SAE on the same activations", "",
        f"Steps x batch per shape: {steps}; synthetic activations (bench/gpu/synth.py), EV on "
        f"{shapes[0].eval_tokens if shapes else 0:,} held-out tokens; tokens/s over each library's fit call "
        "(after a warm-up run of 2 steps); step / GEMM against `x @ W_enc` at the shape's dtype timed in the "
        "same process; peak MiB: GPU memory allocated above the activations (CPU: process peak RSS).", "",
    ]  # fmt: skip
    lines += peer_table
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
