"""What the operator does against the API emulator, scenario by scenario. Each is an async
function of a running `Cluster` and uses its own resource names, so the process tests run them
one per operator and the RBAC test runs them all in one (and derives the verbs they need)."""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from .emulator import (
    CACHES,
    CMS,
    JOBS,
    NETPOLS,
    NS,
    RUNS,
    SVCS,
    SWEEPS,
    Call,
    Cluster,
    Fault,
    free_port,
    running_operator,
)
from .group_scenarios import grouped_sweep
from .helpers import cache_doc, quickstart, sweep_doc

Obj = dict[str, Any]
OUTPUT = {"storageUri": "s3://bucket/runs", "secretRef": {"name": "s3-creds"}}


def run_doc(name: str, **spec: Any) -> Obj:
    doc = quickstart()
    doc["metadata"] = {"name": name}
    doc["spec"]["output"] = dict(OUTPUT)
    doc["spec"].update(spec)
    return doc


def metrics_server(c: Cluster, addr: str = "127.0.0.1", port: int | None = None, **values: float) -> int:
    """A rank-0 /metrics endpoint serving these gauges, as the runtime would."""
    port = port or free_port()
    registry = CollectorRegistry()
    server = start_http_server(port, addr=addr, registry=registry)
    if isinstance(server, tuple):
        c.servers.append(server[0])
    for name, value in values.items():
        Gauge(name, name, registry=registry).set(value)
    return port


def job_pod(c: Cluster, job: str, run: str, kind: str = "saetrainingrun", index: int = 0, phase: str = "Running",
            message: str | None = None, disrupted: bool = False, owned: bool = True, ip: str = "127.0.0.1",
            suffix: str = "a") -> Obj:
    """A pod as the Job controller makes it: labels from the template, owned by the Job."""
    meta: Obj = {"name": f"{job}-{index}-{suffix}", "namespace": NS,
                 "labels": {"saeops.io/run": run, "saeops.io/kind": kind},
                 "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}}
    if owned:
        uid = c.get(JOBS, job)["metadata"]["uid"]
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid,
                                    "controller": True, "blockOwnerDeletion": True}]
    status: Obj = {"phase": phase, "podIP": ip,
                   "conditions": [{"type": "DisruptionTarget", "status": "True"}] if disrupted else []}
    if message is not None:
        status["containerStatuses"] = [{"name": "runtime", "state": {"terminated": {
            "exitCode": 0 if phase == "Succeeded" else 1, "message": message}}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


async def complete(c: Cluster, job: str) -> None:
    await c.patch("Job", job, {"status": {"active": 0, "succeeded": 1,
                                          "conditions": [{"type": "Complete", "status": "True"}]}}, "status")


async def fail(c: Cluster, job: str, reason: str = "BackoffLimitExceeded") -> None:
    await c.patch("Job", job, {"status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": reason}]}}, "status")


def first_phase(c: Cluster, resource: str, name: str) -> str | None:
    """The phase of the first status the operator wrote on a resource."""
    for version in c.versions(resource, name):
        phase = (version.get("status") or {}).get("phase")
        if phase:
            return phase
    return None


