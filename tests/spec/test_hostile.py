"""Issue #17's acceptance for hostile manifests: every case of the table (tests/spec/hostile_cases.py)
and what a fuzzer makes of the YAML text, through `saeops validate`, `render` and `run`: exit 2,
exactly one `error:` line naming the field or the file, within 2 s (of CPU: the machine's cores are
shared, so wall time is checked only against a hang deadline) and 200 MB, nothing written.

Every case runs in-process through `saeops.cli.main`: time per call, the process's peak RSS, and,
for the cases that could allocate (the file and `--set` categories, large annotations; one
command each), tracemalloc's peak of Python allocations (tracing only those keeps the test quick:
it slows Python several times). A sample runs as real subprocesses under RLIMIT_AS = 200 MiB (an
allocation past it would be a MemoryError traceback), with their CPU time and peak RSS from
wait4. The test prints the counts.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saeops.operator.render  # noqa: F401 - imported up front: timings measure the input, not imports
from saeops.cli import main
from tests.spec.hostile_cases import TEXT, Case, cases

LIMIT_S = 2.0
"""CPU seconds per call (this machine's CPUs are shared, so wall time measures the neighbours)."""
HANG_S = 30.0
"""Wall-clock seconds after which a call counts as hung, whatever the load."""
LIMIT_BYTES = 200 * 2**20
CASES = cases()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() or p.is_dir()}


def materialise(case: Case, tmp: Path) -> tuple[Path, list[str]]:
    path = tmp / case.name
    path.write_bytes(case.data.replace(b"@TMP@", str(tmp).encode()))
    args = [a.replace("@TMP@", str(tmp)) for a in case.args]
    return path, args


def check_result(rc: int, out: str, err: str, needle: str, what: str) -> None:
    lines = err.splitlines()
    assert rc == 2, f"{what}: exit {rc}; stderr: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: not one error line: {err[-2000:]}"
    assert needle in lines[0], f"{what}: {needle!r} not in {lines[0]!r}"
    assert out == "", f"{what}: printed to stdout: {out[:200]!r}"


def test_the_table_is_large_and_varied() -> None:
    assert len(CASES) >= 120
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.category for c in CASES}) >= 8


def test_hostile_manifests_exit_2_in_one_line_fast_small_and_writing_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths would land here, and be seen
    per_category: Counter[str] = Counter()
    calls = 0
    slowest = (0.0, "")
    biggest = (0, "")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    traced = 0
    try:
        for case in CASES:
            heavy = case.category in ("file", "--set") or case.id.startswith("annotations")
            work = tmp_path / case.id.replace("/", "_")
            work.mkdir()
            manifest, args = materialise(case, work)
            before = snapshot(tmp_path)
            for command in case.commands:
                what = f"{case.id} ({command})"
                # All three commands load the same way; tracing one of them per case is enough.
                trace = heavy and command == case.commands[0]
                if trace:
                    tracemalloc.start()
                t0, w0 = time.thread_time(), time.perf_counter()
                rc = main([command, str(manifest), *args])
                elapsed, wall = time.thread_time() - t0, time.perf_counter() - w0
                peak = tracemalloc.get_traced_memory()[1] if trace else 0
                if trace:
                    tracemalloc.stop()
                traced += trace
                out, err = capsys.readouterr()
                check_result(rc, out, err, case.needle, what)
                assert elapsed <= LIMIT_S, f"{what}: {elapsed:.2f} s of CPU"
                assert wall <= HANG_S, f"{what}: {wall:.1f} s"
                assert peak <= LIMIT_BYTES, f"{what}: {peak / 2**20:.0f} MB"
                slowest = max(slowest, (elapsed, what))
                biggest = max(biggest, (peak, what))
                calls += 1
            assert snapshot(tmp_path) == before, f"{case.id}: something was written"
            per_category[case.category] += 1
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert rss_growth <= LIMIT_BYTES, f"peak RSS grew by {rss_growth / 2**20:.0f} MB"
    with capsys.disabled():
        print(f"\nhostile manifests: {len(CASES)} cases, {calls} calls (validate/render/run), all exit 2 "
              f"with one error line; by category: {dict(sorted(per_category.items()))}; slowest "
              f"{slowest[0] * 1000:.0f} ms of CPU ({slowest[1]}); largest Python peak {biggest[0] / 2**20:.1f} MB "
              f"({biggest[1]}, {traced} calls traced); process peak RSS growth {max(rss_growth, 0) / 2**20:.0f} MB")


