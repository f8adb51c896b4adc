"""What a kubelet does with a pod's spec, as `docker run` arguments (pure functions).

Covered: command/args with `$(VAR)` expansion, env (values, downward-API fields, Secret and
ConfigMap keys), ConfigMap/Secret volumes as read-only files, emptyDirs as tmpfs, the
termination-message file, securityContext (runAsUser/Group, fsGroup, runAsNonRoot,
readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation), resource limits and
/etc/hosts entries. Anything else a pod asks for raises `PodConfigError`: the pod then stays
Pending with that reason, as with a kubelet that cannot start it, instead of running differently.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_LOG_LINES = 80
"""kubelet's FallbackToLogsOnError: the last 80 lines, at most 2048 bytes."""
TERMINATION_LOG_BYTES = 2048
TERMINATION_FILE_BYTES = 4096
NODE_NAME = "emulated-node"
HOST_IP = "127.0.0.1"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


class PodConfigError(Exception):
    """The pod cannot start as specified (the kubelet's CreateContainerConfigError)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`,
    references to undefined variables stay as written."""
    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(repl, text)


def quantity(q: str | int | float) -> Decimal:
    """A Kubernetes quantity (`500m`, `2`, `4Gi`, `1e3`) as a number."""
    text = str(q).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)]:
            return Decimal(text[: -len(suffix)]) * Decimal(_SUFFIXES[suffix])
    return Decimal(text)


def field_value(path: str, pod: Obj) -> str:
    """A downward-API `fieldRef.fieldPath` of the pod."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"), "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"), "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        value = simple[path]
        if value is None:
            raise PodConfigError(f"fieldRef {path} has no value yet")
        return str(value)
    m = _FIELD_KEY.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise PodConfigError(f"fieldRef {path} is not supported by this kubelet")


def _data_of(obj: Obj) -> dict[str, str]:
    """A Secret's or ConfigMap's keys as text (Secret `data` is base64; kmock keeps `stringData`)."""
    out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()} \
        if obj.get("kind") == "Secret" else dict(obj.get("data") or {})
    out.update(obj.get("stringData") or {})
    return out


def _key_ref(kind: str, ref: Obj, objects: dict[tuple[str, str], Obj]) -> str | None:
    obj = objects.get((kind, ref.get("name", "")))
    data = _data_of(obj) if obj is not None else None
    if data is None or ref.get("key") not in data:
        if ref.get("optional"):
            return None
        what = f"{kind} {ref.get('name')!r}" + ("" if data is None else f" has no key {ref.get('key')!r}")
        raise PodConfigError(f"{what}{' not found' if data is None else ''}")
    return data[ref["key"]]


def container_env(container: Obj, pod: Obj, objects: dict[tuple[str, str], Obj], injected: dict[str, str]) -> dict[str, str]:
    """The container's environment, in order, with `$(VAR)` expanded against earlier entries."""
    env: dict[str, str] = dict(injected)
    for entry in container.get("envFrom") or []:
        raise PodConfigError(f"envFrom is not supported by this kubelet ({entry})")
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom") or {}
        value: str | None
        if "fieldRef" in source:
            value = field_value(source["fieldRef"]["fieldPath"], pod)
        elif "secretKeyRef" in source:
            value = _key_ref("Secret", source["secretKeyRef"], objects)
        elif "configMapKeyRef" in source:
            value = _key_ref("ConfigMap", source["configMapKeyRef"], objects)
        elif "resourceFieldRef" in source:
            raise PodConfigError("resourceFieldRef is not supported by this kubelet")
        else:
            value = ""
        if value is not None:
            env[name] = value
    return env


@dataclass
class Mounts:
    """Host-side files for the pod's volumes and the docker arguments that mount them."""

    args: list[str] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)


