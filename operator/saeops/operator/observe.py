"""Read what a reconcile needs from the cluster (and the run's pods and artifacts)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from saeops.api import names
from saeops.operator import jobs
from saeops.operator.kube import Kube, path_for
from saeops.operator.progress import parse_prometheus
from saeops.operator.render import selector_labels
from saeops.operator.state import Observed, ObservedSweep

Obj = dict[str, Any]
SCRAPE_TIMEOUT = 2.0
log = logging.getLogger("saeops.operator")


async def scrape(pod: Obj, port: int) -> dict[str, float] | None:
    """GET http://<pod-ip>:<port>/metrics and parse it; None when unreachable."""
    import aiohttp

    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    url = f"http://{ip}:{port}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                return None
            return parse_prometheus(await resp.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        log.debug("scrape %s failed: %s", url, type(e).__name__)
        return None


def _read_summary(uri: str) -> dict[str, Any] | None:
    # Lazy and forgiving: the storage layer is optional for the operator (no torch, no boto3
    # needed for file:// URIs) and any error just means "no final metrics yet".
    try:
        from saeops.runtime.storage import open_storage  # type: ignore[attr-defined]

        doc = open_storage(uri).get_json("metrics.json")
    except Exception as e:
        log.debug("metrics.json at %s not readable: %s", uri, type(e).__name__)
        return None
    final = doc.get("final") if isinstance(doc, dict) else None
    return final if isinstance(final, dict) else None


def _read_checkpoint(uri: str) -> str | None:
    """URI of the latest checkpoint the runtime recorded (`checkpoints/latest.json`), if any."""
    try:
        from saeops.runtime.storage import open_storage  # type: ignore[attr-defined]

        storage = open_storage(uri).child("checkpoints")
        key = storage.get_json("latest.json").get("key")
    except Exception as e:
        log.debug("no checkpoint pointer at %s: %s", uri, type(e).__name__)
        return None
    return storage.url(key) if isinstance(key, str) else None


def _metrics_port(res: Obj) -> int:
    metrics = ((res.get("spec") or {}).get("metrics")) or {}
    port = metrics.get("port")
    return port if isinstance(port, int) and 0 < port < 65536 else 9400


async def observe_run(kube: Kube, res: Obj) -> Observed:
    """Children, pods, referenced cache, scraped metrics and summary of a run or cache."""
    meta = res["metadata"]
    ns, name, kind = meta.get("namespace"), meta["name"], res["kind"]
    cm, svc, job = await asyncio.gather(
        kube.get(path_for("v1", "ConfigMap", ns, names.configmap_name(name))),
        kube.get(path_for("v1", "Service", ns, names.service_name(name))),
        kube.get(path_for("batch/v1", "Job", ns, names.job_name(name))),
    )
    pods: list[Obj] = []
    if job is not None:
        pods = await kube.list(path_for("v1", "Pod", ns), selector_labels(kind, name))
    cache = None
    ref = ((res.get("spec") or {}).get("activations") or {}).get("cacheRef")
    if kind == "SAETrainingRun" and isinstance(ref, str) and ref:
        cache = await kube.get(path_for(names.API, "ActivationCache", ns, ref))
    metrics = None
    summary = None
    checkpoint = None
    status = res.get("status") or {}
    terminal = status.get("phase") in ("Succeeded", "Failed")
    if job is not None and not terminal:
        rank0 = jobs.rank0_pod(tuple(pods))
        if rank0 is not None:
            metrics = await scrape(rank0, _metrics_port(res))
        uri = ((res.get("spec") or {}).get("output") or {}).get("storageUri")
        if kind == "SAETrainingRun" and isinstance(uri, str):
            checkpoint = await asyncio.to_thread(_read_checkpoint, uri)
            if jobs.job_succeeded(job):
                summary = await asyncio.to_thread(_read_summary, uri)
    return Observed(resource=res, job=job, pods=tuple(pods), configmap=cm, service=svc, cache=cache,
                    metrics=metrics, summary=summary, checkpoint=checkpoint)


async def observe_sweep(kube: Kube, res: Obj) -> ObservedSweep:
    """A sweep and its trials (by label)."""
    meta = res["metadata"]
    trials = await kube.list(
        path_for(names.API, "SAETrainingRun", meta.get("namespace")), {names.LABEL_SWEEP: meta["name"]}
    )
    return ObservedSweep(resource=res, trials=tuple(trials))
