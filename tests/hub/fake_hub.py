"""A small Hugging Face Hub on loopback: the HTTP endpoints `huggingface_hub` and `datasets` call
to fetch a model snapshot and to stream a dataset repo's files.

    hub = FakeHub().start()                       # http://127.0.0.1:PORT
    sha = hub.add_repo("org/tiny-gpt2", files)    # {path in repo: bytes}; returns the commit
    os.environ["HF_ENDPOINT"] = hub.url

Served (the subset of the real API those libraries use, read from their installed sources):

- `GET /api/{models,datasets}/REPO[/revision/REV]`: repo info (`sha`, `siblings`);
- `GET /api/{type}s/REPO/tree/REV[/PATH][?recursive=1]`: the file listing;
- `POST /api/{type}s/REPO/paths-info/REV`: metadata of named paths;
- `HEAD|GET [/datasets]/REPO/resolve/REV/PATH`: file contents, with `Range` support (streaming);
- errors as the Hub sends them: `X-Error-Code` RepoNotFound / RevisionNotFound / EntryNotFound /
  GatedRepo, and 401 "Invalid credentials in Authorization header" for a wrong token.

A repo added with `token=` answers only requests that carry `Authorization: Bearer TOKEN`
(a gated one answers 403 GatedRepo without it).
Every request is logged in `hub.requests` as (method, path), so tests can assert what was
fetched (nothing, on a cache hit).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?$")
_RESOLVE = re.compile(r"^(?:/(datasets))?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file (what the Hub reports as a file's `oid`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One repo: commits (sha -> files) and refs (branch or tag -> sha)."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    gated: bool = False

    def commit_of(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class FakeHub:
    """The server; `add_repo` may be called while it runs."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- content -----------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model",
                 revision: str = "main", token: str | None = None, gated: bool = False) -> str:
        """Add (or add a commit to) a repo; `revision` names the branch that points at it."""
        digest = hashlib.sha1(json.dumps(sorted((p, git_blob_sha(b)) for p, b in files.items())).encode())
        sha = digest.hexdigest()
        with self._lock:
            repo = self.repos.setdefault((repo_type, repo_id), Repo())
            repo.commits[sha] = dict(files)
            repo.refs[revision] = sha
            repo.token, repo.gated = token, gated
        return sha

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def downloads(self) -> list[str]:
        """Paths of the file bodies served so far (GET .../resolve/...)."""
        return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read hub.requests
        pass

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              *, head: bool = False, length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str | None, message: str, *, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _repo(self, repo_type: str, repo_id: str, *, head: bool = False) -> Repo | None:
        """The repo if this request may read it; otherwise the Hub's error is sent and None returned."""
        repo = self.hub.repos.get((repo_type, repo_id))
        auth = self.headers.get("Authorization", "")
        sent = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        if repo is not None and repo.token is not None and sent is not None and sent != repo.token:
            self._error(401, None, "Invalid credentials in Authorization header", head=head)
            return None
        if repo is not None and repo.gated and sent != repo.token:
            self._error(403, "GatedRepo", "Access to this repo is restricted", head=head)
            return None
        if repo is None or (repo.token is not None and sent is None):
            self._error(401, "RepoNotFound", "Repository not found", head=head)
            return None
        return repo

    def _commit(self, repo: Repo, revision: str, *, head: bool = False) -> str | None:
        sha = repo.commit_of(unquote(revision))
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}", head=head)
        return sha

    # ---- listings ----------------------------------------------------------------------------
    @staticmethod
    def _entries(files: dict[str, bytes], under: str, recursive: bool) -> list[dict[str, Any]]:
        under = under.strip("/")
        prefix = f"{under}/" if under else ""
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                d = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    out.setdefault(d, {"type": "directory", "oid": git_blob_sha(d.encode()), "size": 0, "path": d})
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                data = files[path]
                out[path] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
        return list(out.values())

    @staticmethod
    def _info(repo_id: str, sha: str, files: dict[str, bytes]) -> dict[str, Any]:
        return {
            "id": repo_id, "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "sha": sha,
            "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "cardData": {}, "siblings": [{"rfilename": p, "size": len(b)} for p, b in sorted(files.items())],
        }

    def _api(self, method: str) -> bool:
        url = urlparse(self.path)
        m = _API.match(url.path)
        if m is None:
            return False
        kind, repo_id, what, revision, rest = m.groups()
        repo = self._repo(kind[:-1], repo_id)
        if repo is None:
            return True
        sha = self._commit(repo, revision or "main")
        if sha is None:
            return True
        files = repo.commits[sha]
        if what in (None, "revision") and method == "GET":
            self._json(self._info(repo_id, sha, files))
        elif what == "tree" and method == "GET":
            recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() in ("1", "true")
            under = unquote(rest or "")
            if under.strip("/") and not any(p.startswith(under.strip("/") + "/") for p in files):
                self._error(404, "EntryNotFound", f"{under} does not exist on {revision}")
            else:
                self._json(self._entries(files, under, recursive))
        elif what == "paths-info" and method == "POST":
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n).decode() if n else ""
            if self.headers.get("Content-Type", "").startswith("application/json"):
                paths = json.loads(raw or "{}").get("paths", [])
            else:
                paths = parse_qs(raw).get("paths", [])
            entries = {e["path"]: e for e in self._entries(files, "", True)}
            self._json([entries[p.strip("/")] for p in paths if p.strip("/") in entries])
        else:
            self._error(404, None, f"not served by the fake hub: {method} {url.path}")
        return True

    # ---- files -------------------------------------------------------------------------------
    def _resolve(self, head: bool) -> bool:
        url = urlparse(self.path)
        m = _RESOLVE.match(url.path)
        if m is None:
            return False
        kind, repo_id, revision, path = m.groups()
        repo = self._repo("dataset" if kind else "model", repo_id, head=head)
        if repo is None:
            return True
        sha = self._commit(repo, revision, head=head)
        if sha is None:
            return True
        data = repo.commits[sha].get(unquote(path))
        if data is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", head=head)
            return True
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha(data)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = min(int(end_s), len(data) - 1) if end_s and start_s else len(data) - 1
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return True
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, data[start:end + 1], headers)
            return True
        self._send(200, data, headers, head=head, length=len(data))
        return True

    # ---- verbs -------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        with self.hub._lock:
            self.hub.requests.append((method, self.path))
        head = method == "HEAD"
        if not (self._api(method) or self._resolve(head)):
            self._error(404, None, f"not served by the fake hub: {method} {self.path}", head=head)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")
