"""A minimal Kubernetes REST client: dicts in, dicts out, JSON merge patches.

Built on the official client's ApiClient (kubeconfig or in-cluster auth) but untyped, so
the operator sees objects exactly as the API server returns them. Calls run in a thread
so they never block kopf's event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

Obj = dict[str, Any]

PLURALS: dict[str, str] = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Event": "events",
    "Job": "jobs",
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
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


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
            if e.status == 404:
                return None
            raise ApiError(e.status or 0, str(e.body)) from None
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
        """POST an object; an existing one (409) is not an error: reconciles are idempotent."""
        try:
            return await self.request("POST", path, body)
        except ApiError as e:
            if e.status == 409:
                return None
            raise

    async def patch(self, path: str, body: Obj) -> Obj | None:
        """JSON merge patch."""
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def delete(self, path: str) -> None:
        """DELETE with background propagation (the GC removes pods after the Job)."""
        await self.request("DELETE", path, {"propagationPolicy": "Background"})
