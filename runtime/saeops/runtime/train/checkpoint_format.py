"""The checkpoint files: tensors as safetensors, everything else as JSON, checksums, the pointer.

A checkpoint is a folder `step-NNNNNNNN/` under the run's `checkpoints/` prefix:

    tensors.safetensors   every tensor of the state (weights, optimizer moments, RNG states,
                          metric window, feature tracker), flat, named by their path
    state.json            the rest: plain JSON (numbers, strings, lists, dicts); a tensor's
                          place holds {"__tensor__": NAME}; tuples and dicts with non-string keys
                          (the optimizer's per-parameter state) are tagged so they come back as such
    manifest.json         written last: step, run identity, and bytes + xxh3_128 of the two files

and `latest.json` beside the folders names the newest complete one. Reading builds only
dicts, lists, tuples, numbers, strings and tensors: no object is ever unpickled, so a file
planted in shared storage cannot run code. Checkpoints written before this format (a pickled
`state.pt`) are refused, never loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.torch
import torch

from saeops.api import SpecError
from saeops.api.layout import LATEST, checkpoint_dir
from saeops.runtime.cache.format import CacheCorruptError, verify_shard, xxh3_hex
from saeops.runtime.storage import KeyNotFound, Storage, StorageError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LATEST",
    "MANIFEST",
    "STATE",
    "TENSORS",
    "CheckpointDamaged",
    "decode",
    "encode",
    "read_checkpoint",
    "read_pointer",
    "safetensors_bytes",
    "step_of",
    "write_checkpoint",
]

FORMAT = "saeops-checkpoint"
FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
MANIFEST = "manifest.json"
FORCE_NEW_HINT = ("start a new output (spec.output.storageUri or --output), or rerun with --force-new to start "
                  "over in this one (it deletes the output's checkpoints and artifacts)")

_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


class CheckpointDamaged(Exception):
    """A checkpoint folder cannot be used (missing, truncated, checksum mismatch, unparsable);
    the message says why in a few words."""


# -- state <-> (tensors, JSON) ------------------------------------------------------------


def encode(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split `state` into flat named tensors (contiguous, on the CPU) and a JSON-able document."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            name = path or "tensor"
            while name in tensors:  # keys "0" and 0 in one dict would name the same path
                name += "_"
            t = obj.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr and ptr in storages:  # safetensors refuses tensors that share memory
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            tensors[name] = t
            return {_TENSOR: name}
        if isinstance(obj, Mapping):
            items = [(k, walk(v, f"{path}/{k}" if path else str(k))) for k, v in obj.items()]
            if all(isinstance(k, str) and not k.startswith("__") for k, _ in items):
                return dict(items)
            return {_DICT: [[walk(k, f"{path}/key"), v] for k, v in items]}
        if isinstance(obj, tuple):
            return {_TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"checkpoint state at {path or '/'} holds a {type(obj).__name__}: only tensors "
                        "and plain data are saved")

    return tensors, walk(state, "")


def decode(doc: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `encode`; raises `CheckpointDamaged` on anything it did not write."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        if isinstance(obj, dict):
            if len(obj) == 1 and _TENSOR in obj:
                if obj[_TENSOR] not in tensors:
                    raise CheckpointDamaged(f"{STATE} names tensor {obj[_TENSOR]!r} that {TENSORS} lacks")
                return tensors[obj[_TENSOR]]
            if len(obj) == 1 and _TUPLE in obj and isinstance(obj[_TUPLE], list):
                return tuple(walk(v) for v in obj[_TUPLE])
            if len(obj) == 1 and _DICT in obj and isinstance(obj[_DICT], list):
                pairs = obj[_DICT]
                if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                    raise CheckpointDamaged(f"{STATE} has a malformed {_DICT} entry")
                out = {}
                for k, v in pairs:
                    key = walk(k)
                    if isinstance(key, list | dict | torch.Tensor):
                        raise CheckpointDamaged(f"{STATE} has an unhashable key")
                    out[key] = walk(v)
                return out
            return {k: walk(v) for k, v in obj.items()}
        return obj

    return walk(doc)


# -- safetensors --------------------------------------------------------------------------

_ST_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> memoryview:
    """`tensors` (contiguous, CPU) in the safetensors format, copied once into one buffer.

    `safetensors.torch.save` copies every tensor into bytes, then the whole into another buffer
    (about 6x slower on a 57 MB checkpoint); the format is an 8-byte header length, a JSON header
    (padded with spaces to 8 bytes) of dtype, shape and data offsets, then the data."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _ST_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which checkpoints do not store")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    buf = np.empty(8 + len(head) + offset, dtype=np.uint8)  # no zero-fill: every byte is written below
    buf[:8] = np.frombuffer(len(head).to_bytes(8, "little"), dtype=np.uint8)
    buf[8 : 8 + len(head)] = np.frombuffer(head, dtype=np.uint8)
    base = 8 + len(head)
    for name, t in tensors.items():
        begin, end = header[name]["data_offsets"]
        if end > begin:  # numpy's copy is a memcpy: ~7x faster than torch's uint8 copy_ here
            buf[base + begin : base + end] = t.reshape(-1).view(torch.uint8).numpy()
    return memoryview(buf)


