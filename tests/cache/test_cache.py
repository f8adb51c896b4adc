"""Activation cache: format, writer resume, reader order/splitting/cursor, errors, inspection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import xxhash

from saeops.runtime.cache import (
    MANIFEST,
    PROGRESS,
    CacheBatch,
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    CacheReader,
    CacheWriter,
    IncompleteCacheError,
    check_compatible,
    format_inspection,
    inspect_cache,
    load_manifest,
    shard_key,
)
from saeops.runtime.cache.format import sha256_hex, verify_shard, xxh3_hex
from saeops.runtime.storage import BufferPool, LocalStorage, Storage, open_storage
from tests.cache.helpers import CTX, D_MODEL, HOOKS, IDENTITY, chunks, make_data, row_ids

TPS = 100  # tokens per shard


def write_cache(storage: Storage | str, data: dict[str, torch.Tensor], *, hooks: list[str] = HOOKS,
                dtype: torch.dtype = torch.float32, tps: int = TPS, **kw) -> dict:
    w = CacheWriter(storage, hooks, {h: D_MODEL[h] for h in hooks}, dtype, tps, IDENTITY, **kw)
    for args in chunks(data, hooks, skip=w.resume_point()):
        w.write(*args)
    return w.finalize()


def as_dict(b: CacheBatch) -> dict[str, torch.Tensor]:
    return {**b.by_hook, "tokens": b.tokens, "positions": b.positions, "documents": b.documents,
            "index": torch.tensor(b.index)}


def collect(reader: CacheReader) -> list[dict[str, torch.Tensor]]:
    return [as_dict(b) for b in reader]


def assert_same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return make_data(1050)  # 10 full shards + one of 50


@pytest.fixture
def local_cache(tmp_path: Path, data: dict[str, torch.Tensor]) -> LocalStorage:
    st = LocalStorage(tmp_path / "cache")
    write_cache(st, data)
    return st


# -- format and round trips ----------------------------------------------------------------


def test_layout_and_manifest(local_cache: LocalStorage) -> None:
    keys = local_cache.list()
    assert MANIFEST in keys and PROGRESS not in keys
    for h in HOOKS:
        assert [k for k in keys if k.startswith(h + "/")] == [shard_key(h, i) for i in range(11)]
    m = load_manifest(local_cache)
    assert m["format_version"] == 1 and m["total_tokens"] == 1050 and m["num_shards"] == 11
    assert m["hook_points"] == HOOKS and m["d_model"] == D_MODEL and m["dtype"] == "float32"
    assert m["model"] == IDENTITY["model"] and m["dataset"] == IDENTITY["dataset"]
    assert (m["context_size"], m["seed"], m["tokens_per_shard"]) == (CTX, 7, TPS)
    sizes = local_cache.list_sizes()
    for h in HOOKS:
        assert [e["num_tokens"] for e in m["shards"][h]] == [100] * 10 + [50]
        assert all(sizes[e["key"]] == e["bytes"] and len(e["sha256"]) == 64 for e in m["shards"][h])
    assert m["created_at"].endswith("+00:00")


def test_writer_records_both_checksums_of_the_stored_bytes(local_cache: LocalStorage) -> None:
    m = load_manifest(local_cache)
    for h in HOOKS:
        for e in m["shards"][h]:
            stored = local_cache.get_bytes(e["key"])
            assert e["xxh3_128"] == xxh3_hex(stored) == xxhash.xxh3_128(stored).hexdigest()
            assert len(e["xxh3_128"]) == 32
            assert e["sha256"] == sha256_hex(stored)


def test_unshuffled_read_is_the_written_stream(local_cache: LocalStorage, data: dict[str, torch.Tensor]) -> None:
    r = CacheReader(local_cache, HOOKS, batch_size=64, shuffle=False)
    batches = collect(r)
    assert len(batches) == len(r) == 1050 // 64
    n = len(batches) * 64
    for k in [*HOOKS, "tokens", "positions", "documents"]:
        assert torch.equal(torch.cat([b[k] for b in batches]), data[k][:n]), k


def test_file_and_s3_give_bitwise_identical_batches(local_cache: LocalStorage, s3_bucket: str,
                                                    data: dict[str, torch.Tensor]) -> None:
    write_cache(f"{s3_bucket}/caches/c1", data)
    kw = dict(batch_size=48, seed=3, read_ahead=3)
    from_file = collect(CacheReader(local_cache.uri, HOOKS, **kw))
    from_s3 = collect(CacheReader(f"{s3_bucket}/caches/c1", HOOKS, **kw))
    assert_same(from_file, from_s3)
    assert load_manifest(open_storage(f"{s3_bucket}/caches/c1"))["shards"] == load_manifest(local_cache)["shards"]


def test_shuffled_rows_match_their_source(local_cache: LocalStorage, data: dict[str, torch.Tensor]) -> None:
    """Shuffling moves whole rows: every hook point and token field stays aligned."""
    for b in CacheReader(local_cache, HOOKS, batch_size=50, seed=11):
        ids = row_ids(b.documents, b.positions)
        for k in [*HOOKS, "tokens"]:
            assert torch.equal(b.by_hook[k] if k in HOOKS else b.tokens, data[k][ids])


def test_half_precision_cache_and_dtype_conversion(tmp_path: Path, data: dict[str, torch.Tensor]) -> None:
    st = LocalStorage(tmp_path / "c16")
    write_cache(st, data, hooks=HOOKS[:1], dtype=torch.bfloat16)
    assert load_manifest(st)["dtype"] == "bfloat16"
    b = next(iter(CacheReader(st, HOOKS[0], batch_size=10, shuffle=False)))
    assert b.activations.dtype == torch.bfloat16
    assert torch.equal(b.activations, data[HOOKS[0]][:10].to(torch.bfloat16))
    b32 = next(iter(CacheReader(st, HOOKS[0], batch_size=10, shuffle=False, dtype=torch.float32)))
    assert b32.activations.dtype == torch.float32 and torch.equal(b32.activations, b.activations.float())


# -- order: determinism, ranks, cursor -------------------------------------------------------


def test_deterministic_given_seed(local_cache: LocalStorage) -> None:
    a = collect(CacheReader(local_cache, HOOKS[0], batch_size=32, seed=5))
    b = collect(CacheReader(local_cache, HOOKS[0], batch_size=32, seed=5, read_ahead=1))
    assert_same(a, b)
    c = collect(CacheReader(local_cache, HOOKS[0], batch_size=32, seed=6))
    assert not torch.equal(a[0]["tokens"], c[0]["tokens"])
    two = collect(CacheReader(local_cache, HOOKS[0], batch_size=32, seed=5, epochs=2))
    per = len(a)
    assert_same([{k: v for k, v in x.items() if k != "index"} for x in two[:per]],
                [{k: v for k, v in x.items() if k != "index"} for x in a])
    assert not torch.equal(two[per]["tokens"], two[0]["tokens"])  # the next epoch reshuffles


def test_ranks_are_disjoint_and_cover(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path / "c")
    write_cache(st, make_data(1200), hooks=HOOKS[:1])  # 12 equal shards: 4 per rank
    seen: list[torch.Tensor] = []
    for rank in range(3):
        r = CacheReader(st, HOOKS[0], batch_size=40, seed=1, rank=rank, world_size=3)
        assert r.batches_per_epoch() == 10
        ids = torch.cat([row_ids(b.documents, b.positions) for b in r])
        # Rank r reads exactly its shards r, r+3, ... of the seeded shard permutation.
        assert sorted(set((ids // TPS).tolist())) == sorted(r.shard_order(0))
        seen.append(ids)
    allids = torch.cat(seen)
    assert allids.unique().numel() == allids.numel() == 1200


def test_ranks_yield_equal_batch_counts(local_cache: LocalStorage) -> None:
    """With a short last shard, every rank still yields the same number of batches (DDP steps line up)."""
    counts = [len(collect(CacheReader(local_cache, HOOKS[0], batch_size=30, rank=r, world_size=2)))
              for r in range(2)]
    assert counts[0] == counts[1] == CacheReader(local_cache, HOOKS[0], batch_size=30, world_size=2).batches_per_epoch()


class CountingStorage(LocalStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        return super().get_bytes(key)

    def get_buffer(self, key: str, pool: BufferPool | None = None) -> memoryview:
        self.reads.append(key)
        return super().get_buffer(key, pool)


def test_resume_from_cursor(local_cache: LocalStorage) -> None:
    full = collect(CacheReader(local_cache, HOOKS, batch_size=64, seed=2, epochs=3))
    for start in (1, 5, len(full) // 3, len(full) // 3 + 1, len(full) - 1):
        rest = collect(CacheReader(local_cache, HOOKS, batch_size=64, seed=2, epochs=3, start_batch=start))
        assert_same(rest, full[start:])
    assert collect(CacheReader(local_cache, HOOKS, batch_size=64, seed=2, start_batch=len(full))) == []


def test_resume_skips_shards_without_reading_them(local_cache: LocalStorage) -> None:
    st = CountingStorage(local_cache.root)
    r = CacheReader(st, HOOKS[0], batch_size=100, seed=4, start_batch=7, read_ahead=1)
    it = iter(r)
    first = next(it)
    assert first.index == 7
    order = r.shard_order(0)
    sizes = [100 if s != 10 else 50 for s in order]  # shard 10 is the short one
    k = next(i for i in range(len(order)) if sum(sizes[: i + 1]) > 700)  # shard holding row 700
    assert st.reads[1] == shard_key(HOOKS[0], order[k])  # right after manifest.json
    assert not {shard_key(HOOKS[0], s) for s in order[:k]} & set(st.reads)
    ids = row_ids(first.documents, first.positions)
    assert set((ids // TPS).tolist()) <= {order[k], *order[k + 1 : k + 2]}
    it.close()


# -- errors --------------------------------------------------------------------------------


def test_corrupted_shard_is_named(local_cache: LocalStorage) -> None:
    m = load_manifest(local_cache)
    entry = m["shards"][HOOKS[1]][3]
    p = local_cache.path(entry["key"])
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF  # same size, different activations
    p.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError) as e:
        collect(CacheReader(local_cache, HOOKS, batch_size=50, shuffle=False))
    msg = str(e.value)
    assert entry["key"] in msg and "is corrupt: xxh3_128" in msg and entry["xxh3_128"] in msg and "regenerate" in msg
    assert "\n" not in msg
    # Without verification the bit flip goes unnoticed (the shard still parses).
    assert len(collect(CacheReader(local_cache, HOOKS, batch_size=50, shuffle=False, verify=False))) == 21


def test_missing_manifest_is_incomplete(local_cache: LocalStorage, tmp_path: Path) -> None:
    local_cache.delete(MANIFEST)
    with pytest.raises(IncompleteCacheError) as e:
        CacheReader(local_cache, HOOKS[0], batch_size=8)
    assert str(e.value) == (f"cache {local_cache.uri} is incomplete (no manifest.json): generation did not "
                            "finish; rerun the ActivationCache to resume")
    with pytest.raises(CacheError, match=r"no activation cache at .* \(nothing there\)"):
        CacheReader(str(tmp_path / "empty"), HOOKS[0], batch_size=8)


def test_check_compatible_messages(local_cache: LocalStorage) -> None:
    m = load_manifest(local_cache)
    check_compatible(m, hook_point=HOOKS[0], d_model=24, dtype="float32")
    with pytest.raises(CacheMismatchError, match=r"^spec.sae.dModel=512 but cache manifest d_model=24 for hook "
                                                 r"blocks.0.hook_resid_post$"):
        check_compatible(m, hook_point=HOOKS[0], d_model=512)
    with pytest.raises(CacheMismatchError, match=r"'blocks.9.x' is not in the cache \(it has: blocks.0"):
        check_compatible(m, hook_point="blocks.9.x")
    with pytest.raises(CacheMismatchError, match="dtype float16 but cache manifest dtype=float32"):
        check_compatible(m, hook_point=HOOKS[0], dtype=torch.float16)
    with pytest.raises(CacheMismatchError, match="not in the cache"):
        CacheReader(local_cache, "nope", batch_size=4)


def test_reader_argument_errors(local_cache: LocalStorage) -> None:
    with pytest.raises(CacheError, match="fewer than world_size=12"):
        CacheReader(local_cache, HOOKS[0], batch_size=4, world_size=12)
    with pytest.raises(CacheError, match="fewer than batch_size=2000"):
        CacheReader(local_cache, HOOKS[0], batch_size=2000)


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    w = CacheWriter(LocalStorage(tmp_path), HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
    t = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(CacheMismatchError, match=r"blocks.0.hook_resid_post have shape \(4, 7\), expected \(4, 24\)"):
        w.write({HOOKS[0]: torch.zeros(4, 7), HOOKS[1]: torch.zeros(4, 40)}, t, t, t.long())
    with pytest.raises(CacheError, match="needs activations for exactly"):
        w.write({HOOKS[0]: torch.zeros(4, 24)}, t, t, t.long())
    with pytest.raises(CacheError, match="no tokens were written"):
        w.finalize()
    with pytest.raises(CacheError, match="invalid hook point name"):
        CacheWriter(LocalStorage(tmp_path), ["a/b"], 4, torch.float32, TPS)


# -- writer resume -------------------------------------------------------------------------


def test_writer_resumes_after_crash(tmp_path: Path, data: dict[str, torch.Tensor], local_cache: LocalStorage) -> None:
    """A crash mid-generation: the rerun skips the verified shards, rewrites the rest, and the
    finished cache reads exactly like one written in a single go."""
    st = LocalStorage(tmp_path / "resumed")
    w = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
    assert w.resume_point() == 0
    for i, args in enumerate(chunks(data, HOOKS)):
        w.write(*args)
        if i == 12:  # 481 rows: 4 shards done, 81 rows buffered
            break
    w.close()  # the process dies: buffered rows are lost, no manifest
    # A crash between a shard's put and the progress update leaves an unrecorded shard behind.
    st.put_bytes(shard_key(HOOKS[0], 4), b"garbage from the dead run")
    with pytest.raises(IncompleteCacheError):
        CacheReader(st, HOOKS[0], batch_size=8)
    assert inspect_cache(st)["tokens_done"] == 400

    w2 = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
    assert w2.resume_point() == 400
    for args in chunks(data, HOOKS, skip=400):
        w2.write(*args)
    w2.finalize()
    assert load_manifest(st)["shards"] == load_manifest(local_cache)["shards"]
    assert_same(collect(CacheReader(st, HOOKS, batch_size=64, seed=9)),
                collect(CacheReader(local_cache, HOOKS, batch_size=64, seed=9)))
    # Rerunning a finished cache is a no-op that skips everything.
    w3 = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
    assert w3.resume_point() == 1050 and w3.complete
    with pytest.raises(CacheError, match="already complete"):
        w3.write(*next(chunks(data, HOOKS)))


def _interrupted_cache(root: Path, data: dict[str, torch.Tensor]) -> LocalStorage:
    """A cache whose writer stopped after 350 tokens: 3 shards recorded in the progress file."""
    st = LocalStorage(root)
    w = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
    for args in chunks(data, HOOKS):
        w.write(*args)
        if w.tokens_written >= 350:
            break
    w.close()
    return st


def test_writer_rewrites_a_corrupt_trailing_shard(tmp_path: Path, data: dict[str, torch.Tensor]) -> None:
    st = _interrupted_cache(tmp_path / "c", data)
    progress = st.get_json(PROGRESS)
    last = progress["shards"][HOOKS[1]][2]["key"]
    raw = bytearray(st.get_bytes(last))
    raw[-1] ^= 1
    st.path(last).write_bytes(bytes(raw))  # bit rot, same size: only the hash notices
    assert CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY, verify_resume="none").resume_point() == 300
    assert CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY).resume_point() == 200
    st.delete(progress["shards"][HOOKS[0]][1]["key"])  # a lost shard in the middle
    assert CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY).resume_point() == 100


def test_writer_verifies_every_recorded_shard_on_resume(tmp_path: Path, data: dict[str, torch.Tensor],
                                                       local_cache: LocalStorage) -> None:
    st = _interrupted_cache(tmp_path / "c", data)
    first = st.get_json(PROGRESS)["shards"][HOOKS[0]][0]["key"]
    raw = bytearray(st.get_bytes(first))
    raw[len(raw) // 2] ^= 1
    st.path(first).write_bytes(bytes(raw))  # bit rot in the first shard, same size
    assert CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY, verify_resume="last").resume_point() == 300
    w = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)  # the default checks them all
    assert w.resume_point() == 0
    for args in chunks(data, HOOKS):
        w.write(*args)
    assert w.finalize()["shards"] == load_manifest(local_cache)["shards"]


def test_writer_refuses_to_mix_settings(tmp_path: Path, data: dict[str, torch.Tensor]) -> None:
    st = LocalStorage(tmp_path / "c")
    w = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
    for args in chunks(data, HOOKS, chunk=250):
        w.write(*args)
        break
    w.close()
    other = {**IDENTITY, "model": {"name": "other"}}
    with pytest.raises(CacheMismatchError, match=r"unfinished cache at .* different settings \(identity:"):
        CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, other).resume_point()
    with pytest.raises(CacheMismatchError, match="tokens_per_shard: 100 there vs 50 now"):
        CacheWriter(st, HOOKS, D_MODEL, torch.float32, 50, IDENTITY).resume_point()


def test_writer_without_background_thread(tmp_path: Path, data: dict[str, torch.Tensor],
                                          local_cache: LocalStorage) -> None:
    st = LocalStorage(tmp_path / "fg")
    write_cache(st, data, background=False)
    assert load_manifest(st)["shards"] == load_manifest(local_cache)["shards"]


# -- inspection ----------------------------------------------------------------------------


def test_inspect_cache(local_cache: LocalStorage, data: dict[str, torch.Tensor]) -> None:
    s = inspect_cache(local_cache.uri, sample_shards=100)
    assert s["complete"] and s["total_tokens"] == 1050
    h = s["hook_points"][HOOKS[1]]
    assert (h["d_model"], h["shards"], h["tokens"]) == (40, 11, 1050)
    x = data[HOOKS[1]].double()
    st = h["stats"]
    rms = x.pow(2).mean(0).sqrt()
    assert st["sampled_tokens"] == 1050
    assert st["rms_mean"] == pytest.approx(float(rms.mean()))
    assert st["rms_min"] == pytest.approx(float(rms.min()))
    assert st["rms_max"] == pytest.approx(float(rms.max()))
    assert st["token_norm_mean"] == pytest.approx(float(x.norm(dim=1).mean()))
    assert inspect_cache(local_cache)["hook_points"][HOOKS[0]]["stats"]["sampled_shards"] == 4
    text = format_inspection(s)
    assert "blocks.1.hook_resid_post" in text and "1,050 per hook point" in text and "name=toy" in text
    json.dumps(s)  # plain JSON for `--json` style output


def test_decode_shard_matches_safetensors() -> None:
    import safetensors.torch

    from saeops.runtime.cache.format import decode_shard

    tensors = {"activations": torch.randn(7, 5).to(torch.bfloat16), "tokens": torch.arange(7, dtype=torch.int32),
               "documents": torch.arange(7, dtype=torch.int64), "empty": torch.zeros(0, 3)}
    blob = bytearray(safetensors.torch.save(tensors, metadata={"k": "v"}))
    out = decode_shard(blob)
    assert out.keys() == tensors.keys()
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)
    out["tokens"][0] = 99  # a view into the buffer, not a copy
    assert decode_shard(blob)["tokens"][0] == 99
    for bad in (bytearray(b"\x01"), bytearray((10**9).to_bytes(8, "little") + b"{}"), blob[:-8]):
        with pytest.raises(ValueError):
            decode_shard(bad)


def test_unparseable_shard_without_verification(local_cache: LocalStorage) -> None:
    key = load_manifest(local_cache)["shards"][HOOKS[0]][0]["key"]
    local_cache.put_bytes(key, b"\xff" * 64)
    with pytest.raises(CacheCorruptError, match=f"{key} cannot be parsed"):
        collect(CacheReader(local_cache, HOOKS[0], batch_size=10, shuffle=False, verify=False))
    with pytest.raises(CacheCorruptError, match=f"{key} is corrupt: xxh3_128"):
        inspect_cache(local_cache)


# -- caches written before xxh3_128 was recorded -------------------------------------------


def _strip_xxh3(record: dict) -> dict:
    """`record` (manifest or progress) as saeops wrote it before shards carried `xxh3_128`."""
    for entries in record["shards"].values():
        for e in entries:
            del e["xxh3_128"]
    return record


def test_old_manifest_with_only_sha256_still_verifies(local_cache: LocalStorage) -> None:
    expected = collect(CacheReader(local_cache, HOOKS, batch_size=50, seed=3))
    local_cache.put_json(MANIFEST, _strip_xxh3(local_cache.get_json(MANIFEST)))
    assert_same(collect(CacheReader(local_cache, HOOKS, batch_size=50, seed=3)), expected)
    assert inspect_cache(local_cache)["complete"]

    entry = load_manifest(local_cache)["shards"][HOOKS[0]][5]
    assert "xxh3_128" not in entry
    p = local_cache.path(entry["key"])
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF  # same size, still parses: only the checksum notices
    p.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError) as e:
        collect(CacheReader(local_cache, HOOKS, batch_size=50, shuffle=False))
    msg = str(e.value)
    assert f"{entry['key']} is corrupt: sha256 {sha256_hex(bytes(raw))} but the manifest says {entry['sha256']}" in msg
    assert msg.endswith("; regenerate the cache") and "\n" not in msg
    with pytest.raises(CacheCorruptError, match=f"{entry['key']} is corrupt: sha256"):
        inspect_cache(local_cache, sample_shards=100)


def test_writer_resumes_old_progress_with_only_sha256(tmp_path: Path, data: dict[str, torch.Tensor],
                                                      local_cache: LocalStorage) -> None:
    st = _interrupted_cache(tmp_path / "c", data)
    st.put_json(PROGRESS, _strip_xxh3(st.get_json(PROGRESS)))
    assert CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY, verify_resume="all").resume_point() == 300
    last = st.get_json(PROGRESS)["shards"][HOOKS[1]][2]["key"]
    raw = bytearray(st.get_bytes(last))
    raw[-1] ^= 1
    st.path(last).write_bytes(bytes(raw))
    assert CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY).resume_point() == 200
    # Finishing it gives a manifest of old (sha256 only) and new (both checksums) entries that reads
    # exactly like a cache written in one go.
    w2 = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
    for args in chunks(data, HOOKS, skip=w2.resume_point()):
        w2.write(*args)
    shards = w2.finalize()["shards"]
    assert ["xxh3_128" in e for e in shards[HOOKS[0]]] == [False] * 2 + [True] * 9
    assert_same(collect(CacheReader(st, HOOKS, batch_size=64, seed=9)),
                collect(CacheReader(local_cache, HOOKS, batch_size=64, seed=9)))


def test_verify_shard_prefers_xxh3_and_needs_a_checksum() -> None:
    data = b"shard bytes"
    good = {"sha256": sha256_hex(data), "xxh3_128": xxh3_hex(data)}
    verify_shard(good, data, "file:///c/s")
    verify_shard({"sha256": good["sha256"]}, bytearray(data), "file:///c/s")
    verify_shard({"xxh3_128": good["xxh3_128"]}, memoryview(data), "file:///c/s")
    # With xxh3_128 present only it is checked (sha256 is not computed on the read path).
    verify_shard({**good, "sha256": "0" * 64}, data, "file:///c/s")
    with pytest.raises(CacheCorruptError, match=r"^cache shard file:///c/s is corrupt: xxh3_128 [0-9a-f]{32} but the "
                                                r"manifest says 0{32}; regenerate the cache$"):
        verify_shard({**good, "xxh3_128": "0" * 32}, data, "file:///c/s")
    with pytest.raises(CacheCorruptError, match=r"^cache shard file:///c/s has no checksum in the manifest"):
        verify_shard({"key": "s"}, data, "file:///c/s")


def test_pooled_buffers_never_overwrite_batches_still_held(local_cache: LocalStorage) -> None:
    # The reader reuses shard buffers once nothing references them. Batches kept alive by the
    # caller (all of them, here, across 3 epochs of 11 shards) must keep their values, equal to
    # batches cloned the moment they arrived.
    kept = collect(CacheReader(local_cache, HOOKS, batch_size=64, seed=3, epochs=3, read_ahead=2))
    cloned = []
    for b in CacheReader(local_cache, HOOKS, batch_size=64, seed=3, epochs=3, read_ahead=2):
        cloned.append({k: v.clone() for k, v in as_dict(b).items()})
        del b
    assert_same(kept, cloned)

