"""Temp files of puts interrupted by a crash: found by the key they were writing, removed when
older than a given object, never a file in flight, never anything else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from saeops.runtime.storage import LocalStorage, Storage, open_storage
from saeops.runtime.storage.local import TMP_SUFFIX

CRASH = """
import os, sys
from saeops.runtime.storage import LocalStorage
os.replace = lambda *a: os._exit(9)  # the process dies after writing the temp file, before the rename
LocalStorage(sys.argv[1]).put_bytes(sys.argv[2], b"x" * 1000)
"""


def crash_during_put(root: Path, key: str) -> Path:
    """A real leftover: a process killed in the middle of `put_bytes(key)`."""
    res = subprocess.run([sys.executable, "-c", CRASH, str(root), key], capture_output=True, text=True, timeout=60)
    assert res.returncode == 9, res.stderr
    parent = (root / key).parent
    (left,) = [p for p in parent.iterdir() if p.name.endswith(TMP_SUFFIX) and p.name.startswith(f".{Path(key).name}.")]
    return left


def test_local_leftovers_are_removed_by_prefix_and_age(tmp_path: Path) -> None:
    root = tmp_path / "out"
    st = LocalStorage(root)
    st.put_bytes("keep/data.bin", b"committed")
    st.put_bytes(".hidden-but-not-temp", b"mine")
    (root / "empty-mine").mkdir()
    old = {key: crash_during_put(root, key) for key in
           ("checkpoints/step-00000007/tensors.safetensors", "checkpoints/latest.json", "config.json", "keep/more.bin")}
    for p in old.values():
        os.utime(p, (1_000_000_000, 1_000_000_000))
    assert st.list() == [".hidden-but-not-temp", "keep/data.bin"]  # listings never show them

    st.put_bytes("checkpoints/step-00000008/manifest.json", b"{}")
    fresh = crash_during_put(root, "checkpoints/step-00000009/tensors.safetensors")  # in flight
    future = (root / "checkpoints/step-00000008/manifest.json").stat().st_mtime + 60
    os.utime(fresh, (future, future))

    ckpt = st.child("checkpoints")
    assert sorted(ckpt.remove_temp_files(older_than="step-00000008/manifest.json")) == [
        "latest.json", "step-00000007/tensors.safetensors"]
    assert fresh.exists() and not (root / "checkpoints/step-00000007").exists()  # the folder it left empty
    assert old["config.json"].exists() and old["keep/more.bin"].exists()  # outside the prefix
    assert ckpt.remove_temp_files(older_than="step-00000099/manifest.json") == []  # no such object: keep all

    assert st.remove_temp_files("config.json") == ["config.json"]
    assert sorted(st.remove_temp_files()) == ["checkpoints/step-00000009/tensors.safetensors", "keep/more.bin"]
    assert not (root / "checkpoints/step-00000009").exists()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        ".hidden-but-not-temp", "checkpoints", "checkpoints/step-00000008", "checkpoints/step-00000008/manifest.json",
        "empty-mine", "keep", "keep/data.bin"]


def test_s3_puts_leave_nothing(s3_bucket: str) -> None:
    st: Storage = open_storage(f"{s3_bucket}/p")
    st.put_bytes("a/b", b"x")
    assert st.remove_temp_files() == [] and st.list() == ["a/b"]