# ---------------------------------------------------------------------------------- scenarios
async def lifecycle(c: Cluster) -> None:
    """Children named by kind and owned; progress and checkpoint from the Job's own rank-0 pod
    (a look-alike pod is ignored); final metrics from its termination message; then quiet."""
    port = metrics_server(c, saeops_tokens_processed=100000, saeops_tokens_total=400000, saeops_l0=31.5,
                          saeops_explained_variance=0.75, saeops_checkpoint_step=40)
    metrics_server(c, addr="127.0.0.2", port=port, saeops_tokens_processed=399999, saeops_tokens_total=400000,
                   saeops_l0=999.0)
    await c.create("SAETrainingRun", run_doc("quickstart", metrics={"port": port}))
    job = await c.wait("Job", lambda: c.get(JOBS, "quickstart-run"))
    run = c.get(RUNS, "quickstart")
    uid = run["metadata"]["uid"]
    children = [job, c.get(CMS, "quickstart-run-spec"), c.get(SVCS, "quickstart-run"), c.get(NETPOLS, "quickstart-run")]
    for child in children:
        assert child is not None and child["metadata"]["ownerReferences"][0]["uid"] == uid, child
    spec_json = json.loads(children[1]["data"]["spec.json"])
    assert spec_json["metadata"] == {"name": "quickstart", "namespace": NS, "uid": uid}
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    run = await c.wait("Pending status", lambda: c.status(RUNS, "quickstart").get("jobName") and c.get(RUNS, "quickstart"))
    assert c.condition(run, "Admitted")["status"] == "True" and c.condition(run, "Succeeded")["status"] == "Unknown"

    # A pod that merely wears the run's labels (not the Job's) claims the run is almost done.
    await c.create("Pod", job_pod(c, "quickstart-run", "quickstart", owned=False, ip="127.0.0.2", suffix="decoy"))
    await c.create("Pod", job_pod(c, "quickstart-run", "quickstart"))
    await c.patch("Job", "quickstart-run", {"status": {"active": 1}}, "status")
    run = await c.wait("Running with progress", lambda: (r := c.get(RUNS, "quickstart"))
                       and (r.get("status") or {}).get("progress", {}).get("percent") == "25.0" and r)
    assert run["status"]["phase"] == "Running" and run["status"]["metrics"]["l0"] == "31.5"
    assert run["status"]["lastCheckpoint"] == "s3://bucket/runs/checkpoints/step-00000040"

    final = {"l0": 31.9, "explained_variance": 0.8, "mse": 0.01, "dead_fraction": 0.0, "tokens": 400000, "seconds": 9.5}
    done = job_pod(c, "quickstart-run", "quickstart", phase="Succeeded", message=json.dumps(
        {"final": final, "lastCheckpoint": "s3://bucket/runs/checkpoints/step-00000097"}))
    await c.patch("Pod", "quickstart-run-0-a", {"status": done["status"]}, "status")
    await complete(c, "quickstart-run")
    run = await c.wait_phase(RUNS, "quickstart", "Succeeded")
    assert c.condition(run, "Succeeded")["reason"] == "Completed"
    assert run["status"]["metrics"]["l0"] == "31.9" and run["status"]["metrics"]["explained_variance"] == "0.8"
    assert run["status"]["lastCheckpoint"] == "s3://bucket/runs/checkpoints/step-00000097"
    assert run["status"]["artifacts"]["sae"] == "s3://bucket/runs/sae.safetensors"

    # Handlers run again and again (timer every 0.5 s): nothing changes any more.
    versions, jobs = c.history(RUNS, "quickstart"), c.history(JOBS, "quickstart-run")
    await c.quiet_for(3)
    assert c.history(RUNS, "quickstart") == versions and c.history(JOBS, "quickstart-run") == jobs
    async with c.emu.clients[0].get(f"http://127.0.0.1:{c.live_port}/healthz") as resp:
        assert resp.status == 200