SUBPROCESS_SAMPLE = [  # (case, command): the heaviest inputs, each command three times
    ("size-yaml", "validate"), ("laughs-metadata", "render"), ("laughs-spec", "run"), ("deep-json", "validate"),
    ("deep-toml", "render"), ("many-values", "run"), ("annotations-300k", "validate"),
    ("set-value-laughs", "render"), ("weight-decay-inf", "run"),
]


# The child limits its own address space and reports its peak RSS from /proc (VmHWM, since exec):
# ru_maxrss from wait4 would carry the forking pytest process's high-water mark across exec.
BOOT = f"""\
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))
from saeops.cli import main
try:
    rc = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as f:
        f.write(hwm)
sys.exit(rc)
"""


def test_a_sample_as_real_processes_under_a_200_MiB_address_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    by_id = {c.id: c for c in CASES}
    worst_cpu, worst_rss, worst_wall = 0.0, 0, 0.0
    for cid, command in SUBPROCESS_SAMPLE:
        case = by_id[cid]
        work = tmp_path / cid
        work.mkdir()
        manifest, args = materialise(case, work)
        logs = tmp_path / f"{cid}.out", tmp_path / f"{cid}.err"
        before = snapshot(work)
        t0 = time.perf_counter()
        hwm = tmp_path / f"{cid}.hwm"
        with logs[0].open("wb") as out, logs[1].open("wb") as err:
            child = subprocess.Popen([sys.executable, "-c", BOOT, str(hwm), command, str(manifest), *args],
                                     cwd=work, stdout=out, stderr=err)
        deadline = time.monotonic() + HANG_S
        while (done := os.wait4(child.pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                child.kill()
                pytest.fail(f"{cid} ({command}) still running after {HANG_S:.0f} s")
            time.sleep(0.01)
        _, status, usage = done
        child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: tell Popen
        wall = time.perf_counter() - t0
        check_result(child.returncode, logs[0].read_text(), logs[1].read_text(), case.needle,
                     f"{cid} ({command}, subprocess)")
        cpu = usage.ru_utime + usage.ru_stime
        rss = int(hwm.read_text()) * 1024
        assert rss <= LIMIT_BYTES, f"{cid}: peak RSS {rss / 2**20:.0f} MB"
        # The interpreter's start (imports) is most of it; the case itself is timed in-process.
        assert cpu <= LIMIT_S, f"{cid}: {cpu:.2f} s of CPU"
        assert snapshot(work) == before, f"{cid}: something was written"
        worst_cpu, worst_rss, worst_wall = max(worst_cpu, cpu), max(worst_rss, rss), max(worst_wall, wall)
    with capsys.disabled():
        print(f"\n{len(SUBPROCESS_SAMPLE)} hostile manifests as processes (validate, render, run) under "
              f"RLIMIT_AS=200 MiB: all exit 2 with one error line; max CPU {worst_cpu:.2f} s, max peak RSS "
              f"{worst_rss / 2**20:.0f} MB, max wall {worst_wall:.2f} s (interpreter start included)")


# ---------------------------------------------------------------- fuzzing the YAML text

TOKENS = ["[", "]", "{", "}", ": ", "- ", "&a ", "*a", "&b ", "*b", "<<: *a", "!!", "!!python/object ",
          "!!binary ", "? ", "|", ">", "#", "'", '"', "\t", "\n", "\n  ", "---\n", "...", "%YAML 1.1\n", ".nan",
          ".inf", "-.inf", "~", "null", "true", "yes", "on", "0x1F", "1e309", "2" * 30, "-1", "1.5", "é", "\u2028",
          "\x00", "\x7f", "\ufeff", "\\", "@", "`", "%", ",", "&", "*", "!", "??", ": :", "\r\n"]
FUZZ_STATS: Counter[str] = Counter()


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = TEXT
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            piece = draw(st.sampled_from(TOKENS)) * draw(st.sampled_from([1, 1, 1, 2, 50]))
        else:
            piece = draw(st.text(min_size=0, max_size=8))
        cut = draw(st.integers(0, 12))
        text = text[:pos] + piece + text[pos + cut:]
    return text


@given(text=mutated_text(), command=st.sampled_from(["validate", "render"]))
@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_fuzzed_yaml_text_is_valid_or_one_error_line(
    text: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    p = tmp_path / "fuzz.yaml"
    data = text.replace("@TMP@", str(tmp_path)).encode("utf-8", "surrogatepass")
    p.write_bytes(data)
    t0, w0 = time.thread_time(), time.perf_counter()
    rc = main([command, str(p)])
    elapsed, wall = time.thread_time() - t0, time.perf_counter() - w0
    _, err = capsys.readouterr()
    assert elapsed <= LIMIT_S and wall <= HANG_S, f"{elapsed:.2f} s of CPU, {wall:.1f} s for {text!r}"
    if rc == 0:
        FUZZ_STATS["valid"] += 1
        assert err == ""
        return
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err, text)
    assert str(p) in lines[0], lines[0]  # the file is named (and the field after it, when there is one)
    FUZZ_STATS["refused"] += 1
    FUZZ_STATS[_kind_of_error(lines[0].removeprefix(f"error: {p}: "))] += 1


def _kind_of_error(msg: str) -> str:
    if "malformed yaml" in msg:
        return "malformed yaml"
    if "unknown field" in msg:
        return "unknown field"
    field = msg.split(":", 1)[0]
    return ".".join(field.split(".")[:2]) if " " not in field else msg[:30]


LEAVES = (st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(max_size=24)
          | st.sampled_from(["", "-1", "1e3", "2Gi", "s3://", "../x", "~", "a" * 300, "SAETrainingRun"]))
VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=12)


def _slots(node: object, out: list[tuple[object, object]]) -> list[tuple[object, object]]:
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            _slots(v, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            _slots(v, out)
    return out


@st.composite
def mutated_document(draw: st.DrawFn) -> str:
    """The base manifest with hostile values put at random places (then written as YAML)."""
    from tests.spec.hostile_cases import base, dump

    doc = base()
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc, [])
        parent, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
        else:
            parent[key] = draw(VALUES)  # type: ignore[index]
    return dump(doc).decode()


@given(text=mutated_document(), command=st.sampled_from(["validate", "render"]))
@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_fuzzed_values_are_valid_or_one_error_line(
    text: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    test_fuzzed_yaml_text_is_valid_or_one_error_line.hypothesis.inner_test(text, command, tmp_path, capsys)


def test_zz_fuzz_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints what the fuzzer found (runs after the fuzz test in file order)."""
    if not FUZZ_STATS:
        pytest.skip("the fuzz test did not run in this session")
    with capsys.disabled():
        top = ", ".join(f"{k!r}: {v}" for k, v in FUZZ_STATS.most_common(12) if k not in ("valid", "refused"))
        print(f"\nfuzzed YAML (text mutations and hostile values): {FUZZ_STATS['valid'] + FUZZ_STATS['refused']} documents, "
              f"{FUZZ_STATS['valid']} valid, {FUZZ_STATS['refused']} refused with one error line; "
              f"by kind: {top}")
