"""The Job controller and the kubelet for the API emulator: Indexed Jobs become containers.

Every `POLL_S` the runner lists Jobs through the API (as a controller does), starts one
container per completion index from the pod template (`kubelet.py` does the translation), and
writes Pods and Job status back (`jobctl.py` has the rules), so the operator sees what it would
see in a cluster. Each pod gets its own loopback address as its pod IP; the pods of a Job's
headless Service (the template's `subdomain`, if that Service exists and selects them) resolve
as `<hostname>.<service>` through `--add-host`. `disrupt()` is a preemption: the pod gets
`DisruptionTarget=True`, then `docker stop` with its grace period. Jobs that disappear are
garbage-collected with their pods and containers. Pods of running containers that carry
`prometheus.io/scrape` are listed in a file_sd file for Prometheus.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeops.api.names import LABEL_RUN
from tests.cluster import jobctl, kubelet
from tests.cluster.engine import Docker
from tests.cluster.kubeapi import KubeApi

Obj = dict[str, Any]
POLL_S = 0.3
log = logging.getLogger("podrunner")


@dataclass
class PodRec:
    """One pod this runner created, and its container."""

    name: str
    job: Obj
    index: int
    ip: str
    pod: Obj
    dir: Path
    cid: str | None = None
    phase: str = "Pending"
    started: str | None = None
    disrupted: bool = False
    action: str = ""
    """Job controller's verdict on a failed pod: Ignore, Count, FailJob, FailIndex."""
    terminated: Obj = field(default_factory=dict)
    deleting: bool = False
    """Stopped by the controller (Job failed, suspended or deleted): not the pod's failure."""

    @property
    def job_uid(self) -> str:
        return self.job["metadata"]["uid"]

    @property
    def container(self) -> Obj:
        return self.pod["spec"]["containers"][0]

    @property
    def hostname(self) -> str:
        return self.pod["spec"]["hostname"]