# -- files --------------------------------------------------------------------------------


def _entry(data: bytes | memoryview) -> dict[str, Any]:
    return {"bytes": len(data), "xxh3_128": xxh3_hex(data)}


def write_checkpoint(storage: Storage, step: int, state: Any, identity: Mapping[str, Any]) -> str:
    """Write `state` as checkpoint `step` (the manifest last); returns the manifest's key."""
    tensors, doc = encode(state)
    folder = checkpoint_dir(step)
    blobs: dict[str, bytes | memoryview] = {
        TENSORS: safetensors_bytes(tensors, {"format": FORMAT}),
        # NaN/Inf metrics (a diverged run) are kept as JSON's NaN/Infinity literals.
        STATE: json.dumps(doc, separators=(",", ":")).encode(),
    }
    for name, data in blobs.items():
        storage.put_bytes(f"{folder}/{name}", data)
    key = f"{folder}/{MANIFEST}"
    storage.put_json(key, {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
                           "identity": dict(identity), "files": {n: _entry(d) for n, d in blobs.items()}})
    return key


def read_manifest(storage: Storage, step: int) -> dict[str, Any]:
    """The manifest of checkpoint `step`, checked for form (not yet the files)."""
    key = f"{checkpoint_dir(step)}/{MANIFEST}"
    try:
        manifest = json.loads(storage.get_bytes(key))
    except KeyNotFound:
        raise CheckpointDamaged(f"no {MANIFEST} (the write did not finish)") from None
    except (StorageError, ValueError) as e:
        raise CheckpointDamaged(f"{MANIFEST} unreadable ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointDamaged(f"{MANIFEST} is not a saeops checkpoint manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointDamaged(f"format_version {manifest.get('format_version')!r}; this saeops reads {FORMAT_VERSION}")
    if manifest.get("step") != step or not isinstance(manifest.get("files"), dict):
        raise CheckpointDamaged(f"{MANIFEST} does not describe step {step}")
    return manifest


def _verified(storage: Storage, step: int, name: str, manifest: Mapping[str, Any]) -> bytes:
    entry = manifest["files"].get(name)
    if not isinstance(entry, dict):
        raise CheckpointDamaged(f"{MANIFEST} records no checksum for {name}")
    key = f"{checkpoint_dir(step)}/{name}"
    try:
        data = storage.get_bytes(key)
    except KeyNotFound:
        raise CheckpointDamaged(f"{name} is missing") from None
    except StorageError as e:
        raise CheckpointDamaged(f"{name} unreadable ({str(e).splitlines()[0][:200]})") from None
    if len(data) != entry.get("bytes"):
        raise CheckpointDamaged(f"{name} is truncated or padded: {len(data)} bytes, the manifest says {entry.get('bytes')}")
    try:
        verify_shard(entry, data, storage.url(key))  # the cache's checksum check (xxh3_128)
    except CacheCorruptError:
        raise CheckpointDamaged(f"{name} fails its xxh3_128 checksum") from None
    return data


def read_checkpoint(storage: Storage, step: int) -> tuple[Any, dict[str, Any]]:
    """(state, manifest) of checkpoint `step`, every file verified; `CheckpointDamaged` if not."""
    manifest = read_manifest(storage, step)
    raw_tensors = _verified(storage, step, TENSORS, manifest)
    raw_state = _verified(storage, step, STATE, manifest)
    try:
        tensors = safetensors.torch.load(raw_tensors)  # copies: nothing keeps the file's buffer alive
    except Exception as e:  # safetensors' parser raises its own error type on malformed input
        raise CheckpointDamaged(f"{TENSORS} is not a valid safetensors file ({str(e)[:200]})") from None
    try:
        doc = json.loads(raw_state)
    except ValueError as e:
        raise CheckpointDamaged(f"{STATE} is not valid JSON ({e})") from None
    return decode(doc, tensors), manifest


# -- the pointer --------------------------------------------------------------------------


def step_of(folder: str) -> int | None:
    """The step of a `step-NNNNNNNN` folder name, else None."""
    digits = folder.removeprefix("step-")
    return int(digits) if folder.startswith("step-") and digits.isdigit() else None


def read_pointer(storage: Storage) -> dict[str, Any] | None:
    """`latest.json`: None when absent; `CheckpointDamaged` when unreadable; `SpecError` when it
    names a checkpoint of the old pickled format (refused: loading it could run code)."""
    try:
        pointer = json.loads(storage.get_bytes(LATEST))
    except KeyNotFound:
        return None
    except (StorageError, ValueError) as e:
        raise CheckpointDamaged(f"{LATEST} unreadable ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(pointer, dict):
        raise CheckpointDamaged(f"{LATEST} is not a JSON object")
    if pointer.get("format") != FORMAT:
        key = pointer.get("key")
        raise SpecError(
            f"{storage.url(LATEST)} points to {key if isinstance(key, str) else 'a checkpoint'}, a checkpoint "
            f"format this saeops does not read (a pickled state.pt can run code when loaded, so it is never "
            f"opened); {FORCE_NEW_HINT}"
        )
    if not isinstance(pointer.get("step"), int) or pointer["step"] < 0:
        raise CheckpointDamaged(f"{LATEST} has no valid step")
    return pointer

