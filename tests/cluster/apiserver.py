"""The API server the scenarios run against: kmock's KubernetesEmulator on 127.0.0.1, plus the
metadata a real API server maintains and the Table view kubectl asks for, and the real operator
process (`python -m saeops.operator`) watching it.

Differences from a real API server that matter here (see also tests/operator/test_process.py):
plain JSON merge patches; `labelSelector` ignored when listing (the operator and the pod runner
filter labels themselves); no garbage collector (the pod runner removes the pods of deleted
Jobs); NetworkPolicies are stored, not enforced (all pods share the host's loopback);
`/api/v1/namespaces` cannot be listed, so the operator runs with `--no-scanning`.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml

# The resources served, and free ports, as in the operator's process tests.
from tests.operator.emulator import CLUSTER_SCOPED, RES, free_port

ROOT = Path(__file__).resolve().parents[2]
NS = "default"
GROUP_VERSION = "saeops.io/v1alpha1"
_versions = itertools.count(1)


def printer_columns() -> dict[str, list[dict[str, Any]]]:
    """additionalPrinterColumns of each CRD in crds/, by plural."""
    out = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            out[crd["spec"]["names"]["plural"]] = version.get("additionalPrinterColumns") or []
    return out


def _json_path(obj: Any, path: str) -> Any:
    for part in path.strip(".").split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def table(objs: list[dict[str, Any]], columns: list[dict[str, Any]]) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table, as the API server renders a CRD's printer columns."""
    defs = [{"name": "Name", "type": "string", "format": "name", "priority": 0, "description": "Name"}]
    defs += [{"name": c["name"], "type": c["type"], "format": "", "priority": c.get("priority", 0),
              "description": c.get("description", "")} for c in columns]
    rows = []
    for obj in objs:
        cells: list[Any] = [obj["metadata"]["name"]]
        cells += [_json_path(obj, c["jsonPath"]) for c in columns]
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": obj["metadata"]}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
            "columnDefinitions": defs, "rows": rows}


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus uid/resourceVersion/generation/creationTimestamp on writes, and
    the Table view of custom resources (kubectl's `get` asks for it)."""

    async def _handle(self, request: Any) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta["resourceVersion"] = str(next(_versions))
            elif request.action == kmock.action.UPDATE:
                meta["resourceVersion"] = str(next(_versions))
                if "spec" in data and request.subresource is None:
                    current = self.objects[request.resource, request.namespace, request.name]
                    meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
        accept = (request.headers or {}).get("Accept", "")
        if (request.resource is not None and "as=Table" in accept and request.resource.group == "saeops.io"
                and request.action in (kmock.action.LIST, kmock.action.FETCH)):
            objs = [dict(o.raw) for (r, ns, name), o in self.objects.items()
                    if r == request.resource and not o.deleted and (request.namespace in (None, ns))
                    and request.name in (None, name)]
            return aiohttp.web.json_response(table(objs, printer_columns()[request.resource.plural]))
        return await super()._handle(request)


@dataclass
class ApiServer:
    emu: Emulator
    url: str
    kubeconfig: Path

    def get(self, resource: str, name: str, ns: str = NS) -> dict[str, Any] | None:
        """An object as the emulator holds it now (resource: "saeops.io/v1alpha1/saetrainingruns")."""
        for (r, rns, rname), obj in self.emu.objects.items():
            if _key(r) == resource and rns == ns and rname == name and not obj.deleted:
                return json.loads(json.dumps(dict(obj.raw)))
        return None

    def all(self, resource: str) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(dict(o.raw))) for (r, _, _), o in self.emu.objects.items()
                if _key(r) == resource and not o.deleted]

    def history(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every version of every object ever stored: (resource, name, version)."""
        return [(_key(r), name, dict(v.raw)) for (r, _, name), o in self.emu.objects.items()
                for v in o.history if v is not None]


def _key(r: Any) -> str:
    group = getattr(r, "group", "")
    return f"{group + '/' if group else ''}{r.version}/{r.plural}"


@asynccontextmanager
async def api_server(tmp: Path) -> AsyncIterator[ApiServer]:
    async with Emulator() as emu, kmock.Server(emu) as server:
        for key, (kind, subs) in RES.items():
            emu.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=key not in CLUSTER_SCOPED, subresources=subs,
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
        url = f"http://127.0.0.1:{server.port}"
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "u", "namespace": NS}}],
        }))
        yield ApiServer(emu, url, kubeconfig)


@asynccontextmanager
async def operator_process(kubeconfig: Path, log: Path, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """The real operator, on loopback only (its /metrics off; kopf's liveness on 127.0.0.1)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, **env, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": path}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "saeops.operator", "--namespace", NS, "--interval", "1", "--no-scanning",
            "--metrics-port", "0", "--liveness", f"http://127.0.0.1:{free_port()}/healthz", "--verbose",
            env=full_env, stdout=out, stderr=asyncio.subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
