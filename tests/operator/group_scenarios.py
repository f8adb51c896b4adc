"""The operator against the API emulator with a grouped sweep (see scenarios.py for the others):
one Job trains the trials that share a stream; a suspended trial leaves it; a diverging member
ends Failed and the rest Succeeded, each with its own status."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from saeops.api import names

from .emulator import CMS, JOBS, NS, RUNS, SWEEPS, Cluster, free_port
from .helpers import sweep_doc

Obj = dict[str, Any]
SWEEP = "gs"


def labelled_metrics(c: Cluster, series: dict[str, dict[str, float]]) -> int:
    """A group's rank-0 /metrics: each member's gauges labelled run="<trial>", as the runtime serves them."""
    port = free_port()
    registry = CollectorRegistry()
    server = start_http_server(port, addr="127.0.0.1", registry=registry)
    if isinstance(server, tuple):
        c.servers.append(server[0])
    gauges: dict[str, Gauge] = {}
    for run, values in series.items():
        for name, value in values.items():
            if name not in gauges:
                gauges[name] = Gauge(name, name, ["run"], registry=registry)
            gauges[name].labels(run=run).set(value)
    return port


def group_job_pod(c: Cluster, job_name: str, phase: str = "Running", message: str | None = None,
                  suffix: str = "a") -> Obj:
    """A pod of the group's Job as the Job controller makes it: the template's labels, owned by the Job."""
    job = c.get(JOBS, job_name)
    assert job is not None
    meta: Obj = {"name": f"{job_name}-0-{suffix}", "namespace": NS,
                 "labels": dict(job["spec"]["template"]["metadata"]["labels"]),
                 "annotations": {**job["spec"]["template"]["metadata"]["annotations"],
                                 "batch.kubernetes.io/job-completion-index": "0"},
                 "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                      "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]}
    status: Obj = {"phase": phase, "podIP": "127.0.0.1", "conditions": []}
    if message is not None:
        status["containerStatuses"] = [{"name": "runtime", "state": {"terminated": {
            "exitCode": 0 if phase == "Succeeded" else 1, "message": message}}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def members(obj: Obj | None) -> list[str]:
    return list(json.loads(((obj or {}).get("metadata") or {}).get("annotations", {}).get(names.ANNOTATION_MEMBERS, "{}")))


async def grouped_sweep(c: Cluster) -> None:
    """Four trials, one stream: one group Job; gs-3 suspended leaves it (the Job is recreated for
    the other three); gs-1 diverges and fails alone; resumed, gs-3 runs as a run of its own."""
    trials = [f"{SWEEP}-{i}" for i in range(4)]
    tokens = {t: {"saeops_tokens_processed": 100000.0 * (i + 1), "saeops_tokens_total": 400000.0,
                  "saeops_l0": 10.0 + i} for i, t in enumerate(trials)}
    port = labelled_metrics(c, tokens)
    doc = sweep_doc(max_trials=4, parallel=4, max_failed=2, grouped=True)
    doc["metadata"] = {"name": SWEEP}
    doc["spec"]["trialTemplate"]["output"] = {"storageUri": "s3://bucket/gsweeps", "secretRef": {"name": "s3-creds"}}
    doc["spec"]["trialTemplate"]["metrics"] = {"port": port}
    await c.create("SAESweep", doc)
    group = names.group_name(SWEEP, [0, 1, 2, 3])
    job_name = names.group_job_name(group)
    job = await c.wait("the group's Job", lambda: c.get(JOBS, job_name))
    sweep_uid = c.get(SWEEPS, SWEEP)["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == sweep_uid and members(job) == trials
    cm = c.get(CMS, names.group_configmap_name(group))
    assert sorted(cm["data"]) == [names.member_file(i) for i in range(4)]
    assert json.loads(cm["data"]["member-002.json"])["metadata"]["uid"] == c.get(RUNS, "gs-2")["metadata"]["uid"]
    assert all(c.get(JOBS, f"{t}-run") is None for t in trials)  # no Job of their own

    # gs-3 suspended: it leaves, and the Job is recreated with the three others.
    await c.patch("SAETrainingRun", "gs-3", {"spec": {"suspend": True}})
    job = await c.wait("Job recreated without gs-3", lambda: (j := c.get(JOBS, job_name)) and members(j) == trials[:3] and j)
    run = await c.wait_phase(RUNS, "gs-3", "Suspended")
    assert c.condition(run, "Grouped")["status"] == "False"

    await c.create("Pod", group_job_pod(c, job_name))
    await c.patch("Job", job_name, {"status": {"active": 1}}, "status")
    run = await c.wait("gs-1 Running with its own progress", lambda: (r := c.get(RUNS, "gs-1"))
                       and (r.get("status") or {}).get("progress", {}).get("percent") == "50.0" and r)
    assert run["status"]["phase"] == "Running" and run["status"]["metrics"]["l0"] == "11"
    await c.wait("gs-0 at 25%", lambda: c.status(RUNS, "gs-0").get("progress", {}).get("percent") == "25.0")

    final = {"l0": 30.0, "explained_variance": 0.8, "mse": 0.01, "dead_fraction": 0.0, "tokens": 400000, "seconds": 9.0}
    report = {"gs-0": {"final": final, "lastCheckpoint": "s3://bucket/gsweeps/gs-0/checkpoints/step-00000097"},
              "gs-1": {"error": "error: gs-1: loss is NaN at step 12; lower trainer.lr"},
              "gs-2": {"final": {**final, "explained_variance": 0.85}, "lastCheckpoint": None}}
    done = group_job_pod(c, job_name, phase="Succeeded", message=json.dumps({"members": report}, separators=(",", ":")))
    await c.patch("Pod", f"{job_name}-0-a", {"status": done["status"]}, "status")
    await c.patch("Job", job_name, {"status": {"active": 0, "succeeded": 1,
                                                "conditions": [{"type": "Complete", "status": "True"}]}}, "status")
    for t in ("gs-0", "gs-2"):
        run = await c.wait_phase(RUNS, t, "Succeeded")
        assert run["status"]["artifacts"]["sae"] == f"s3://bucket/gsweeps/{t}/sae.safetensors"
    assert c.status(RUNS, "gs-0")["lastCheckpoint"] == "s3://bucket/gsweeps/gs-0/checkpoints/step-00000097"
    run = await c.wait_phase(RUNS, "gs-1", "Failed")
    failed = c.condition(run, "Failed")
    assert failed["reason"] == "MemberFailed" and failed["message"] == report["gs-1"]["error"]
    s = await c.wait("best trial gs-2, one failed", lambda: (r := c.get(SWEEPS, SWEEP))
                     and (r.get("status") or {}).get("bestTrial", {}).get("name") == "gs-2"
                     and r["status"].get("trialsFailed") == 1 and r["status"].get("trialsSucceeded") == 2 and r)
    assert s["status"]["phase"] == "Running"  # gs-3 is still to run

    # Resumed, gs-3 runs alone from its checkpoint; the finished group Job is left as it was.
    versions = c.history(JOBS, job_name)
    await c.patch("SAETrainingRun", "gs-3", {"spec": {"suspend": False}})
    await c.wait("gs-3's own Job", lambda: c.get(JOBS, "gs-3-run"))
    await c.patch("Job", "gs-3-run", {"status": {"active": 0, "succeeded": 1,
                                                 "conditions": [{"type": "Complete", "status": "True"}]}}, "status")
    s = await c.wait_phase(SWEEPS, SWEEP, "Succeeded")
    assert c.condition(s, "Succeeded")["reason"] == "MaxTrialsReached" and s["status"]["trialsSucceeded"] == 3
    assert c.history(JOBS, job_name) == versions
