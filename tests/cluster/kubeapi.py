"""A small async client of the API emulator for the pod runner: JSON in, JSON out, merge patches."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

Obj = dict[str, Any]
BASES = {"Job": ("/apis/batch/v1", "jobs"), "Pod": ("/api/v1", "pods"), "Secret": ("/api/v1", "secrets"),
         "ConfigMap": ("/api/v1", "configmaps"), "Service": ("/api/v1", "services")}


class KubeApi:
    """One namespace of the API server at `url`."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url, self.ns = url, namespace
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(self.url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def path(self, kind: str, name: str = "", sub: str = "") -> str:
        base, plural = BASES[kind]
        return f"{base}/namespaces/{self.ns}/{plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def call(self, method: str, path: str, body: Obj | None = None, merge: bool = False) -> Obj | None:
        """One request; None on 404, an exception on any other error."""
        assert self._session is not None, "open() first"
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        async with self._session.request(method, path, data=json.dumps(body) if body is not None else None,
                                         headers=headers) as resp:
            if resp.status == 404:
                return None
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:300]}")
            return json.loads(text) if text else {}

    async def get(self, kind: str, name: str) -> Obj | None:
        return await self.call("GET", self.path(kind, name))

    async def list(self, kind: str) -> list[Obj]:
        return ((await self.call("GET", self.path(kind))) or {}).get("items") or []

    async def create(self, kind: str, obj: Obj) -> Obj | None:
        return await self.call("POST", self.path(kind), obj)

    async def patch_status(self, kind: str, name: str, status: Obj) -> None:
        await self.call("PATCH", self.path(kind, name, "status"), {"status": status}, merge=True)

    async def delete(self, kind: str, name: str) -> None:
        await self.call("DELETE", self.path(kind, name))
