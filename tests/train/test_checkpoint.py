"""Checkpoints hold tensors and plain data only, round-trip every kind of dictionary exactly,
fall back past a damaged latest checkpoint, never load objects, and prune crash leftovers."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from saeops.api import DictionarySpec, SpecError, TrainerSpec
from saeops.runtime.models import build_dictionary
from saeops.runtime.storage import LocalStorage
from saeops.runtime.storage.local import TMP_SUFFIX
from saeops.runtime.train.checkpoint import Checkpointer
from saeops.runtime.train.checkpoint_format import (
    MANIFEST,
    STATE,
    TENSORS,
    CheckpointDamaged,
    decode,
    encode,
    safetensors_bytes,
)
from saeops.runtime.train.trainer import Trainer

Batch = dict[str, torch.Tensor]
CLT_IN = [f"blocks.{i}.ln2.hook_out" for i in range(3)]
CLT_OUT = [f"blocks.{i}.hook_mlp_out" for i in range(3)]
LORSA_IN, LORSA_OUT = "blocks.0.ln1.hook_out", "blocks.0.hook_attn_out"


def _dense(**shapes: tuple[int, ...]) -> Callable[[torch.Generator], Batch]:
    return lambda g: {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def _lorsa(g: torch.Generator) -> Batch:
    return {LORSA_IN: torch.randn(8, 5, 8, generator=g), LORSA_OUT: torch.randn(8, 5, 8, generator=g),
            "mask": torch.ones(8, 5, dtype=torch.bool)}


KINDS: dict[str, tuple[DictionarySpec, int, int, Callable[[torch.Generator], Batch]]] = {
    "topk": (DictionarySpec(hook_point_in="h", act_fn="topk", top_k=4, d_sae=64), 16, 16, _dense(h=(32, 16))),
    "jumprelu": (DictionarySpec(hook_point_in="h", act_fn="jumprelu", d_sae=64), 16, 16, _dense(h=(32, 16))),
    "transcoder": (DictionarySpec(type="transcoder", hook_point_in="a", hook_point_out="b", act_fn="batchtopk",
                                  top_k=3, d_sae=48, skip_connection=True), 16, 12, _dense(a=(32, 16), b=(32, 12))),
    "clt": (DictionarySpec(type="clt", hook_points_in=CLT_IN, hook_points_out=CLT_OUT, d_sae=8, act_fn="layertopk",
                           top_k=2), 6, 5, _dense(**{h: (32, 6) for h in CLT_IN}, **{h: (32, 5) for h in CLT_OUT})),
    "lorsa": (DictionarySpec(type="lorsa", hook_point_in=LORSA_IN, hook_point_out=LORSA_OUT, d_sae=12, act_fn="topk", top_k=3,
                             lorsa={"n_qk_heads": 2, "d_qk_head": 4}), 8, 8, _lorsa),
}


def make_trainer(kind: str, seed: int = 0) -> tuple[Trainer, Callable[[torch.Generator], Batch]]:
    spec, d_in, d_out, batch = KINDS[kind]
    torch.manual_seed(seed)
    model = build_dictionary(spec, d_in, d_out)
    trainer = TrainerSpec(total_training_tokens=10_000, batch_size=32, lr=1e-2, log_frequency=3, progress_bar=False,
                          aux_k_coefficient=0.1 if spec.is_topk_family and kind != "clt" else 0.0)
    return Trainer(model, trainer), batch


def steps(trainer: Trainer, batch: Callable[[torch.Generator], Batch], n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        trainer.train_step(batch(g))
        if trainer.state.step % trainer.cfg.log_frequency == 0:
            trainer.log_metrics()


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal structures; tensors equal bitwise with the same dtype; tuples stay tuples."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


# -- the format ---------------------------------------------------------------------------


def test_encode_decode_keeps_types_keys_and_tensors() -> None:
    shared = torch.arange(10, dtype=torch.float32)
    state = {
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3)}, 1: {"step": torch.tensor(3.0)}},
                      "param_groups": [{"betas": (0.9, 0.999), "params": [0, 1], "fused": True, "foreach": None}]},
        "views": [shared[:5], shared[5:]],  # one storage: saved as two tensors
        "dtypes": [torch.zeros(3, dtype=d) for d in (torch.bfloat16, torch.float16, torch.int64, torch.uint8, torch.bool)],
        "empty": torch.zeros(0, 4),
        "history": [{"l0": 4.0, "ev": float("nan"), "mse": float("inf")}],
        "__tricky": {"__tensor__": "not a reference"},
        "rng": {"python": (3, (1, 2, 3), None)},
    }
    tensors, doc = encode(state)
    text = json.dumps(doc)
    assert "exp_avg" not in text or "__tensor__" in text  # tensors leave the JSON
    assert_same(decode(json.loads(text), tensors), state)


def test_safetensors_writer_is_read_by_the_safetensors_package() -> None:
    import safetensors.torch

    g = torch.Generator().manual_seed(0)
    tensors = {f"t/{d}": (torch.randn(3, 5, generator=g) * 50).to(d) for d in
               (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
                torch.int8, torch.uint8, torch.bool)}
    tensors.update(scalar=torch.tensor(2.5), empty=torch.zeros(0, 4), odd=torch.arange(3, dtype=torch.uint8))
    blob = safetensors_bytes(tensors, {"format": "x"})
    back = safetensors.torch.load(bytes(blob))
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k
    with pytest.raises(TypeError, match=r"dtype torch\.complex64"):
        safetensors_bytes({"c": torch.zeros(2, dtype=torch.complex64)}, {})


def test_encode_refuses_objects() -> None:
    with pytest.raises(TypeError, match="at trainer/where holds a PosixPath"):
        encode({"trainer": {"where": Path("/x")}})


def test_decode_refuses_a_missing_tensor() -> None:
    with pytest.raises(CheckpointDamaged, match="names tensor 'x'"):
        decode({"w": {"__tensor__": "x"}}, {})


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_restores_everything_and_training_continues_identically(kind: str, tmp_path: Path) -> None:
    trainer, batch = make_trainer(kind)
    steps(trainer, batch, 4, seed=1)  # one logged window and one step into the next
    assert trainer.window.steps == 1 and trainer.optimizer.state_dict()["state"]
    ckpt = Checkpointer(LocalStorage(tmp_path), keep=2)
    random.seed(5)
    np.random.seed(6)
    ckpt.save(trainer.model, trainer)
    draws = (torch.rand(3), random.random(), np.random.rand())
    steps(trainer, batch, 2, seed=2)

    fresh, _ = make_trainer(kind, seed=99)  # other initial weights: everything must come from the file
    state = Checkpointer(LocalStorage(tmp_path), keep=2).read_latest()
    assert state is not None
    assert Checkpointer(LocalStorage(tmp_path)).restore(state, fresh.model, fresh) == 4
    assert_same((torch.rand(3), random.random(), np.random.rand()), draws)
    steps(fresh, batch, 2, seed=2)
    assert_same(fresh.model.state_dict(), trainer.model.state_dict())
    assert_same(fresh.optimizer.state_dict(), trainer.optimizer.state_dict())
    assert_same(fresh.window.state_dict(), trainer.window.state_dict())
    assert_same(fresh.tracker.state_dict(), trainer.tracker.state_dict())
    assert fresh.state == trainer.state


def test_checkpoint_files_are_safetensors_and_json_with_checksums(tmp_path: Path) -> None:
    trainer, batch = make_trainer("topk")
    steps(trainer, batch, 3, seed=1)
    Checkpointer(LocalStorage(tmp_path)).save(trainer.model, trainer)
    folder = tmp_path / "step-00000003"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, STATE, TENSORS]
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in (STATE, TENSORS):
        assert manifest["files"][name]["bytes"] == (folder / name).stat().st_size
        assert len(manifest["files"][name]["xxh3_128"]) == 32
    from safetensors.torch import load_file

    tensors = load_file(str(folder / TENSORS))
    assert torch.equal(tensors["model/W_enc"], trainer.model.W_enc.detach())
    pointer = json.loads((tmp_path / "latest.json").read_text())
    assert pointer["step"] == 3 and pointer["key"] == f"step-00000003/{MANIFEST}"


# -- damage and fallback -------------------------------------------------------------------


def two_checkpoints(tmp_path: Path) -> tuple[Checkpointer, Trainer]:
    trainer, batch = make_trainer("topk")
    ckpt = Checkpointer(LocalStorage(tmp_path), keep=2)
    steps(trainer, batch, 3, seed=1)
    ckpt.save(trainer.model, trainer)
    steps(trainer, batch, 3, seed=2)
    ckpt.save(trainer.model, trainer)
    return ckpt, trainer


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    p.write_bytes(bytes(raw))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated tensors": (lambda f: _truncate(f / TENSORS), "tensors.safetensors is truncated"),
    "bit rot in state": (lambda f: _flip(f / STATE), "state.json fails its xxh3_128 checksum"),
    "missing manifest": (lambda f: (f / MANIFEST).unlink(), "no manifest.json"),
    "truncated manifest": (lambda f: _truncate(f / MANIFEST), "manifest.json unreadable"),
    "folder gone": (lambda f: [p.unlink() for p in f.iterdir()], "no manifest.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_falls_back_to_the_previous_kept_one(damage: str, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    ckpt, _ = two_checkpoints(tmp_path)
    harm, reason = DAMAGE[damage]
    harm(tmp_path / "step-00000006")
    with caplog.at_level(logging.WARNING, logger="saeops.checkpoint"):
        state = ckpt.read_latest()
    assert state is not None and state["step"] == 3
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"{(tmp_path / 'step-00000006').as_uri()} ({reason}" in warning
    assert f"falling back to {(tmp_path / 'step-00000003').as_uri()}" in warning


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path: Path) -> None:
    ckpt, _ = two_checkpoints(tmp_path)
    _truncate(tmp_path / "step-00000006" / TENSORS)
    _flip(tmp_path / "step-00000003" / TENSORS)
    with pytest.raises(SpecError) as e:
        ckpt.read_latest()
    msg = str(e.value)
    assert "step-00000006 (tensors.safetensors is truncated" in msg and "step-00000003 (tensors.safetensors fails" in msg
    assert "--force-new" in msg and "\n" not in msg


def test_unreadable_pointer_uses_the_newest_complete_folder(tmp_path: Path) -> None:
    ckpt, _ = two_checkpoints(tmp_path)
    (tmp_path / "latest.json").write_text('{"step": 6, "ke')
    state = ckpt.read_latest()
    assert state is not None and state["step"] == 6


class _Plant:
    """Unpickling this creates `path`: what a planted checkpoint could do in a training pod."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def malicious_pickle(marker: Path) -> bytes:
    payload = pickle.dumps({"model": _Plant(marker)})
    probe = marker.with_name(marker.name + "-probe")
    pickle.loads(pickle.dumps(_Plant(probe)))  # the payload is real: loading it does create a path
    assert probe.is_dir()
    return payload


