"""Read what a reconcile needs from the cluster: the children, the Job's own pods, the
referenced cache, and the rank-0 pod's /metrics.

The operator reads no object storage (it has no business holding credentials for every
tenant's bucket): final metrics and errors come from the pods' termination messages, the
last checkpoint from /metrics (see outcome.py and progress.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from saeops.api import k8s, names
from saeops.operator import jobs
from saeops.operator.kube import Kube, path_for
from saeops.operator.policy import ClusterPolicy
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


def _metrics_port(res: Obj) -> int:
    metrics = ((res.get("spec") or {}).get("metrics")) or {}
    port = metrics.get("port")
    return port if isinstance(port, int) and 0 < port < 65536 else 9400


def job_name_of(res: Obj) -> str:
    """The Job to follow: the one the status records (it may predate a naming change), else the
    deterministic name. Whether it is really this resource's is the reconcile's check."""
    recorded = (res.get("status") or {}).get("jobName")
    if isinstance(recorded, str) and len(recorded) <= names.MAX_JOB_NAME and k8s.is_dns_label(recorded):
        return recorded
    return names.job_name(res["kind"], res["metadata"]["name"])


async def _none() -> None:
    return None


async def observe_run(kube: Kube, res: Obj, policy: ClusterPolicy | None = None, **extra: Any) -> Observed:
    """Children, the Job's pods, the referenced cache and the scraped metrics of a run or cache.
    `extra` (foreign, rejection) is passed through to Observed."""
    policy = policy or ClusterPolicy()
    meta = res["metadata"]
    ns, name, kind = meta.get("namespace"), meta["name"], res["kind"]
    cm, svc, netpol, job = await asyncio.gather(
        kube.get(path_for("v1", "ConfigMap", ns, names.configmap_name(kind, name))),
        kube.get(path_for("v1", "Service", ns, names.service_name(kind, name))),
        kube.get(path_for("networking.k8s.io/v1", "NetworkPolicy", ns, names.network_policy_name(kind, name)))
        if policy.network_policy else _none(),
        kube.get(path_for("batch/v1", "Job", ns, job_name_of(res))),
    )
    pods: list[Obj] = []
    job_uid = ((job or {}).get("metadata") or {}).get("uid")
    if job is not None and names.owned_by(job, meta.get("uid")):
        # Only the Job's own pods: a pod that merely wears the run's labels reports nothing.
        listed = await kube.list(path_for("v1", "Pod", ns), selector_labels(kind, name))
        pods = [p for p in listed if names.owned_by(p, job_uid)]
    cache = None
    ref = ((res.get("spec") or {}).get("activations") or {}).get("cacheRef")
    if kind == "SAETrainingRun" and isinstance(ref, str) and ref:
        cache = await kube.get(path_for(names.API, "ActivationCache", ns, ref))
    metrics = None
    terminal = (res.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    if pods and not terminal:
        rank0 = jobs.rank0_pod(tuple(pods))
        if rank0 is not None:
            metrics = await scrape(rank0, _metrics_port(res))
    return Observed(resource=res, job=job, pods=tuple(pods), configmap=cm, service=svc, networkpolicy=netpol,
                    cache=cache, metrics=metrics, **extra)


async def observe_sweep(kube: Kube, res: Obj, **extra: Any) -> ObservedSweep:
    """A sweep and its trials (by label; the reconcile keeps those the sweep owns)."""
    meta = res["metadata"]
    trials = await kube.list(
        path_for(names.API, "SAETrainingRun", meta.get("namespace")), {names.LABEL_SWEEP: meta["name"]}
    )
    return ObservedSweep(resource=res, trials=tuple(trials), **extra)