async def failures(c: Cluster) -> None:
    """A failure is a restart, a preemption is not, and the last failure carries rank 0's error line."""
    await c.create("SAETrainingRun", run_doc("flaky", failurePolicy={"maxRestarts": 1}))
    await c.wait("Job", lambda: c.get(JOBS, "flaky-run"))
    await fail(c, "flaky-run")
    await c.wait("restart 1", lambda: c.status(RUNS, "flaky").get("restarts") == 1)
    # The failed Job is deleted and a fresh one created (kmock has no GC: it is a new object).
    await c.wait("recreated Job", lambda: (j := c.get(JOBS, "flaky-run")) and not j.get("status"))

    await c.create("Pod", job_pod(c, "flaky-run", "flaky", phase="Failed", disrupted=True,
                                  message='{"preempted": true, "step": 12}', suffix="p"))
    await fail(c, "flaky-run")
    await c.wait("Preempted", lambda: c.condition(c.get(RUNS, "flaky"), "Running").get("reason") in ("Preempted", "PodsPending")
                 and (j := c.get(JOBS, "flaky-run")) and not j.get("status"))
    assert c.status(RUNS, "flaky")["restarts"] == 1  # preemption is not counted
    async with c.emu.delete(f"/api/v1/namespaces/{NS}/pods/flaky-run-0-p") as resp:  # the Job controller's GC
        assert resp.status < 300

    line = "error: spec.model.path: /models/missing does not exist in the image"
    await c.create("Pod", job_pod(c, "flaky-run", "flaky", phase="Failed", message=f"loading model\n{line}\n", suffix="f"))
    await fail(c, "flaky-run")
    run = await c.wait_phase(RUNS, "flaky", "Failed")
    failed = c.condition(run, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and failed["message"] == line
    assert run["status"]["restarts"] == 1


async def sweep(c: Cluster) -> None:
    """Trials get their own Jobs; their final metrics (termination messages) pick the best."""
    doc = sweep_doc(max_trials=2, parallel=2)
    doc["metadata"] = {"name": "sw"}
    doc["spec"]["trialTemplate"]["output"] = {"storageUri": "s3://bucket/sweeps", "secretRef": {"name": "s3-creds"}}
    await c.create("SAESweep", doc)
    await c.wait("trial jobs", lambda: c.get(JOBS, "sw-0-run") and c.get(JOBS, "sw-1-run"))
    sweep_uid = c.get(SWEEPS, "sw")["metadata"]["uid"]
    assert c.get(RUNS, "sw-0")["metadata"]["ownerReferences"][0]["uid"] == sweep_uid
    for i in (0, 1):
        message = json.dumps({"final": {"explained_variance": 0.5 + i / 10, "l0": 30 + i}, "lastCheckpoint": None})
        await c.create("Pod", job_pod(c, f"sw-{i}-run", f"sw-{i}", phase="Succeeded", message=message))
        await complete(c, f"sw-{i}-run")
        trial = await c.wait_phase(RUNS, f"sw-{i}", "Succeeded")
        assert trial["status"]["metrics"]["explained_variance"] == str(0.5 + i / 10)
    s = await c.wait("sweep Succeeded", lambda: (r := c.get(SWEEPS, "sw")) and r.get("status", {}).get("phase") == "Succeeded"
                     and (r["status"].get("bestTrial") or {}).get("name") == "sw-1" and r)
    assert c.condition(s, "Succeeded")["reason"] == "MaxTrialsReached" and s["status"]["trialsSucceeded"] == 2
    assert c.get(RUNS, "sw-2") is None
    # A GitOps edit raising maxTrials resumes the finished sweep.
    await c.patch("SAESweep", "sw", {"spec": {"maxTrials": 3}})
    await c.wait("trial sw-2", lambda: c.get(RUNS, "sw-2"))
    await c.wait_phase(SWEEPS, "sw", "Running")


async def same_name(c: Cluster) -> None:
    """A cache and a run of one name get their own children; suspending one leaves the other alone."""
    cache = cache_doc("twin")
    cache["metadata"] = {"name": "twin"}
    await c.create("ActivationCache", cache)
    await c.create("SAETrainingRun", run_doc("twin"))
    await c.wait("both Jobs", lambda: c.get(JOBS, "twin-cache") and c.get(JOBS, "twin-run"))
    cache_uid, run_uid = c.get(CACHES, "twin")["metadata"]["uid"], c.get(RUNS, "twin")["metadata"]["uid"]
    for resource, suffix in ((JOBS, ""), (CMS, "-spec"), (SVCS, ""), (NETPOLS, "")):
        assert c.get(resource, f"twin-cache{suffix}")["metadata"]["ownerReferences"][0]["uid"] == cache_uid
        assert c.get(resource, f"twin-run{suffix}")["metadata"]["ownerReferences"][0]["uid"] == run_uid
    assert json.loads(c.get(CMS, "twin-cache-spec")["data"]["spec.json"])["kind"] == "ActivationCache"
    assert json.loads(c.get(CMS, "twin-run-spec")["data"]["spec.json"])["kind"] == "SAETrainingRun"
    run_job = c.get(JOBS, "twin-run")
    await c.patch("ActivationCache", "twin", {"spec": {"suspend": True}})
    await c.wait_phase(CACHES, "twin", "Suspended")
    await c.wait("cache Job deleted", lambda: c.get(JOBS, "twin-cache") is None)
    await c.quiet_for(2)
    assert c.get(JOBS, "twin-run") == run_job  # the run's Job is untouched


FOREIGN = {
    "squat-a": ("Job", JOBS, "squat-a-run", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "squat-a-run"},
               "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
    "squat-b": ("Service", SVCS, "squat-b-run", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "squat-b-run"},
                "spec": {"ports": [{"port": 80}]}}),
    "squat-c": ("ConfigMap", CMS, "squat-c-run-spec", {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "squat-c-run-spec", "labels": {"team": "other"}}, "data": {"keep": "me"}}),
}