def test_a_pickle_with_matching_checksums_is_never_unpickled(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    ckpt, _ = two_checkpoints(tmp_path / "ck")
    marker = tmp_path / "pwned"
    folder = tmp_path / "ck" / "step-00000006"
    blob = malicious_pickle(marker)
    (folder / TENSORS).write_bytes(blob)
    manifest = json.loads((folder / MANIFEST).read_text())
    from saeops.runtime.cache.format import xxh3_hex

    manifest["files"][TENSORS] = {"bytes": len(blob), "xxh3_128": xxh3_hex(blob)}  # a careful attacker
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="saeops.checkpoint"):
        state = ckpt.read_latest()
    assert state is not None and state["step"] == 3
    assert "tensors.safetensors is not a valid safetensors file" in caplog.text
    assert not marker.exists()


def test_old_pickled_checkpoint_is_refused_unopened(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "ck" / "step-00000100").mkdir(parents=True)
    (tmp_path / "ck" / "step-00000100" / "state.pt").write_bytes(malicious_pickle(marker))
    (tmp_path / "ck" / "latest.json").write_text(json.dumps({"step": 100, "key": "step-00000100/state.pt"}))
    with pytest.raises(SpecError) as e:
        Checkpointer(LocalStorage(tmp_path / "ck")).read_latest()
    msg = str(e.value)
    assert "step-00000100/state.pt, a checkpoint format this saeops does not read" in msg
    assert "--force-new" in msg and "\n" not in msg
    assert not marker.exists()


