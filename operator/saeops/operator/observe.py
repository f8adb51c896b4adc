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
from saeops.operator.grouprender import group_of, group_selector, sweep_uid_of
from saeops.operator.groupsweep import KINDS, child_names
from saeops.operator.kube import Kube, path_for
from saeops.operator.policy import ClusterPolicy
from saeops.operator.progress import parse_prometheus
from saeops.operator.render import selector_labels
from saeops.operator.state import Observed, ObservedSweep

Obj = dict[str, Any]
SCRAPE_TIMEOUT = 2.0
log = logging.getLogger("saeops.operator")


async def scrape(pod: Obj, port: int, run: str | None = None) -> dict[str, float] | None:
    """GET http://<pod-ip>:<port>/metrics and parse it (only `run`'s series, when given); None
    when unreachable."""
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
            return parse_prometheus(await resp.text(), run)
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
    group = group_of(res) if kind == "SAETrainingRun" else None
    if group is not None:
        return await _observe_grouped(kube, res, group, **extra)
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
    cache = await _cache(kube, res) if kind == "SAETrainingRun" else None
    metrics = None
    terminal = (res.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    if pods and not terminal:
        rank0 = jobs.rank0_pod(tuple(pods))
        if rank0 is not None:
            metrics = await scrape(rank0, _metrics_port(res))
    return Observed(resource=res, job=job, pods=tuple(pods), configmap=cm, service=svc, networkpolicy=netpol,
                    cache=cache, metrics=metrics, **extra)


async def _cache(kube: Kube, res: Obj) -> Obj | None:
    ref = ((res.get("spec") or {}).get("activations") or {}).get("cacheRef")
    if isinstance(ref, str) and ref:
        return await kube.get(path_for(names.API, "ActivationCache", res["metadata"].get("namespace"), ref))
    return None


async def _observe_grouped(kube: Kube, res: Obj, group: str, **extra: Any) -> Observed:
    """A grouped trial: its group's Job (the sweep's), that Job's pods, the trial's own series."""
    meta = res["metadata"]
    ns, name = meta.get("namespace"), meta["name"]
    job, cache = await asyncio.gather(kube.get(path_for("batch/v1", "Job", ns, names.group_job_name(group))),
                                      _cache(kube, res))
    pods: list[Obj] = []
    if job is not None and names.owned_by(job, sweep_uid_of(res)):
        sweep = {"metadata": {"name": (meta.get("labels") or {}).get(names.LABEL_SWEEP, "")}}
        listed = await kube.list(path_for("v1", "Pod", ns), group_selector(sweep, group))
        pods = [p for p in listed if names.owned_by(p, (job.get("metadata") or {}).get("uid"))]
    metrics = None
    if pods and (res.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        rank0 = jobs.rank0_pod(tuple(pods))
        if rank0 is not None:
            metrics = await scrape(rank0, _metrics_port(res), run=name)
    return Observed(resource=res, group_job=job, pods=tuple(pods), cache=cache, metrics=metrics, **extra)


async def observe_sweep(kube: Kube, res: Obj, policy: ClusterPolicy | None = None, **extra: Any) -> ObservedSweep:
    """A sweep, its trials (by label; the reconcile keeps those the sweep owns), its groups'
    children (by name, for every group a trial or an owned Job names) and the trials' caches."""
    policy = policy or ClusterPolicy()
    meta = res["metadata"]
    ns, uid = meta.get("namespace"), meta.get("uid")
    own = {names.LABEL_RUN: meta["name"], names.LABEL_KIND: names.kind_label("SAESweep")}
    trials, owned_jobs = await asyncio.gather(
        kube.list(path_for(names.API, "SAETrainingRun", ns), {names.LABEL_SWEEP: meta["name"]}),
        kube.list(path_for("batch/v1", "Job", ns), own),
    )
    groups = {g for t in trials if (g := group_of(t))}
    groups |= {g for j in owned_jobs if names.owned_by(j, uid)
               and isinstance(g := ((j.get("metadata") or {}).get("labels") or {}).get(names.LABEL_GROUP), str) and g}
    wanted = [(kind, child) for g in sorted(groups) for kind, child in child_names(g).items()
              if kind != "NetworkPolicy" or policy.network_policy]
    found = await asyncio.gather(*(kube.get(path_for(KINDS[k], k, ns, n)) for k, n in wanted))
    children = tuple({"kind": k, **obj} for (k, _), obj in zip(wanted, found, strict=True) if obj is not None)
    refs = sorted({r for t in trials if isinstance(r := ((t.get("spec") or {}).get("activations") or {}).get("cacheRef"), str) and r})
    caches = await asyncio.gather(*(kube.get(path_for(names.API, "ActivationCache", ns, r)) for r in refs))
    return ObservedSweep(resource=res, trials=tuple(trials), children=children,
                         caches=tuple(c for c in caches if c is not None), **extra)
