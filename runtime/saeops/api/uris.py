"""Storage URIs: the one parser used by validation, the runtime's storage layer and the operator.

Accepted forms:

- `s3://BUCKET/KEY/PREFIX` (the key may be empty: the bucket's root);
- `file:///absolute/dir` (or `file://localhost/absolute/dir`);
- a plain local path, absolute (`/data/run`) or, where the caller allows it (`saeops run` on
  this machine), relative (`runs/quickstart`).

Refused, each with a message naming the fix: `file:relative` and `file://host/...`, `~`
expansion, `..` and `.` segments, empty segments (`a//b`), an `s3://` URI without a valid
bucket name, any other scheme. A parsed URI prints in one canonical form, so two spellings of
one location compare equal and prefix checks (`is_within`) cannot be fooled by `a/../b`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlparse

# S3 bucket naming rules (the common subset every S3-compatible store accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_FORMS = "use s3://bucket/prefix, file:///absolute/dir or a local path"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The same rules as a regular expression (RE2 and Rust syntax, no look-around) for the CRDs, so
# `kubectl apply` refuses `..`, `.` and empty segments early. It accepts a superset of what
# `parse_storage_uri` accepts (bucket details, `~`, schemes; the models check the rest).
_SEG = r"([^/.\\\x00-\x1f\x7f]|\.[^/.\\\x00-\x1f\x7f]|\.\.[^/\\\x00-\x1f\x7f])[^/\\\x00-\x1f\x7f]*"
_SEGS = rf"{_SEG}(/{_SEG})*"
STORAGE_URI_PATTERN = (
    rf"^(s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/{_SEGS})?/?|file://(localhost)?/({_SEGS}/?)?"
    rf"|/({_SEGS}/?)?|(\./)*{_SEGS}/?)$"
)
ENDPOINT_URL_PATTERN = r"^https?://[^/?#@\s]+([/?#].*)?$"


class URIError(ValueError):
    """A storage URI that no backend would accept, or that is unsafe (message names the fix)."""


@dataclass(frozen=True)
class StorageURI:
    """A parsed storage location. `path` is the S3 key prefix (no leading or trailing slash,
    may be empty) or the local directory (absolute unless `relative`)."""

    scheme: Literal["s3", "file"]
    bucket: str
    path: str
    relative: bool = False

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return self.path if self.relative else f"file://{self.path}"

    def child(self, key: str) -> StorageURI:
        """The location `key` below this one (`key` is checked like any path)."""
        parts = _segments(key, str(self), allow_empty=False)
        base = self.path.rstrip("/")
        joined = "/".join([base, *parts]) if base else "/".join(parts)
        if self.scheme == "file" and not self.relative and not joined.startswith("/"):
            joined = "/" + joined
        return StorageURI(self.scheme, self.bucket, joined, self.relative)

    def is_within(self, prefix: StorageURI) -> bool:
        """Whether this location is `prefix` or below it (whole segments: `s3://b/ab` is not
        within `s3://b/a`)."""
        if (self.scheme, self.bucket, self.relative) != (prefix.scheme, prefix.bucket, prefix.relative):
            return False
        if not prefix.path or prefix.path == "/":
            return True
        return self.path == prefix.path or self.path.startswith(prefix.path.rstrip("/") + "/")


def _segments(path: str, uri: str, *, allow_empty: bool) -> list[str]:
    if "//" in path:
        raise URIError(f"{uri!r}: empty segment (//) in the path; write the normalised location")
    parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
    for p in parts:
        if p in ("", ".", ".."):
            what = "empty segment (//)" if p == "" else f"{p!r} segment"
            raise URIError(f"{uri!r}: {what} in the path; write the normalised location")
    if not parts and not allow_empty:
        raise URIError(f"{uri!r}: the path is empty; {_FORMS}")
    return parts


def parse_storage_uri(uri: str, *, allow_relative: bool = True) -> StorageURI:
    """Parse and normalise `uri`; raise `URIError` naming the problem and the fix.

    `allow_relative=False` is for locations a cluster pod writes: a relative path would land in
    the image's working directory (read-only, and gone with the pod)."""
    if not isinstance(uri, str) or not uri.strip():
        raise URIError(f"empty storage URI; {_FORMS}")
    if uri != uri.strip() or _CONTROL.search(uri) or "\\" in uri:
        raise URIError(f"{uri!r}: leading or trailing whitespace, control characters and backslashes are "
                       "not allowed")
    if uri.startswith("s3://"):
        if "//" in uri[len("s3://"):]:
            raise URIError(f"{uri!r}: empty segment (//) in the path; write the normalised location")
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket:
            raise URIError(f"{uri!r}: no bucket; use s3://BUCKET/prefix")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise URIError(f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
        return StorageURI("s3", bucket, "/".join(_segments(key, uri, allow_empty=True)))
    if uri.startswith("file:"):
        if not uri.startswith("file://"):
            raise URIError(f"{uri!r}: file URIs are absolute: file:///absolute/dir (three slashes)")
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise URIError(f"{uri!r}: file URIs name this machine: file:///absolute/dir (three slashes)")
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise URIError(f"{uri!r}: the path must be absolute (file:///absolute/dir)")
        return StorageURI("file", "", "/" + "/".join(_segments(path, uri, allow_empty=True)))
    if "://" in uri or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        scheme = uri.split(":", 1)[0]
        raise URIError(f"{uri!r}: unsupported scheme {scheme!r}; {_FORMS}")
    if uri.startswith("~"):
        raise URIError(f"{uri!r}: '~' is not expanded; write the absolute path")
    if uri.startswith("/"):
        return StorageURI("file", "", "/" + "/".join(_segments(uri, uri, allow_empty=True)))
    if not allow_relative:
        raise URIError(f"{uri!r} is a relative path, which a pod cannot use; use s3://bucket/prefix "
                       "or the absolute path of a mounted volume")
    # `./runs/x` is how shells spell `runs/x`; only a leading `./` is dropped, never `a/./b`.
    rel = uri
    while rel.startswith("./"):
        rel = rel[2:]
    if rel.startswith("/"):
        raise URIError(f"{uri!r}: empty segment (//) in the path; write the normalised location")
    return StorageURI("file", "", "/".join(_segments(rel, uri, allow_empty=False)), relative=True)


def check_endpoint_url(url: str) -> str:
    """An S3 endpoint must be an http(s) URL with a host (no path tricks, no credentials)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise URIError(f"{url!r}: the endpoint must be an http:// or https:// URL with a host")
    if parsed.username or parsed.password:
        raise URIError(f"{url!r}: put credentials in a Secret (secretRef), not in the endpoint URL")
    return url


__all__ = ["ENDPOINT_URL_PATTERN", "STORAGE_URI_PATTERN", "StorageURI", "URIError", "check_endpoint_url",
           "parse_storage_uri"]
