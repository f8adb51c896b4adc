"""A minimal Kubernetes REST client: dicts in, dicts out, JSON merge patches.

Built on the official client's ApiClient (kubeconfig or in-cluster auth) but untyped, so
the operator sees objects exactly as the API server returns them. Calls run in a thread
so they never block kopf's event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from saeops.operator import opmetrics

Obj = dict[str, Any]

PLURALS: dict[str, str] = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Event": "events",
    "Job": "jobs",
    "NetworkPolicy": "networkpolicies",
    "SAETrainingRun": "saetrainingruns",
    "ActivationCache": "activationcaches",
    "SAESweep": "saesweeps",
}


def path_for(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    """REST path of a collection or object."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    path = f"{base}{ns}/{PLURALS[kind]}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def matches(obj: Obj, labels: dict[str, str]) -> bool:
    """Label match done client-side too (some API emulators ignore labelSelector)."""
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (None deletes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: Obj = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


class ApiError(Exception):
    """A non-2xx answer from the API server; `message` is the server's own (from its Status)."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.message = body[:2000]
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            self.message = doc["message"][:2000]
        super().__init__(f"HTTP {status}: {self.message[:300]}")

    @property
    def permanent(self) -> bool:
        """Retrying cannot fix it: a 4xx other than 409 (conflict) and 429 (too many requests)."""
        return 400 <= self.status < 500 and self.status not in (409, 429)


class Kube:
    """Async facade over `kubernetes.client.ApiClient.call_api` returning plain dicts."""

    def __init__(self, timeout: float = 30.0) -> None:
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        self._api = kubernetes.client.ApiClient()
        self._exc = kubernetes.client.exceptions.ApiException
        self._timeout = timeout

    def _call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> Obj | None:
        try:
            resp = self._api.call_api(
                path, method, query_params=query or [], body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=self._timeout,
            )
        except self._exc as e:
            if e.status == 404 and method in ("GET", "DELETE"):
                return None  # absent, or already gone
            opmetrics.API_ERRORS.labels(_resource(path), method, str(e.status or 0)).inc()
            raise ApiError(e.status or 0, str(e.body)) from None
        except Exception:
            opmetrics.API_ERRORS.labels(_resource(path), method, "unreachable").inc()
            raise
        data = resp.data
        return json.loads(data) if data else {}

    async def request(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
                      content_type: str = "application/json") -> Obj | None:
        """One API call; None on 404."""
        return await asyncio.to_thread(self._call, method, path, body, query, content_type)

    async def get(self, path: str) -> Obj | None:
        """GET an object (None when absent)."""
        return await self.request("GET", path)

    async def list(self, path: str, labels: dict[str, str]) -> list[Obj]:
        """List objects by label selector."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        out = await self.request("GET", path, query=[("labelSelector", selector)])
        return [o for o in (out or {}).get("items") or [] if matches(o, labels)]

    async def create(self, path: str, body: Obj) -> Obj | None:
        """POST an object. A 409 is raised like any error: an object of that name exists, and
        the caller must find out whose it is before treating it as its own."""
        return await self.request("POST", path, body)

    async def patch(self, path: str, body: Obj) -> Obj | None:
        """JSON merge patch."""
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def delete(self, path: str, uid: str | None = None) -> None:
        """DELETE with background propagation (the GC removes pods after the Job). With `uid`,
        only that very object: a namesake created since it was read answers 409 and stays."""
        body: Obj = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, body)
        except ApiError as e:
            if not (uid and e.status == 409):
                raise


def _resource(path: str) -> str:
    """The resource (plural, with a subresource) a REST path names, for metric labels."""
    parts = [p for p in path.split("/") if p]
    if "namespaces" in parts[:-1]:
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[2:] if parts and parts[0] == "api" else parts[3:]
    if not parts:
        return "unknown"
    return parts[0] if len(parts) < 3 else f"{parts[0]}/{parts[2]}"