async def foreign_children(c: Cluster) -> None:
    """An object that holds a child's name and is not owned is left byte-for-byte intact."""
    before = {}
    for run, (kind, resource, name, obj) in FOREIGN.items():
        await c.create(kind, obj)
        before[run] = (json.dumps(c.get(resource, name), sort_keys=True), c.history(resource, name))
    for run in FOREIGN:
        await c.create("SAETrainingRun", run_doc(run))
    for run, (kind, _, name, _) in FOREIGN.items():
        r = await c.wait_phase(RUNS, run, "Failed")
        failed = c.condition(r, "Failed")
        assert failed["reason"] == "NameConflict" and f"{kind} {NS}/{name}" in failed["message"], failed
    await c.quiet_for(3)
    for run, (_, resource, name, _) in FOREIGN.items():
        assert (json.dumps(c.get(resource, name), sort_keys=True), c.history(resource, name)) == before[run], name
        touched = [call for call in c.emu.calls if call.name == name and call.verb not in ("get", "list", "watch")]
        assert touched == [], touched
        assert c.count("create", "jobs", f"{run}-run") == 0  # nothing else was started for it


async def rejected(c: Cluster) -> None:
    """Creates the API server refuses for good end the run Failed in one reconcile, never retried."""
    # The spec models refuse requests above limits themselves, so the API server's 422 for an
    # invalid Job is injected here (what a server-side rule the models do not know would give).
    c.emu.faults.append(Fault("jobs", "create", "too-big-run", [422],
                              'Job.batch "too-big-run" is invalid: spec.template.spec.containers[0].resources.'
                              'requests: Invalid value: "4": must be less than or equal to cpu limit of 2'))
    await c.create("SAETrainingRun", run_doc("too-big"))
    bad_secret = run_doc("bad-secret")
    bad_secret["spec"]["output"] = {"storageUri": "s3://bucket/runs", "secretRef": {"name": "S3_Creds"}}
    await c.create("SAETrainingRun", bad_secret)
    c.emu.faults.append(Fault("jobs", "create", "quota-run", [403],
                              'jobs.batch "quota-run" is forbidden: exceeded quota: team-a, requested: count/jobs.batch=1'))
    await c.create("SAETrainingRun", run_doc("quota"))

    run = await c.wait_phase(RUNS, "too-big", "Failed")
    failed = c.condition(run, "Failed")
    assert failed["reason"] == "InvalidSpec" and "HTTP 422" in failed["message"]
    assert "must be less than or equal to cpu limit of 2" in failed["message"]
    assert first_phase(c, RUNS, "too-big") == "Failed"  # the very first status written: one reconcile
    run = await c.wait_phase(RUNS, "quota", "Failed")
    assert c.condition(run, "Failed")["reason"] == "Rejected" and "exceeded quota" in c.condition(run, "Failed")["message"]
    assert first_phase(c, RUNS, "quota") == "Failed"
    run = await c.wait_phase(RUNS, "bad-secret", "Failed")
    failed = c.condition(run, "Failed")
    assert failed["reason"] == "InvalidSpec" and "S3_Creds" in failed["message"]

    await c.quiet_for(4)
    assert c.count("create", "jobs", "too-big-run") == 1 and c.count("create", "jobs", "quota-run") == 1
    assert c.count("create", "jobs", "bad-secret-run") <= 1  # 0 where the spec models catch it first
    for name in ("too-big", "quota", "bad-secret"):
        assert c.get(JOBS, f"{name}-run") is None
        assert c.get(CMS, f"{name}-run-spec") is None  # owned children go with a spec failure


