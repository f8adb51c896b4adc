"""The object store goes down in the middle of writing a cache, comes back, and the rerun resumes.

How the outage is made: moto keeps its S3 state in process-global backends, not in the server
object. Stopping the `ThreadedMotoServer` and closing its listening socket gives the client a real
TCP-level outage (connection refused, exercising botocore's retries and our error translation);
starting a new server on the same port brings back the same buckets and objects, like restarting
a MinIO whose disk survived. No client is patched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saeops.runtime.cache import (
    MANIFEST,
    PROGRESS,
    CacheReader,
    CacheWriter,
    IncompleteCacheError,
    load_manifest,
)
from saeops.runtime.cache.format import sha256_hex
from saeops.runtime.storage import LocalStorage, StorageError, open_storage
from tests.cache.helpers import D_MODEL, HOOKS, IDENTITY, chunks, make_data
from tests.fixtures_s3 import DUMMY_ENV, create_bucket, start_moto_server, stop_moto_server

TPS = 100


def test_s3_outage_mid_write_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in DUMMY_ENV.items():
        monkeypatch.setenv(k, v)
    data = make_data(1050)
    server, endpoint = start_moto_server()
    port = int(endpoint.rsplit(":", 1)[1])
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # for the readers opened by URI
    try:
        uri = f"s3://{create_bucket(endpoint)}/caches/c"
        st = open_storage(uri, endpoint_url=endpoint, max_attempts=2, connect_timeout=1, read_timeout=2)
        w = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
        stream = chunks(data, HOOKS)
        for args in stream:
            w.write(*args)
            if w.tokens_written >= 350:
                break
        w.sync()  # shards 0-2 stored; 50+ rows still buffered in memory

        stop_moto_server(server)
        with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint {endpoint}"):
            for args in stream:
                w.write(*args)
            w.finalize()
        w.close(flush_pending=False)  # the process dies here

        server, _ = start_moto_server(port)  # the store comes back with its state
        st = open_storage(uri, endpoint_url=endpoint)
        keys = st.list()
        assert MANIFEST not in keys and PROGRESS in keys
        with pytest.raises(IncompleteCacheError, match="rerun the ActivationCache to resume"):
            CacheReader(uri, HOOKS[0], batch_size=10)
        # Whatever is visible is whole: every recorded shard matches its checksum.
        progress = st.get_json(PROGRESS)
        for h in HOOKS:
            assert len(progress["shards"][h]) == 3
            for e in progress["shards"][h]:
                assert sha256_hex(st.get_bytes(e["key"])) == e["sha256"]

        reads: list[str] = []
        st.client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **kw: reads.append(params["Key"]))
        w2 = CacheWriter(st, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
        assert w2.resume_point() == 300
        # Resume re-hashed every recorded shard of each hook point, once (plus the JSON records).
        assert sorted(k.rsplit("/", 2)[-1] for k in reads if k.endswith(".safetensors")) == sorted(
            [f"shard-{i:05d}.safetensors" for i in range(3)] * 2)
        for args in chunks(data, HOOKS, skip=300):
            w2.write(*args)
        manifest = w2.finalize()
        assert manifest["total_tokens"] == 1050

        ref = LocalStorage(tmp_path / "ref")
        wr = CacheWriter(ref, HOOKS, D_MODEL, torch.float32, TPS, IDENTITY)
        for args in chunks(data, HOOKS):
            wr.write(*args)
        wr.finalize()
        assert load_manifest(st)["shards"] == load_manifest(ref)["shards"]
        a = [b.by_hook for b in CacheReader(uri, HOOKS, batch_size=64, seed=1)]
        b = [b.by_hook for b in CacheReader(ref, HOOKS, batch_size=64, seed=1)]
        assert len(a) == len(b) == 16
        assert all(torch.equal(x[h], y[h]) for x, y in zip(a, b, strict=True) for h in HOOKS)
    finally:
        stop_moto_server(server)
