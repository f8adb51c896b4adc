"""`s3://bucket/prefix` storage (AWS S3, MinIO and other S3-compatible stores) through boto3.

Atomicity comes from S3 itself: a single PUT, or a multipart upload once completed, makes the
whole object visible at once. Throttling, 5xx and connection errors are retried with
exponential backoff by botocore's `standard` retry mode. Errors are translated into one-line
`StorageError`s that name the URI and the fix and never include credential values.
"""

from __future__ import annotations

import io
import os
from typing import Any

from saeops.runtime.storage.base import KeyNotFound, Storage, StorageError, normalize_key
from saeops.runtime.storage.buffers import BufferPool

__all__ = ["DEFAULT_MULTIPART_CHUNKSIZE", "DEFAULT_MULTIPART_THRESHOLD", "S3Storage"]

DEFAULT_MULTIPART_THRESHOLD = 64 << 20
DEFAULT_MULTIPART_CHUNKSIZE = 16 << 20
_CREDENTIALS_HINT = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or output.secretRef"
_AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidClientTokenId", "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _env_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _env_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


class S3Storage(Storage):
    """Objects under `s3://bucket/prefix`.

    `path_style=None` picks path-style addressing when a custom endpoint is configured (MinIO,
    moto, Ceph need it; virtual-hosted names rarely resolve there) and the SDK default otherwise.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE,
        max_concurrency: int = 8,
        client: Any = None,
        _shared: dict[str, Any] | None = None,
    ) -> None:
        if not bucket:
            raise StorageError("invalid S3 URI: the bucket name is empty (use s3://bucket/prefix)")
        self.bucket = bucket
        self.prefix = normalize_key(prefix, allow_empty=True)
        if _shared is not None:  # child(): reuse the client, config and state of the parent
            self._s = _shared
            return
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        endpoint_url = endpoint_url or _env_endpoint()
        region = region or _env_region() or "us-east-1"
        if path_style is None:
            path_style = endpoint_url is not None
        if client is None:
            config = Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max(10, 2 * max_concurrency),
                s3={"addressing_style": "path"} if path_style else None,
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        self._s = {
            "client": client,
            "endpoint": endpoint_url or client.meta.endpoint_url,
            "max_attempts": max_attempts,
            "threshold": multipart_threshold,
            "transfer": TransferConfig(
                multipart_threshold=multipart_threshold,
                multipart_chunksize=multipart_chunksize,
                max_concurrency=max_concurrency,
            ),
            "bucket_ok": False,
        }

    @property
    def client(self) -> Any:
        """The boto3 S3 client (thread-safe; shared with children)."""
        return self._s["client"]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        k = normalize_key(key)
        return f"{self.prefix}/{k}" if self.prefix else k

    def url(self, key: str) -> str:
        k = normalize_key(key, allow_empty=True)
        full = f"{self.prefix}/{k}".strip("/") if self.prefix else k
        return f"s3://{self.bucket}/{full}" if full else f"s3://{self.bucket}"

    def child(self, prefix: str) -> S3Storage:
        p = normalize_key(prefix, allow_empty=True)
        return S3Storage(self.bucket, f"{self.prefix}/{p}".strip("/"), _shared=self._s)

    # -- error translation ---------------------------------------------------------------

    def _error(self, e: BaseException, key: str | None, action: str) -> StorageError:
        """Translate a boto3/botocore exception into a one-line StorageError."""
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions as bx

        where = self.url(key) if key is not None else self.uri
        bucket_uri = f"s3://{self.bucket}"
        # upload_file/upload_fileobj wrap the ClientError; find it in the chain.
        cur: BaseException | None = e
        while isinstance(cur, S3UploadFailedError) and (cur.__cause__ or cur.__context__):
            cur = cur.__cause__ or cur.__context__
        e = cur or e
        if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
            return StorageError(f"{bucket_uri}: no S3 credentials found ({_CREDENTIALS_HINT})")
        if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError
                      | bx.ConnectionClosedError | bx.HTTPClientError):
            return StorageError(
                f"{where}: cannot reach the S3 endpoint {self._s['endpoint']} after "
                f"{self._s['max_attempts']} attempts ({type(e).__name__}); check AWS_ENDPOINT_URL/"
                "output.endpointUrl and that the object store is up"
            )
        if isinstance(e, bx.ParamValidationError):
            return StorageError(f"{where}: invalid S3 request ({str(e).splitlines()[0]}); check the storage URI")
        if isinstance(e, bx.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StorageError(f"{bucket_uri}: bucket does not exist (create it or fix the bucket in the storage URI)")
            if code in _AUTH_CODES or status == 403:
                # Deliberately no server message: some echo request details; never credentials.
                return StorageError(f"{bucket_uri}: access denied ({code or status}) while trying to "
                                    f"{action} {where} ({_CREDENTIALS_HINT})")
            if code in _NOT_FOUND_CODES or status == 404:
                return KeyNotFound(f"{where} does not exist")
            if code in {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError"} or (
                isinstance(status, int) and status >= 500
            ):
                return StorageError(f"{where}: S3 kept failing with {code or status} after "
                                    f"{self._s['max_attempts']} attempts while trying to {action}; retry later")
            msg = str(err.get("Message", "")).splitlines()[0] if err.get("Message") else ""
            return StorageError(f"{where}: S3 {action} failed: {code or status}{': ' + msg if msg else ''}")
        return StorageError(f"{where}: S3 {action} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    def _not_found(self, e: BaseException, key: str, action: str) -> StorageError:
        """A 404 on an object may mean the bucket is missing (HEAD responses carry no code)."""
        err = self._error(e, key, action)
        if isinstance(err, KeyNotFound) and not self._s["bucket_ok"]:
            self._check_bucket()
        return err

    def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageError(
                    f"s3://{self.bucket}: bucket does not exist (create it or fix the bucket in the storage URI)"
                ) from None
            raise self._error(e, None, "check bucket") from None
        except Exception as e:
            raise self._error(e, None, "check bucket") from None
        self._s["bucket_ok"] = True

    # -- writes --------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        k = self._key(key)
        try:
            if len(data) < self._s["threshold"]:
                self.client.put_object(Bucket=self.bucket, Key=k, Body=bytes(data))
            else:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, k, Config=self._s["transfer"])
        except Exception as e:
            raise self._error(e, key, "write") from None

    def put_file(self, key: str, local_path: str) -> None:
        if not os.path.isfile(local_path):
            raise StorageError(f"cannot read local file {local_path}: no such file")
        try:
            self.client.upload_file(local_path, self.bucket, self._key(key), Config=self._s["transfer"])
        except Exception as e:
            raise self._error(e, key, "write") from None

    # -- reads ---------------------------------------------------------------------------

    def _download(self, key: str) -> io.BytesIO:
        buf = io.BytesIO()
        try:
            # download_fileobj issues parallel ranged GETs for large objects.
            self.client.download_fileobj(self.bucket, self._key(key), buf, Config=self._s["transfer"])
        except Exception as e:
            raise self._not_found(e, key, "read") from None
        return buf

    def get_bytes(self, key: str) -> bytes:
        return self._download(key).getvalue()

    def get_buffer(self, key: str, pool: BufferPool | None = None) -> memoryview:
        # A writable view of the BytesIO's own buffer: no copy (the view keeps it alive).
        return self._download(key).getbuffer()

    def get_file(self, key: str, local_path: str) -> None:
        parent = os.path.dirname(os.path.abspath(local_path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create local directory {parent}: {e.strerror or e}") from None
        try:
            # s3transfer downloads to a temp name and renames, so the file appears whole.
            self.client.download_file(self.bucket, self._key(key), local_path, Config=self._s["transfer"])
        except Exception as e:
            raise self._not_found(e, key, "read") from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as e:
            err = self._not_found(e, key, "check")
            if isinstance(err, KeyNotFound):
                return False
            raise err from None

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        p = prefix.lstrip("/")
        full = f"{self.prefix}/{p}" if self.prefix else p
        cut = len(self.prefix) + 1 if self.prefix else 0
        out: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    out[obj["Key"][cut:]] = int(obj["Size"])
        except Exception as e:
            raise self._error(e, prefix or None, "list") from None
        return out

    # -- deletes -------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            raise self._error(e, key, "delete") from None

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            try:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as e:
                raise self._error(e, prefix or None, "delete") from None
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StorageError(f"s3://{self.bucket}/{first.get('Key')}: delete failed: {first.get('Code')} "
                                   f"({len(resp['Errors'])} keys not deleted)")
        return len(keys)
