"""`saeops validate --check-model`: fetch only the model's `config.json` (hub, S3, a volume, a
package) and check the manifest's hook names against the architecture on its backend, without
loading weights."""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any

from saeops.api import SpecError
from saeops.api.common import ModelSpec
from saeops.runtime.lm.checks import ModelLoadError, hf_backend_modules, read_config
from saeops.runtime.sources import SourceError, parse_location


def hook_fields(spec: Any) -> list[tuple[str, str]]:
    """(field, hook name) of every hook point a run, cache or sweep trial names."""
    sae = getattr(spec, "sae", None)
    if sae is not None:
        out = []
        if sae.hook_point_in:
            out.append(("spec.sae.hookPointIn", sae.hook_point_in))
        if sae.hook_point_out:
            out.append(("spec.sae.hookPointOut", sae.hook_point_out))
        out += [(f"spec.sae.hookPointsIn[{i}]", h) for i, h in enumerate(sae.hook_points_in)]
        out += [(f"spec.sae.hookPointsOut[{i}]", h) for i, h in enumerate(sae.hook_points_out)]
        return out
    return [(f"spec.hookPoints[{i}]", h) for i, h in enumerate(getattr(spec, "hook_points", []) or [])]


def fetch_config(model: ModelSpec, into: Path) -> Path:
    """A directory holding the model's config.json (only that file is fetched from remote places)."""
    field = "spec.model.path"
    assert model.path is not None
    loc = parse_location(model.path, field)
    if loc.kind in ("local", "package"):
        from saeops.runtime.sources import resolve_source

        return resolve_source(model.path, field).path
    if loc.kind == "s3":
        from saeops.runtime.sources.s3 import open_prefix
        from saeops.runtime.storage import KeyNotFound, StorageError

        try:
            open_prefix(loc.ref, field).get_file("config.json", str(into / "config.json"))
        except KeyNotFound:
            raise ModelLoadError(f"{field}: {loc.ref} has no config.json; upload the saved model directory") from None
        except StorageError as e:
            raise SourceError(f"{field}: {e}") from None
        return into
    from saeops.runtime.sources.cache import hub_cache_dir
    from saeops.runtime.sources.hub import HubSettings, cached_snapshot, hub_error

    settings = HubSettings.from_env()
    cache = hub_cache_dir(model.cache_dir)
    if settings.offline:
        hit = cached_snapshot(cache, loc.ref, model.revision)
        if hit is None:
            raise SourceError(f"{field}: hf://{loc.ref} is not in the hub cache {cache} and HF_HUB_OFFLINE=1")
        return hit[0]
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(loc.ref, "config.json", revision=model.revision, cache_dir=str(cache),
                                    endpoint=settings.endpoint, token=settings.token)).parent
    except Exception as e:
        raise hub_error(e, f"hf://{loc.ref}", field, settings, model.revision) from None


def _tl_known(hm: Any, name: str) -> bool:
    if name in hm.to_hf or name in hm.aliases:
        return True
    parent, _, leaf = name.rpartition(".")
    return leaf.startswith("hook_") and parent in hm.components


def check_model(res: Any) -> str:
    """Raise SpecError naming the first hook point the model lacks; else a one-line summary."""
    from saeops.runtime.lm.hookmap import hook_map_of_config

    spec = getattr(res.spec, "trial_template", res.spec)
    model: ModelSpec = spec.model
    names = hook_fields(spec)
    if model.native is not None:
        from saeops.runtime.lm import load_language_model

        lm = load_language_model(model, device="cpu")
        for field, name in names:
            if not lm.has_hook_point(name):
                close = difflib.get_close_matches(name, lm.hook_points(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpecError(f"{field}: unknown hook point {name!r} for the native model{hint}")
        return f"native model: hook points {', '.join(n for _, n in names)} exist"
    with tempfile.TemporaryDirectory(prefix="saeops-config-") as tmp:
        where = fetch_config(model, Path(tmp))
        read_config(where, "spec.model.path")
        hm = hook_map_of_config(where)
        modules = hf_backend_modules(where) if model.backend == "huggingface" else None
    if model.backend == "huggingface" and modules is None:
        return f"{model.path}: config.json read; the huggingface backend's modules could not be listed without weights"
    if model.backend == "transformer-lens" and hm is None:
        raise SpecError(f"spec.model.backend: TransformerLens has no adapter for {model.path}; "
                        "use backend: huggingface")
    for field, name in names:
        if model.backend == "huggingface":
            assert modules is not None
            ok = name.removesuffix(":input") in modules
            pool = sorted(modules)
            equivalent = hm.hf_name(name, modules) if hm is not None else None
        else:
            ok = _tl_known(hm, name)
            pool = sorted(hm.to_hf)
            equivalent = hm.tl_name(name)
        if not ok:
            other = "huggingface" if model.backend == "transformer-lens" else "transformer-lens"
            if equivalent is not None:
                hint = f"; hook names depend on the backend: that is the {other} name of {equivalent!r}"
            else:
                close = difflib.get_close_matches(name, pool, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{field}: unknown hook point {name!r} for {model.path} (backend {model.backend}){hint}; "
                            f"list them with `saeops hooks {model.path} --backend {model.backend}`")
    layers = f"{hm.n_layers} layers, " if hm is not None else ""
    return f"{model.path}: {layers}hook points {', '.join(n for _, n in names)} exist on backend {model.backend}"
