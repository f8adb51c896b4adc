"""`saeops cache inspect URI`: a summary of a cache and of its activations' scale."""

from __future__ import annotations

import json
from typing import Any

import safetensors.torch
import torch

from saeops.runtime.cache.format import (
    MANIFEST,
    PROGRESS,
    IncompleteCacheError,
    load_manifest,
    verify_shard,
)
from saeops.runtime.storage import KeyNotFound, Storage, open_storage

__all__ = ["format_inspection", "inspect_cache"]


def _sample(n: int, k: int) -> list[int]:
    """Up to k shard indices spread evenly over 0..n-1 (first and last included)."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def inspect_cache(uri: str | Storage, *, sample_shards: int = 4, verify: bool = True) -> dict[str, Any]:
    """Summarise a cache: manifest fields, tokens/shards/bytes per hook point, and activation scale.

    Scale statistics come from up to `sample_shards` shards per hook point (spread over the
    cache, checksummed when `verify`): mean/min/max over dimensions of the per-dimension RMS,
    and the mean L2 norm of a token's activation vector. An unfinished cache (no manifest)
    gives `{"complete": False, ...}` with the progress recorded so far.
    """
    storage = open_storage(uri) if isinstance(uri, str) else uri
    try:
        manifest = load_manifest(storage)
    except IncompleteCacheError as err:
        try:
            progress = storage.get_json(PROGRESS)
        except KeyNotFound:
            raise err from None  # shards but no progress record: nothing more to report
        hooks = progress.get("hook_points", [])
        done = min((len(progress.get("shards", {}).get(h, [])) for h in hooks), default=0)
        return {
            "uri": storage.uri,
            "complete": False,
            "hook_points": hooks,
            "dtype": progress.get("dtype"),
            "tokens_per_shard": progress.get("tokens_per_shard"),
            "shards_done": done,
            "tokens_done": done * int(progress.get("tokens_per_shard") or 0),
            "identity": progress.get("identity", {}),
        }
    hooks_out: dict[str, Any] = {}
    for h in manifest["hook_points"]:
        shards = manifest["shards"][h]
        d = int(manifest["d_model"][h])
        sumsq = torch.zeros(d, dtype=torch.float64)
        norm_sum, count = 0.0, 0
        picked = _sample(len(shards), sample_shards)
        for i in picked:
            entry = shards[i]
            data = storage.get_bytes(entry["key"])
            if verify:
                verify_shard(entry, data, storage.url(entry["key"]))
            x = safetensors.torch.load(data)["activations"].to(torch.float64)
            sumsq += (x * x).sum(0)
            norm_sum += float(x.norm(dim=1).sum())
            count += x.shape[0]
        rms = (sumsq / max(count, 1)).sqrt()
        hooks_out[h] = {
            "d_model": d,
            "shards": len(shards),
            "tokens": sum(int(e["num_tokens"]) for e in shards),
            "bytes": sum(int(e["bytes"]) for e in shards),
            "stats": {
                "sampled_shards": len(picked),
                "sampled_tokens": count,
                "rms_mean": float(rms.mean()),
                "rms_min": float(rms.min()),
                "rms_max": float(rms.max()),
                "token_norm_mean": norm_sum / max(count, 1),
            },
        }
    return {
        "uri": storage.uri,
        "complete": True,
        "manifest": storage.url(MANIFEST),
        "format_version": manifest["format_version"],
        "created_at": manifest.get("created_at"),
        "model": manifest.get("model", {}),
        "dataset": manifest.get("dataset", {}),
        "dtype": manifest["dtype"],
        "context_size": manifest.get("context_size"),
        "seed": manifest.get("seed"),
        "tokens_per_shard": manifest["tokens_per_shard"],
        "total_tokens": manifest["total_tokens"],
        "total_bytes": sum(v["bytes"] for v in hooks_out.values()),
        "hook_points": hooks_out,
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def _ident(d: Any) -> str:
    if not d:
        return "-"
    if isinstance(d, dict):
        return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None) or "-"
    return json.dumps(d)


def format_inspection(summary: dict[str, Any]) -> str:
    """Human-readable text for `inspect_cache`'s summary (the CLI prints it)."""
    if not summary.get("complete"):
        return "\n".join([
            f"cache       {summary['uri']}",
            "status      INCOMPLETE (no manifest.json): generation did not finish; rerun the ActivationCache to resume",
            f"progress    {summary['shards_done']} shards, {summary['tokens_done']:,} tokens per hook point",
            f"hook points {', '.join(summary['hook_points'])}",
        ])
    hooks = summary["hook_points"]
    lines = [
        f"cache       {summary['uri']}",
        f"status      complete (format v{summary['format_version']}, created {summary['created_at']})",
        f"model       {_ident(summary['model'])}",
        f"dataset     {_ident(summary['dataset'])}",
        f"dtype       {summary['dtype']}   context {summary['context_size']}   seed {summary['seed']}   "
        f"tokens/shard {summary['tokens_per_shard']:,}",
        f"tokens      {summary['total_tokens']:,} per hook point ({len(hooks)} hook point"
        f"{'s' if len(hooks) != 1 else ''}, {_size(summary['total_bytes'])})",
        "",
    ]
    header = ("hook point", "d_model", "shards", "tokens", "size", "rms mean", "rms min", "rms max", "|x| mean")
    rows = [header]
    for h, v in hooks.items():
        st = v["stats"]
        rows.append((h, str(v["d_model"]), str(v["shards"]), f"{v['tokens']:,}", _size(v["bytes"]),
                     f"{st['rms_mean']:.4g}", f"{st['rms_min']:.4g}", f"{st['rms_max']:.4g}",
                     f"{st['token_norm_mean']:.4g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    first = next(iter(hooks.values()))["stats"]
    lines.append(f"(rms: per-dimension root mean square; |x|: token L2 norm; from {first['sampled_shards']} "
                 f"shard(s), {first['sampled_tokens']:,} tokens per hook point)")
    return "\n".join(lines)
