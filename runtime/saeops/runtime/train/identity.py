"""Run identity: which run an output belongs to, so a rerun resumes only its own training.

The identity is the part of an SAETrainingRun that decides what the trained dictionary is:

- `spec.model` (but not `device` or `batchSize`: where and how fast activations are computed),
- `spec.dataset` and `spec.activations` (the data, its order, or the cache URI it comes from),
- `spec.sae` (but not `useTritonKernel` / `sparsityThresholdForTritonSpmmKernel`: kernel choice),
- `spec.initializer`,
- `spec.trainer` (but not `totalTrainingTokens`, a budget: raising it continues a run, with
  schedules given as fractions stretched to the new length; nor `checkpointInterval`,
  `keepCheckpoints`, `logFrequency`, `progressBar`, `wandb`),

plus, in a cluster, the resource's namespace, name and uid (the operator puts them in
spec.json). Not identity: `parallelism` (a checkpoint resumes on any world size), `resources`,
`suspend`, deadlines, `failurePolicy`, `queueName`, `metrics`, `eval`, `analysis`, `output`
(where the output is, and its credentials). New fields in the identity sections are identity
unless listed here.

Fields are recorded as manifest JSON (camelCase), leaving out values equal to the field's
default (so writing a default explicitly, or a new field with a default, changes
nothing). `latest.json` and each checkpoint's manifest carry the identity; `config.json`
carries the run's manifest, from which it is computed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import xxhash
from pydantic import BaseModel

from saeops.api import AnyResource, SAETrainingRun, SpecError
from saeops.api.layout import CHECKPOINTS, LATEST
from saeops.runtime.analysis.cli import ANALYSIS_DIR
from saeops.runtime.artifacts import CONFIG, METRICS, WEIGHTS
from saeops.runtime.runner import check_dataset_path, open_output
from saeops.runtime.storage import KeyNotFound, Storage, StorageError
from saeops.runtime.train.checkpoint_format import (
    FORCE_NEW_HINT,
    CheckpointDamaged,
    read_pointer,
)

__all__ = ["ARTIFACTS", "check_output", "describe_mismatch", "prepare_output", "run_identity", "start_over"]

log = logging.getLogger("saeops.run")

SECTIONS = ("model", "dataset", "activations", "sae", "initializer", "trainer")
NOT_IDENTITY = {
    "model": {"device", "batchSize"},
    "sae": {"useTritonKernel", "sparsityThresholdForTritonSpmmKernel"},
    "trainer": {"totalTrainingTokens", "checkpointInterval", "keepCheckpoints", "logFrequency", "progressBar",
                "wandb"},
}
ARTIFACTS = (METRICS, f"{CHECKPOINTS}/{LATEST}", CONFIG, WEIGHTS, f"{ANALYSIS_DIR}/", f"{CHECKPOINTS}/")
"""What `start_over` deletes, in this order: metrics.json first (its presence means "finished"),
then the checkpoint pointer, so an interrupted start-over never looks finished or resumable."""


def _fields(run: SAETrainingRun) -> dict[str, Any]:
    """The identity sections as manifest JSON, values equal to their defaults left out."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        model = getattr(run.spec, section)
        if model is None:
            continue
        skip = NOT_IDENTITY.get(section, set())
        exclude = {name for name, f in type(model).model_fields.items() if (f.alias or name) in skip}
        out[section] = model.model_dump(by_alias=True, mode="json", exclude_defaults=True, exclude=exclude)
    return out


_DEFAULT = "(default)"


def _default_at(run: SAETrainingRun, path: list[str]) -> Any:
    """The default of the field at manifest `path` under spec (for messages); `(default)` when
    the path does not lead through models of this run."""
    obj: Any = run.spec
    for i, part in enumerate(path):
        if not isinstance(obj, BaseModel):
            return _DEFAULT
        names = {(f.alias or n): n for n, f in type(obj).model_fields.items()}
        if part not in names:
            return _DEFAULT
        if i == len(path) - 1:
            value = type(obj).model_fields[names[part]].get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                return value.model_dump(by_alias=True, mode="json", exclude_defaults=True)
            return json.loads(json.dumps(value)) if value is not None else None
        obj = getattr(obj, names[part])
    return _DEFAULT


def _diff(here: Any, there: Any, path: list[str], run: SAETrainingRun, out: list[str]) -> None:
    if isinstance(here, dict) and isinstance(there, dict):
        for k in sorted(set(here) | set(there)):
            missing = _default_at(run, [*path, k]) if k not in here or k not in there else None
            _diff(here.get(k, missing), there.get(k, missing), [*path, k], run, out)
    elif here != there:
        out.append(f"spec.{'.'.join(path)}: {_show(here)} != {_show(there)}")


def _owner(run: SAETrainingRun) -> dict[str, str] | None:
    meta = run.metadata
    uid = getattr(meta, "uid", None)  # set in a cluster (spec.json); absent in local runs
    if not uid:
        return None
    return {"namespace": meta.namespace or "default", "name": meta.name, "uid": str(uid)}