# -- pruning ------------------------------------------------------------------------------


def test_pruning_removes_crash_leftovers(tmp_path: Path) -> None:
    trainer, batch = make_trainer("topk")
    root = tmp_path / "ck"
    ckpt = Checkpointer(LocalStorage(root), keep=2)
    for n in range(3):
        steps(trainer, batch, 2, seed=n)
        ckpt.save(trainer.model, trainer)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000004", "step-00000006"]
    old = 1_000_000_000  # crash leftovers: written before the next checkpoint
    leftovers = [root / "step-00000006" / f".{TENSORS}.abc{TMP_SUFFIX}",  # a kept folder
                 root / "step-00000007" / f".{TENSORS}.def{TMP_SUFFIX}",  # an orphan: only a temp file
                 root / f".latest.json.ghi{TMP_SUFFIX}"]
    for p in leftovers:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * 1000)
        os.utime(p, (old, old))
    (root / "step-00000005").mkdir()  # the old pickled format, never pointed at
    (root / "step-00000005" / "state.pt").write_bytes(b"pickle")
    (root / "step-00000009").mkdir()  # a crashed attempt's folder after the pointer
    (root / "step-00000009" / TENSORS).write_bytes(b"partial")
    steps(trainer, batch, 2, seed=9)
    in_flight = root / f".latest.json.jkl{TMP_SUFFIX}"  # newer than the checkpoint: someone is writing
    ckpt.save(trainer.model, trainer)
    in_flight.write_bytes(b"y")
    future = (root / "step-00000008" / MANIFEST).stat().st_mtime + 60
    os.utime(in_flight, (future, future))
    ckpt._prune(8)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [in_flight.name, "latest.json", "step-00000006", "step-00000008"])
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in (root / "step-00000006").iterdir()) == [MANIFEST, STATE, TENSORS]


def test_on_s3_damage_falls_back_and_orphan_folders_go(s3_bucket: str) -> None:
    from saeops.runtime.storage import open_storage

    st = open_storage(f"{s3_bucket}/runs/r/checkpoints")
    trainer, batch = make_trainer("topk")
    ckpt = Checkpointer(st, keep=2)
    for n in range(2):
        steps(trainer, batch, 3, seed=n)
        ckpt.save(trainer.model, trainer)
    st.put_bytes(f"step-00000006/{TENSORS}", st.get_bytes(f"step-00000006/{TENSORS}")[:-1])
    st.put_bytes(f"step-00000009/{TENSORS}", b"a crashed attempt's partial checkpoint")
    state = ckpt.read_latest()
    assert state is not None and state["step"] == 3
    fresh, _ = make_trainer("topk", seed=5)
    ckpt.restore(state, fresh.model, fresh)
    steps(fresh, batch, 3, seed=1)
    ckpt.save(fresh.model, fresh)  # step 6 again, over the damaged one
    assert sorted({k.split("/")[0] for k in st.list("step-")}) == ["step-00000003", "step-00000006"]
    assert_same(fresh.model.state_dict(), trainer.model.state_dict())
