"""Storage backends against the real local filesystem and a real (moto) S3 server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from saeops.runtime.storage import KeyNotFound, LocalStorage, S3Storage, Storage, StorageError, open_storage
from tests.fixtures_s3 import DUMMY_ENV, create_bucket, start_moto_server, stop_moto_server


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return open_storage(f"file://{tmp_path}/root")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"{bucket}/some/prefix")


def test_round_trips(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("a/b/data.bin", b"\x00\x01hello")
    assert storage.get_bytes("a/b/data.bin") == b"\x00\x01hello"
    assert storage.exists("a/b/data.bin")
    assert not storage.exists("a/b/other.bin")
    storage.put_json("config.json", {"x": [1, 2], "y": "z"})
    assert storage.get_json("config.json") == {"x": [1, 2], "y": "z"}

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    storage.put_file("files/src.bin", str(src))
    dst = tmp_path / "out" / "dst.bin"
    storage.get_file("files/src.bin", str(dst))
    assert dst.read_bytes() == src.read_bytes()

    storage.delete("a/b/data.bin")
    storage.delete("a/b/data.bin")  # deleting a missing key is fine
    assert not storage.exists("a/b/data.bin")


def test_urls_and_children(storage: Storage) -> None:
    child = storage.child("runs/r1")
    child.put_bytes("x.txt", b"1")
    assert storage.get_bytes("runs/r1/x.txt") == b"1"
    assert child.uri == storage.uri + "/runs/r1"
    assert child.url("x.txt") == storage.url("runs/r1/x.txt")
    assert storage.url("runs/r1/x.txt").endswith("/some/prefix/runs/r1/x.txt" if isinstance(storage, S3Storage)
                                                  else "/root/runs/r1/x.txt")
    assert child.child("deeper").uri == storage.uri + "/runs/r1/deeper"


def test_list_with_prefixes(storage: Storage) -> None:
    for k in ["a/1", "a/2", "ab/3", "b/c/4", "top"]:
        storage.put_bytes(k, k.encode())
    assert storage.list() == ["a/1", "a/2", "ab/3", "b/c/4", "top"]
    assert storage.list("a/") == ["a/1", "a/2"]
    assert storage.list("a") == ["a/1", "a/2", "ab/3"]  # a string prefix, like S3
    assert storage.list("b/c") == ["b/c/4"]
    assert storage.list("nothing/") == []
    assert storage.list_sizes("b/") == {"b/c/4": 5}
    assert storage.child("a").list() == ["1", "2"]
    assert storage.delete_prefix("a/") == 2
    assert storage.list() == ["ab/3", "b/c/4", "top"]


def test_missing_key(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(KeyNotFound, match=r"missing\.json does not exist"):
        storage.get_bytes("dir/missing.json")
    with pytest.raises(KeyNotFound, match="does not exist"):
        storage.get_file("dir/missing.json", str(tmp_path / "x"))


def test_invalid_keys(storage: Storage) -> None:
    for bad in ["", "/", "a/../b", "a//b", "./a"]:
        with pytest.raises(StorageError, match="invalid storage key"):
            storage.put_bytes(bad, b"x")


def test_check_writable(storage: Storage) -> None:
    storage.check_writable()
    assert storage.list() == []  # the probe cleans up after itself


def test_put_replaces_whole_object(storage: Storage) -> None:
    storage.put_bytes("obj", b"old" * 10)
    storage.put_bytes("obj", b"new")
    assert storage.get_bytes("obj") == b"new"
    assert storage.list() == ["obj"]


# -- local filesystem specifics -----------------------------------------------------------


def test_local_failed_put_keeps_old_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put that fails before the rename leaves the old object intact and no temp files behind."""
    st = LocalStorage(tmp_path)
    st.put_bytes("k/obj", b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError, match="not writable"):
        st.put_bytes("k/obj", b"new")
    monkeypatch.undo()
    assert st.get_bytes("k/obj") == b"old"
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["obj"]


def test_local_put_never_exposes_partial_file(tmp_path: Path) -> None:
    """While a put is being written, the key still shows the old object and listing hides the temp file."""
    st = LocalStorage(tmp_path)
    st.put_bytes("obj", b"old")
    seen: list[tuple[bytes, list[str]]] = []

    def write(f) -> None:
        f.write(b"half")
        f.flush()
        seen.append((st.get_bytes("obj"), st.list()))
        f.write(b"-done")

    st._commit("obj", write)
    assert seen == [(b"old", ["obj"])]
    assert st.get_bytes("obj") == b"half-done"