class PodRunner:
    """Runs Indexed Jobs of one namespace as containers until `close()`."""

    def __init__(self, api_url: str, docker: Docker, workdir: Path, namespace: str = "default",
                 sd_file: Path | None = None) -> None:
        self.api, self.docker, self.workdir, self.ns = KubeApi(api_url, namespace), docker, workdir, namespace
        self.sd_file = sd_file
        self.pods: dict[str, PodRec] = {}
        self.history: dict[str, PodRec] = {}
        """Every pod ever created, also those garbage-collected with their Job."""
        self.statuses: dict[str, Obj] = {}
        self.starts: dict[str, str] = {}
        self.errors: list[str] = []
        self.cids: set[str] = set()
        self._ips = (random.randrange(100, 200), 0)
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.api.open()
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        """Stop syncing and remove every container this runner started."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for rec in self.pods.values():
            if rec.cid is not None:
                await asyncio.to_thread(self._save_logs, rec)
        for cid in self.cids:
            await asyncio.to_thread(self.docker.remove, cid)
        self.cids.clear()
        await self.api.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # surfaced by the tests through `errors`
                log.exception("sync failed")
                self.errors.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(POLL_S)

    # ---------------------------------------------------------------- controller

    async def sync(self) -> None:
        jobs = {j["metadata"]["uid"]: j for j in await self.api.list("Job")}
        for uid in {r.job_uid for r in self.pods.values()} - set(jobs):
            await self._collect(uid)
        states = await asyncio.to_thread(self.docker.states)
        for rec in list(self.pods.values()):
            if rec.cid is not None and states.get(rec.cid, {}).get("Status", "exited") in ("exited", "dead"):
                await self._finish(rec, states.get(rec.cid))
        for job in jobs.values():
            for rec in self.pods.values():
                if rec.job_uid == job["metadata"]["uid"]:
                    rec.job = job
            await self._sync_job(job)
        self._write_sd()

    async def _sync_job(self, job: Obj) -> None:
        uid, spec = job["metadata"]["uid"], job["spec"]
        if jobctl.finished(job):
            return
        if spec.get("completionMode") != "Indexed":
            raise RuntimeError(f"job {job['metadata']['name']}: only Indexed Jobs are run here")
        recs = [r for r in self.pods.values() if r.job_uid == uid]
        active = [r for r in recs if r.phase in ("Pending", "Running")]
        succeeded = {r.index for r in recs if r.phase == "Succeeded"}
        counted = sum(r.action == "Count" for r in recs)
        fail_job = next((f"pod {r.name} failed (exit {r.terminated.get('exitCode')}) and a FailJob rule matched"
                         for r in recs if r.action == "FailJob"), None)
        if not spec.get("suspend"):
            self.starts.setdefault(uid, jobctl.now())
        failed_because = jobctl.failure(job, counted, fail_job, self.starts.get(uid))
        if failed_because is not None or spec.get("suspend"):
            for rec in active:  # the controller deletes the pods of a failed or suspended Job
                if not rec.deleting:
                    rec.deleting = True
                    self._spawn(self._terminate(rec))
        elif len(succeeded) < int(spec.get("completions") or 1):
            for rec in active:
                if rec.phase == "Pending" and rec.cid is None:  # the kubelet retries
                    await self._start_container(rec)
            busy = {r.index for r in active}
            todo = [i for i in range(int(spec.get("completions") or 1)) if i not in succeeded | busy]
            new = [self._new_pod(job, i) for i in todo[: max(0, int(spec.get("parallelism", 1)) - len(active))]]
            for rec in new:
                await self._create(rec)
            active += new
        running = [r for r in active if r.phase == "Running"]
        status = jobctl.job_status(job, active=len(active) if failed_because is None else 0, ready=len(running),
                                   succeeded=succeeded, counted=counted, start=self.starts.get(uid),
                                   failed_because=failed_because)
        if status != self.statuses.get(uid):
            await self.api.patch_status("Job", job["metadata"]["name"], status)
            self.statuses[uid] = status

    def _new_pod(self, job: Obj, index: int) -> PodRec:
        meta, tmpl = job["metadata"], job["spec"]["template"]
        name = f"{meta['name']}-{index}-{secrets.token_hex(3)[:5]}"
        a, b = self._ips
        b += 1
        self._ips = (a, b)
        ip = f"127.{a}.{b // 250}.{b % 250 + 2}"
        labels = {**(tmpl.get("metadata") or {}).get("labels", {}), "batch.kubernetes.io/job-name": meta["name"],
                  "job-name": meta["name"], "batch.kubernetes.io/controller-uid": meta["uid"],
                  "controller-uid": meta["uid"], "batch.kubernetes.io/job-completion-index": str(index)}
        annotations = {**(tmpl.get("metadata") or {}).get("annotations", {}),
                       "batch.kubernetes.io/job-completion-index": str(index)}
        spec = copy.deepcopy(tmpl["spec"])
        spec.update(hostname=f"{meta['name']}-{index}", nodeName=kubelet.NODE_NAME)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": self.ns, "labels": labels, "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
               "spec": spec,
               "status": {"phase": "Pending", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": kubelet.HOST_IP}}
        rec = PodRec(name=name, job=job, index=index, ip=ip, pod=pod, dir=self.workdir / "pods" / name)
        self.pods[name] = self.history[name] = rec
        return rec

    async def _create(self, rec: PodRec) -> None:
        created = await self.api.create("Pod", rec.pod)
        rec.pod["metadata"]["uid"] = (created or {}).get("metadata", {}).get("uid", rec.name)
        await self._start_container(rec)

    # ---------------------------------------------------------------- kubelet

    async def _references(self, rec: PodRec) -> dict[tuple[str, str], Obj]:
        """The Secrets and ConfigMaps the pod's env and volumes name, as the API has them."""
        names: set[tuple[str, str]] = set()
        for var in rec.container.get("env") or []:
            src = var.get("valueFrom") or {}
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in src:
                    names.add((kind, src[key]["name"]))
        for vol in rec.pod["spec"].get("volumes") or []:
            if "configMap" in vol:
                names.add(("ConfigMap", vol["configMap"]["name"]))
            if "secret" in vol:
                names.add(("Secret", vol["secret"]["secretName"]))
        found = {}
        for kind, name in names:
            obj = await self.api.get(kind, name)
            if obj is not None:
                found[(kind, name)] = {**obj, "kind": kind}
        return found

    async def _hosts(self, rec: PodRec) -> list[str]:
        """/etc/hosts entries: the pod's own names, and its peers' through the headless Service."""
        sub = rec.pod["spec"].get("subdomain")
        own = [rec.hostname]
        peers = [rec]
        if sub:
            svc = await self.api.get("Service", sub)
            selector = ((svc or {}).get("spec") or {}).get("selector") or {}
            labels = rec.pod["metadata"]["labels"]
            if svc is not None and selector and all(labels.get(k) == v for k, v in selector.items()):
                peers = [r for r in self.pods.values() if r.job_uid == rec.job_uid and r.phase in ("Pending", "Running")]
        entries = [f"{h}:{rec.ip}" for h in own]
        for peer in peers:
            if sub:
                for suffix in ("", f".{self.ns}.svc", f".{self.ns}.svc.cluster.local"):
                    entries.append(f"{peer.hostname}.{sub}{suffix}:{peer.ip}")
        return entries

    async def _start_container(self, rec: PodRec) -> None:
        container = rec.container
        image = container["image"]
        try:
            inspected = await asyncio.to_thread(self.docker, "image", "inspect", image, check=False)
            if inspected.returncode != 0:
                raise kubelet.PodConfigError(f"image {image} is not on this node and no registry is reachable")
            image_user = json.loads(inspected.stdout)[0]["Config"].get("User") or ""
            objects = await self._references(rec)
            injected = {"JOB_COMPLETION_INDEX": str(rec.index)}
            env = kubelet.container_env(container, rec.pod, objects, injected)
            mounts = kubelet.volume_mounts(rec.pod, container, objects, rec.dir / "volumes",
                                          self.workdir / "claims")
            args = ["--name", f"saeops-pod-{rec.name}", "--network=host", "--hostname", rec.hostname]
            for entry in await self._hosts(rec):
                args += ["--add-host", entry]
            args += kubelet.security_args(rec.pod, container, image_user) + kubelet.resource_args(container)
        except kubelet.PodConfigError as e:
            await self._waiting(rec, "CreateContainerConfigError", str(e))
            return
        rec.dir.mkdir(parents=True, exist_ok=True)
        for path, text in mounts.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        env_file = rec.dir / "env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        term = rec.dir / "termination-log"
        term.write_text("")
        term.chmod(0o666)  # the container's user writes it
        args += ["--env-file", str(env_file), *mounts.args,
                 "-v", f"{term}:{container.get('terminationMessagePath', kubelet.DEFAULT_TERMINATION_PATH)}"]
        if container.get("workingDir"):
            args += ["-w", container["workingDir"]]
        args += kubelet.command_args(container, env, image)
        rec.cid = await asyncio.to_thread(self.docker.run_detached, args)
        self.cids.add(rec.cid)
        rec.phase, rec.started = "Running", jobctl.now()
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": rec.started}
        await self._pod_status(rec, {"phase": "Running", "startTime": rec.started, "conditions": [ready], "containerStatuses": [
            {"name": container["name"], "image": image, "ready": True, "restartCount": 0, "started": True,
             "state": {"running": {"startedAt": rec.started}}}]})

    async def _waiting(self, rec: PodRec, reason: str, message: str) -> None:
        log.warning("pod %s cannot start: %s", rec.name, message)
        await self._pod_status(rec, {"phase": "Pending", "containerStatuses": [
            {"name": rec.container["name"], "image": rec.container["image"], "ready": False, "restartCount": 0,
             "state": {"waiting": {"reason": reason, "message": message}}}]})

    async def _pod_status(self, rec: PodRec, status: Obj) -> None:
        rec.pod["status"] = {**rec.pod["status"], **status}
        await self.api.patch_status("Pod", rec.name, rec.pod["status"])

    def _save_logs(self, rec: PodRec) -> str:
        assert rec.cid is not None
        text = self.docker.logs(rec.cid)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs" / f"{rec.name}.log").write_text(text)
        return text

    async def _finish(self, rec: PodRec, state: Obj | None) -> None:
        """The container ended: the pod's terminal status, and the controller's verdict."""
        assert rec.cid is not None
        state = state or {"ExitCode": 137, "OOMKilled": False}
        logs = await asyncio.to_thread(self._save_logs, rec)
        await asyncio.to_thread(self.docker.remove, rec.cid)
        self.cids.discard(rec.cid)
        rec.cid = None
        code = int(state.get("ExitCode", 137))
        term = (rec.dir / "termination-log").read_text(errors="replace")
        policy = rec.container.get("terminationMessagePolicy", "File")
        ok = code == 0 and not rec.disrupted
        phase = "Succeeded" if ok else "Failed"
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else ("OOMKilled" if state.get("OOMKilled") else "Error"),
                      "message": kubelet.termination_message(term, logs, policy, not ok),
                      "startedAt": rec.started, "finishedAt": jobctl.now()}
        conds = [{"type": "Ready", "status": "False", "lastTransitionTime": terminated["finishedAt"]}]
        if rec.disrupted:
            conds.append({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                          "message": "preempted (docker stop)", "lastTransitionTime": terminated["finishedAt"]})
        if rec.deleting:
            rec.action = "Ignore"
        elif not ok:
            rec.action = jobctl.failure_action(rec.job, rec.container["name"], code,
                                               {c["type"] for c in conds if c["status"] == "True"})
        await self._pod_status(rec, {"phase": phase, "conditions": conds, "containerStatuses": [
            {"name": rec.container["name"], "image": rec.container["image"], "ready": False, "restartCount": 0,
             "started": False, "state": {"terminated": terminated}}]})
        rec.phase, rec.terminated = phase, terminated  # after the API has it: what tests see, the API shows

    async def _terminate(self, rec: PodRec) -> None:
        """SIGTERM, then SIGKILL after the pod's grace period; a pod never started just fails."""
        if rec.cid is not None:
            grace = int(rec.pod["spec"].get("terminationGracePeriodSeconds", 30))
            await asyncio.to_thread(self.docker.stop, rec.cid, grace)
        elif rec.phase == "Pending":
            rec.phase = "Failed"
            await self._pod_status(rec, {"phase": "Failed"})

    async def _reap(self, rec: PodRec, cid: str) -> None:
        """Graceful stop of a garbage-collected pod's container, its log kept, then removal."""
        grace = int(rec.pod["spec"].get("terminationGracePeriodSeconds", 30))
        await asyncio.to_thread(self.docker.stop, cid, grace)
        rec.cid = cid
        await asyncio.to_thread(self._save_logs, rec)
        rec.cid = None
        await asyncio.to_thread(self.docker.remove, cid)
        self.cids.discard(cid)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _collect(self, job_uid: str) -> None:
        """Garbage collection of a deleted Job: its pods and their containers."""
        for rec in [r for r in self.pods.values() if r.job_uid == job_uid]:
            if rec.cid is not None:
                rec.deleting = True
                self._spawn(self._reap(rec, rec.cid))
                rec.cid = None
            await self.api.delete("Pod", rec.name)
            del self.pods[rec.name]
        self.statuses.pop(job_uid, None)
        self.starts.pop(job_uid, None)

    # ---------------------------------------------------------------- for the tests

    async def disrupt(self, pod_name: str) -> None:
        """Preempt a pod: DisruptionTarget first (as the scheduler does), then a graceful stop."""
        rec = self.pods[pod_name]
        rec.disrupted = True
        cond = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": "preempted (docker stop)", "lastTransitionTime": jobctl.now()}
        await self._pod_status(rec, {"conditions": [*rec.pod["status"].get("conditions", []), cond]})
        await self._terminate(rec)

    def of(self, run: str, phase: str | None = None) -> list[PodRec]:
        """Pods of the run or cache named `run` (by the `saeops.io/run` label), deleted ones too, in
        creation order."""
        return [r for r in self.history.values() if r.pod["metadata"]["labels"].get(LABEL_RUN) == run
                and phase in (None, r.phase)]

    def running(self, run: str) -> list[PodRec]:
        return sorted((r for r in self.of(run, "Running") if r.name in self.pods), key=lambda r: r.index)

    def log_of(self, rec: PodRec) -> str:
        path = self.workdir / "logs" / f"{rec.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_sd(self) -> None:
        if self.sd_file is None:
            return
        targets = []
        for rec in self.pods.values():
            ann = rec.pod["metadata"].get("annotations") or {}
            if rec.phase == "Running" and ann.get("prometheus.io/scrape") == "true":
                targets.append({"targets": [f"{rec.ip}:{ann.get('prometheus.io/port', '9400')}"],
                                "labels": {"kubernetes_namespace": self.ns, "kubernetes_pod_name": rec.name}})
        tmp = self.sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(self.sd_file)