def run_identity(run: SAETrainingRun) -> dict[str, Any]:
    """`{"fingerprint", "fields", "owner"}` of a run (JSON; see the module docstring)."""
    fields = _fields(run)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return {"fingerprint": xxhash.xxh3_128_hexdigest(canonical.encode()), "fields": fields, "owner": _owner(run)}


def _show(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v


def _owner_text(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "a run outside a cluster"
    return f"{owner.get('namespace')}/{owner.get('name')} (uid {owner.get('uid')})"


def describe_mismatch(recorded: Any, run: SAETrainingRun) -> str | None:
    """None when `recorded` (an identity) is `run`'s, else what differs: owners, then each
    differing field as `spec.path: this spec's value != recorded value` (a value left out of
    either is the field's default)."""
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("fields"), Mapping):
        return "it records no run identity"
    mine = _owner(run)
    if (recorded.get("owner") or None) != mine:
        return f"it belongs to {_owner_text(recorded.get('owner'))}, not {_owner_text(mine)}"
    diffs: list[str] = []
    _diff(_fields(run), dict(recorded["fields"]), [], run, diffs)
    return f"{', '.join(diffs)} (this spec != recorded)" if diffs else None


def _refuse(where: str, why: str) -> SpecError:
    return SpecError(f"output {where} holds another run's training: {why}; {FORCE_NEW_HINT}")


def check_output(storage: Storage, run: SAETrainingRun) -> None:
    """Raise `SpecError` (one line) unless the output at `storage` is empty of training or holds
    this run's: its checkpoint pointer and its `config.json` must record this run's identity.
    Reads only."""
    ckpt = storage.child(CHECKPOINTS)
    try:
        pointer = read_pointer(ckpt)  # SpecError for an old pickled checkpoint
    except CheckpointDamaged as e:
        log.warning("%s: %s; the checkpoints' own manifests are checked instead", ckpt.url(LATEST), e)
        pointer = None
    if pointer is not None:
        why = describe_mismatch(pointer.get("identity"), run)
        if why is not None:
            raise _refuse(ckpt.url(LATEST), why)
    try:
        config = storage.get_json(CONFIG)
    except KeyNotFound:
        return
    except StorageError as e:
        raise _refuse(storage.url(CONFIG), f"it is unreadable ({e})") from None
    recorded = config.get("identity") if isinstance(config, dict) else None
    if recorded is None and isinstance(config, dict) and isinstance(config.get("run"), dict):
        try:  # config.json keeps the run's manifest: its identity follows from it
            recorded = run_identity(SAETrainingRun.model_validate(config["run"]))
        except ValueError as e:
            raise _refuse(storage.url(CONFIG), f"its run manifest does not validate "
                          f"({str(e).splitlines()[0]})") from None
    why = describe_mismatch(recorded, run)
    if why is not None:
        raise _refuse(storage.url(CONFIG), why)


def prepare_output(res: AnyResource, *, force_new: bool = False) -> list[str]:
    """`saeops run` before launching anything: an SAETrainingRun's output must be empty of
    training or hold this run's (`check_output`), so a refusal is exit 2 even when the run
    would start torchrun. `force_new` (`--force-new`) instead starts over there (`start_over`),
    once, here: never in torchrun workers, whose elastic restarts must resume. Returns what
    was deleted."""
    if not isinstance(res, SAETrainingRun):
        if force_new:
            raise SpecError(f"--force-new applies to SAETrainingRun, not {res.kind} (an ActivationCache resumes "
                            "only with the same settings; choose another storage URI to start over)")
        return []
    from saeops.api.groups import expand_run

    members = expand_run(res)  # one run per dictionary: each has its own output
    outputs = [(m, open_output(m.spec.output)) for m in members]  # bad outputs fail before any delete
    if not force_new:
        for member, storage in outputs:
            check_output(storage, member)
        return []
    check_dataset_path(res.spec.dataset)
    try:
        return [key for _, storage in outputs for key in start_over(storage)]
    except StorageError as e:
        raise SpecError(f"--force-new: {e}") from None


def start_over(storage: Storage) -> list[str]:
    """Delete a previous run's artifacts and checkpoints from the output (`--force-new`);
    returns what was deleted. Other files under the output are left alone."""
    # Crash leftovers first: they would keep the folders below alive.
    temps = sum(len(storage.remove_temp_files(key)) for key in ARTIFACTS)
    deleted = []
    for key in ARTIFACTS:
        if key.endswith("/"):
            n = storage.delete_prefix(key)
            if n:
                deleted.append(f"{key} ({n} files)")
        elif storage.exists(key):
            storage.delete(key)
            deleted.append(key)
    if temps:
        deleted.append(f"{temps} temp files of interrupted writes")
    if deleted:
        log.warning("--force-new: deleted %s from %s", ", ".join(deleted), storage.uri)
    return deleted