def test_local_not_writable(tmp_path: Path) -> None:
    """Below a regular file nothing can be created (works as root, unlike chmod)."""
    (tmp_path / "afile").write_text("x")
    st = open_storage(str(tmp_path / "afile" / "out"))
    with pytest.raises(StorageError) as e:
        st.check_writable()
    msg = str(e.value)
    assert msg.startswith(f"output location file://{tmp_path}/afile/out is not writable: ")
    assert "\n" not in msg
    with pytest.raises(StorageError, match="is not writable"):
        st.put_json("x.json", {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_local_not_writable_permissions(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        with pytest.raises(StorageError, match="Permission denied"):
            LocalStorage(d).check_writable()
    finally:
        d.chmod(0o755)


def test_open_storage_uris(tmp_path: Path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert open_storage(f"file://{tmp_path}").uri == f"file://{tmp_path}"
    assert open_storage(f"file://localhost{tmp_path}").uri == f"file://{tmp_path}"
    with pytest.raises(StorageError, match="unsupported scheme 'gs'"):
        open_storage("gs://bucket/x")
    with pytest.raises(StorageError, match="three slashes"):
        open_storage("file://relative/path")
    with pytest.raises(StorageError, match="no bucket"):
        open_storage("s3:///prefix")
    assert open_storage("./rel/dir").uri == (Path.cwd() / "rel" / "dir").as_uri()  # nothing created


@pytest.mark.parametrize("uri", ["file:relative", "~/x", "~root/x", "../../x", "a/../b", "s3://", "s3:///p",
                                 "s3://b/a/../b", "s3://bkt/a//b", "/data/./x", "file:///a/../b"])
def test_open_storage_refuses_what_validate_refuses(uri: str) -> None:
    """The runtime opens exactly what the spec accepts: one parser (saeops.api.uris)."""
    from saeops.api.uris import URIError, parse_storage_uri

    with pytest.raises(URIError):
        parse_storage_uri(uri)
    with pytest.raises(StorageError):
        open_storage(uri)


@pytest.mark.parametrize("endpoint", ["file://", "ftp://h", "https://user:pw@h", "h:9000"])
def test_open_storage_refuses_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(StorageError, match="endpoint"):
        open_storage("s3://bkt/x", endpoint_url=endpoint)
    s3 = open_storage("s3://bkt/a/b/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.uri) == ("bkt", "a/b", "s3://bkt/a/b")


# -- S3 specifics ----------------------------------------------------------------------------


def test_s3_environment_configuration(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoint and region come from AWS_ENDPOINT_URL_S3 / AWS_REGION; a custom endpoint means path style."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    st = open_storage(f"{s3_bucket}/p")
    assert isinstance(st, S3Storage)
    assert st.client.meta.endpoint_url == endpoint
    assert st.client.meta.region_name == "eu-west-3"
    assert st.client.meta.config.s3 == {"addressing_style": "path"}
    st.put_bytes("k", b"v")
    assert st.get_bytes("k") == b"v"


def test_s3_multipart_forced(s3_bucket: str, tmp_path: Path) -> None:
    """Small thresholds force multipart uploads (S3's minimum part is 5 MiB); ETag '-N' proves it."""
    st = open_storage(f"{s3_bucket}/mp", multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    assert isinstance(st, S3Storage)
    data = os.urandom(12 << 20)
    st.put_bytes("big.bin", data)
    etag = st.client.head_object(Bucket=st.bucket, Key="mp/big.bin")["ETag"].strip('"')
    assert etag.endswith("-3")
    assert st.get_bytes("big.bin") == data
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    st.put_file("big2.bin", str(src))
    assert st.client.head_object(Bucket=st.bucket, Key="mp/big2.bin")["ETag"].strip('"').endswith("-3")
    st.get_file("big2.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data


def test_s3_failed_multipart_upload_is_invisible(s3_bucket: str) -> None:
    """A multipart upload that dies after its first part never shows up; the old object stays."""
    st = open_storage(f"{s3_bucket}/mp", multipart_threshold=5 << 20, multipart_chunksize=5 << 20,
                      max_attempts=1, max_concurrency=1)
    assert isinstance(st, S3Storage)
    st.put_bytes("obj", b"old")
    calls = {"n": 0}

    def fail_second_part(params, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("connection lost in the middle of the upload")

    st.client.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    try:
        with pytest.raises(StorageError):
            st.put_bytes("obj", os.urandom(12 << 20))
    finally:
        st.client.meta.events.unregister("before-call.s3.UploadPart", fail_second_part)
    assert st.get_bytes("obj") == b"old"
    assert st.client.list_multipart_uploads(Bucket=st.bucket).get("Uploads", []) == []  # aborted


def test_s3_missing_bucket(s3_server: str) -> None:
    st = open_storage("s3://no-such-bucket-here/x", endpoint_url=s3_server)
    for call in (lambda: st.put_bytes("k", b"v"), lambda: st.get_bytes("k"), lambda: st.list(),
                 lambda: st.exists("k"), st.check_writable):
        with pytest.raises(StorageError, match=r"^s3://no-such-bucket-here: bucket does not exist \(create it"):
            call()


def test_s3_access_denied_message(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong credentials: moto accepts any key by default, so the server's AccessDenied is injected
    with botocore's Stubber (the exact error a real S3/MinIO returns); the message names the fix
    and never the secret."""
    from botocore.stub import Stubber

    secret = "SUPER-SECRET-VALUE-123"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    st = open_storage(f"{s3_bucket}/p")
    assert isinstance(st, S3Storage)
    with Stubber(st.client) as stub:
        stub.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403,
                              service_message=f"denied for {secret}")
        stub.add_client_error("list_objects_v2", service_error_code="InvalidAccessKeyId", http_status_code=403)
        with pytest.raises(StorageError) as e:
            st.check_writable()
        with pytest.raises(StorageError) as e2:
            st.list()
    bucket = s3_bucket.removeprefix("s3://")
    for err in (e.value, e2.value):
        msg = str(err)
        assert msg.startswith(f"s3://{bucket}: access denied (")
        assert "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or output.secretRef" in msg
        assert secret not in msg
        assert "\n" not in msg


def test_s3_no_credentials(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    st = open_storage("s3://whatever/p", endpoint_url=s3_server)
    with pytest.raises(StorageError, match=r"^s3://whatever: no S3 credentials found \(check AWS_ACCESS_KEY_ID"):
        st.get_bytes("k")


def test_s3_server_down_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped server (socket closed: connection refused) gives one clear line after bounded retries."""
    for k, v in DUMMY_ENV.items():
        monkeypatch.setenv(k, v)
    server, endpoint = start_moto_server()
    bucket = create_bucket(endpoint)
    st = open_storage(f"s3://{bucket}/p", endpoint_url=endpoint, max_attempts=3, connect_timeout=1, read_timeout=2)
    st.put_bytes("k", b"v")
    stop_moto_server(server)
    t0 = time.monotonic()
    for call in (lambda: st.put_bytes("k", b"w"), lambda: st.get_bytes("k"), st.list, st.check_writable):
        with pytest.raises(StorageError) as e:
            call()
        msg = str(e.value)
        assert f"cannot reach the S3 endpoint {endpoint} after 3 attempts" in msg, msg
        assert "\n" not in msg
    assert time.monotonic() - t0 < 20


def test_buffer_pool_reuses_only_idle_buffers() -> None:
    import torch

    from saeops.runtime.storage import BufferPool

    pool = BufferPool(max_buffers=2)
    a, b = pool.take(100), pool.take(100)
    first, second = id(a.base), id(b.base)
    assert first != second and len(pool) == 2
    del a
    c = pool.take(48)  # smaller requests reuse a larger idle buffer
    assert id(c.base) == first and c.nbytes == 48
    view = torch.from_numpy(c).view(torch.float32)[2:5]  # a tensor view keeps it busy
    del c
    d = pool.take(60)
    assert id(d.base) not in (first, second) and len(pool) == 2  # pool full: a plain allocation
    del view
    mv = memoryview(pool.take(60))  # so does a memoryview
    assert id(pool.take(60).base) != id(mv.obj.base)
    assert pool.take(101).nbytes == 101  # larger than every pooled buffer: a new one