async def transient(c: Cluster) -> None:
    """5xx and 429 are retried with backoff and counted; the run then proceeds."""
    c.emu.faults.append(Fault("jobs", "create", "flaky-api-run", [500, 503, 429], "etcdserver: request timed out"))
    await c.create("SAETrainingRun", run_doc("flaky-api"))
    await c.wait("Job after retries", lambda: c.get(JOBS, "flaky-api-run"))
    assert c.count("create", "jobs", "flaky-api-run") == 4
    assert c.status(RUNS, "flaky-api").get("phase") != "Failed"
    metrics = await c.operator_metrics()
    assert metrics['saeops_operator_retries_total{kind="SAETrainingRun"}'] >= 3
    for code in ("500", "503", "429"):
        assert metrics[f'saeops_operator_api_errors_total{{code="{code}",method="POST",resource="jobs"}}'] >= 1


async def spec_change_and_ttl(c: Cluster) -> None:
    """An edit that makes the spec invalid removes the owned children; TTLs delete runs and caches."""
    await c.create("SAETrainingRun", run_doc("edited"))
    await c.wait("children", lambda: c.get(JOBS, "edited-run") and c.get(NETPOLS, "edited-run"))
    await c.patch("SAETrainingRun", "edited", {"spec": {"sae": {"topK": -1}}})
    run = await c.wait_phase(RUNS, "edited", "Failed")
    assert c.condition(run, "Failed")["reason"] == "InvalidSpec" and "spec.sae.topK" in c.condition(run, "Failed")["message"]
    for resource, name in ((JOBS, "edited-run"), (CMS, "edited-run-spec"), (SVCS, "edited-run"), (NETPOLS, "edited-run")):
        await c.wait(f"{name} deleted", lambda r=resource, n=name: c.get(r, n) is None)
    await c.patch("SAETrainingRun", "edited", {"spec": {"ttlSecondsAfterFinished": 0}})
    await c.wait("run deleted after its TTL", lambda: c.get(RUNS, "edited") is None)

    brief = cache_doc("brief")
    brief["metadata"] = {"name": "brief"}
    brief["spec"]["ttlSecondsAfterFinished"] = 0
    brief["spec"]["hookPoints"] = []
    await c.create("ActivationCache", brief)
    await c.wait("cache deleted after its TTL", lambda: c.get(CACHES, "brief") is None)


ALL = [lifecycle, failures, sweep, same_name, foreign_children, rejected, transient, spec_change_and_ttl, grouped_sweep]


@dataclass
class Outcome:
    """One scenario's result: the operator's calls (for RBAC) and the error, if it failed."""

    calls: list[Call]
    error: BaseException | None


@functools.cache
def run_all() -> dict[str, Outcome]:
    """Every scenario, each against a fresh emulator and operator, once per test session: the
    process tests report each one's result and the RBAC test derives verbs from all their calls."""
    return asyncio.run(_run_all())


async def _run_all() -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    for scenario in ALL:
        calls: list[Call] = []
        error: BaseException | None = None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                async with running_operator(Path(tmp)) as c:
                    try:
                        await scenario(c)
                    finally:
                        calls = list(c.emu.calls)
            except Exception as e:  # reported by the scenario's own test
                error = e
        out[scenario.__name__] = Outcome(calls, error)
    return out