def volume_mounts(pod: Obj, container: Obj, objects: dict[tuple[str, str], Obj], host_dir: Path,
                  claims_dir: Path | None = None) -> Mounts:
    """ConfigMap and Secret volumes as read-only files; emptyDirs as tmpfs; a PersistentVolumeClaim
    as a host directory per claim under `claims_dir`, shared by every pod that names it (what a
    ReadWriteMany claim gives; one host, so ReadWriteOnce behaves the same)."""
    out = Mounts()
    volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise PodConfigError(f"volumeMount {mount['name']}: subPath is not supported by this kubelet")
        vol = volumes.get(mount["name"])
        if vol is None:
            raise PodConfigError(f"volumeMount {mount['name']} names no volume")
        path = mount["mountPath"]
        if "emptyDir" in vol:
            opts = "rw,exec,nosuid,nodev,mode=1777"
            size = (vol["emptyDir"] or {}).get("sizeLimit")
            if size:
                opts += f",size={int(quantity(size))}"
            out.args += ["--tmpfs", f"{path}:{opts}"]
            continue
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            target = (claims_dir or host_dir / "claims") / claim
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)  # a fresh volume the pod's non-root user can write (fsGroup's effect)
            ro = ":ro" if mount.get("readOnly") or vol["persistentVolumeClaim"].get("readOnly") else ""
            out.args += ["-v", f"{target}:{path}{ro}"]
            continue
        for kind, key, name_key in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
            if key in vol:
                src = vol[key]
                obj = objects.get((kind, src.get(name_key, "")))
                if obj is None:
                    if src.get("optional"):
                        data: dict[str, str] = {}
                    else:
                        raise PodConfigError(f"volume {mount['name']}: {kind} {src.get(name_key)!r} not found")
                else:
                    data = _data_of(obj)
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                target = host_dir / mount["name"]
                for item in items:
                    if item["key"] not in data:
                        raise PodConfigError(f"volume {mount['name']}: {kind} has no key {item['key']!r}")
                    out.files[target / item["path"]] = data[item["key"]]
                out.files.setdefault(target / ".keep", "")
                # The kubelet mounts ConfigMaps and Secrets read-only whatever the mount says.
                out.args += ["-v", f"{target}:{path}:ro"]
                break
        else:
            raise PodConfigError(f"volume {mount['name']}: only emptyDir, configMap, secret and persistentVolumeClaim are supported")
    return out


def security_args(pod: Obj, container: Obj, image_user: str) -> list[str]:
    """securityContext -> docker flags (the container's settings win over the pod's)."""
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    csc = container.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    effective = str(uid) if uid is not None else (image_user.split(":")[0] or "0")
    if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and effective in ("0", "root"):
        raise PodConfigError("container has runAsNonRoot and image will run as root")
    if csc.get("privileged"):
        raise PodConfigError("privileged containers are not run here")
    args: list[str] = []
    if uid is not None:
        args += ["--user", f"{uid}:{gid if gid is not None else 0}"]
    elif gid is not None:
        raise PodConfigError("runAsGroup without runAsUser is not supported by this kubelet")
    for g in [psc.get("fsGroup"), *(psc.get("supplementalGroups") or [])]:
        if g is not None:
            args += ["--group-add", str(g)]
    if csc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    caps = csc.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        args += ["--cap-drop", cap]
    for cap in caps.get("add") or []:
        args += ["--cap-add", cap]
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise PodConfigError(f"seccompProfile {seccomp} is not supported by this kubelet")
    return args


def resource_args(container: Obj) -> list[str]:
    limits = (container.get("resources") or {}).get("limits") or {}
    args: list[str] = []
    if "cpu" in limits:
        args += ["--cpus", f"{quantity(limits['cpu']):f}"]
    if "memory" in limits:
        args += ["--memory", str(int(quantity(limits["memory"])))]
    return args


def command_args(container: Obj, env: dict[str, str], image: str) -> list[str]:
    """`[--entrypoint X] IMAGE [ARGS...]`: `command` replaces the entrypoint, `args` the CMD."""
    command = [expand(str(c), env) for c in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    if command:
        return ["--entrypoint", command[0], image, *command[1:], *args]
    return [image, *args]


def termination_message(file_text: str, logs: str, policy: str, failed: bool) -> str:
    """What the kubelet reports as `state.terminated.message`."""
    message = file_text.encode()[:TERMINATION_FILE_BYTES].decode(errors="ignore")
    if not message and failed and policy == "FallbackToLogsOnError":
        tail = "\n".join(logs.splitlines()[-TERMINATION_LOG_LINES:])
        message = tail.encode()[-TERMINATION_LOG_BYTES:].decode(errors="ignore")
    return message
