"""`saeops hooks MODEL_OR_MANIFEST`: the hook points of a model on one backend, with their widths,
the usual ones per layer, their names on the other backend, and what a transcoder, CLT or
Lorsa would read and write."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from saeops.api import SpecError
from saeops.api.common import ModelSpec
from saeops.api.load import CommandParser
from saeops.runtime.lm.checks import hf_backend_modules

BACKENDS = ("transformer-lens", "huggingface")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def model_spec_of(target: str, backend: str | None, revision: str | None) -> ModelSpec:
    """The model of a manifest (a run, cache or sweep) or a model location given directly."""
    p = Path(target)
    if p.is_file() and p.suffix in MANIFEST_SUFFIXES:
        from saeops.api import load_resource

        spec = load_resource(p).spec
        spec = getattr(spec, "trial_template", spec)
        model: ModelSpec = spec.model.model_copy()
    else:
        model = ModelSpec(name=target, path=target)
    updates: dict[str, Any] = {"device": "cpu"}
    if backend:
        updates["backend"] = backend
    if revision:
        updates["revision"] = revision
    if model.native is not None and updates.get("backend") == "huggingface":
        raise SpecError("--backend huggingface: a native model exists only on transformer-lens")
    return model.model_copy(update=updates)


def _tl_shapes(lm: Any, tokens: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Every TransformerLens hook that fires in a forward, with the shape it has (aliases too)."""
    bridge = lm.bridge
    names = [n for n in lm.hook_points() if bridge.hook_dict[n].name == n]
    shapes: dict[str, tuple[int, ...]] = {}

    def grab(t: torch.Tensor, hook: Any) -> torch.Tensor:
        shapes.setdefault(hook.name, tuple(t.shape))
        return t

    while True:
        try:
            with torch.inference_mode():
                bridge.run_with_hooks(tokens, fwd_hooks=[(n, grab) for n in names], return_type=None)
            break
        except ValueError as e:  # hooks that need a bridge option switched on (hook_result, ...)
            bad = [n for n in names if f"hook {n} " in str(e)]
            if not bad:
                raise
            names.remove(bad[0])
    return {n: shapes[bridge.hook_dict[n].name] for n in lm.hook_points() if bridge.hook_dict[n].name in shapes}


def _hf_shapes(lm: Any, tokens: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in lm._modules.items():
        def pre(mod: Any, args: tuple, kwargs: dict, name: str = name) -> None:
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            if isinstance(x, torch.Tensor):
                shapes.setdefault(name + ":input", tuple(x.shape))

        def post(mod: Any, args: tuple, out: Any, name: str = name) -> None:
            x = out[0] if isinstance(out, tuple) else out
            if isinstance(x, torch.Tensor):
                shapes.setdefault(name, tuple(x.shape))

        handles += [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            lm._call(tokens.to(lm.device), None)
    finally:
        for h in handles:
            h.remove()
    return dict(sorted(shapes.items(), key=lambda kv: list(lm._modules).index(kv[0].removesuffix(":input"))))


def describe(lm: Any) -> dict[str, Any]:
    """Everything `saeops hooks` prints, as data."""
    bos = lm.bos_token_id if lm.bos_token_id is not None else 0
    tokens = torch.tensor([[bos, bos]], dtype=torch.long)
    tl = lm.backend == "transformer-lens"
    shapes = _tl_shapes(lm, tokens) if tl else _hf_shapes(lm, tokens)
    hm = lm.hook_map()
    modules = set(lm._modules) if not tl else (hf_backend_modules(lm.source.path) if lm.source else None)
    other = "huggingface" if tl else "transformer-lens"

    def width(name: str) -> str:
        s = shapes.get(name)
        return "x".join(str(d) for d in s[2:]) if s else "?"

    def here(tl_name: str) -> str | None:
        return tl_name if tl else (hm.hf_name(tl_name, modules) if hm else None)

    def there(name: str) -> str | None:
        if hm is None or lm.spec.native is not None:
            return None
        return hm.hf_name(name, modules) if tl else hm.tl_name(name)

    usual: list[dict[str, Any]] = []
    if hm is not None:
        from saeops.runtime.lm.hookmap import usual_hooks

        for u in usual_hooks(hm):
            name = here(u.tl_name)
            if name is None or not lm.has_hook_point(name):
                continue
            usual.append({"layer": u.layer, "role": u.role, "name": name, "width": width(name),
                          other: there(name), "note": u.note})
    by = {(u["layer"], u["role"]): u["name"] for u in usual}
    layers = sorted({u["layer"] for u in usual})
    kinds: dict[str, Any] = {}
    if layers:
        mid = layers[len(layers) // 2]
        if (mid, "MLP input") in by and (mid, "MLP output") in by:
            kinds["transcoder"] = {"hookPointIn": by[(mid, "MLP input")], "hookPointOut": by[(mid, "MLP output")]}
        if all((n, r) in by for n in layers for r in ("MLP input", "MLP output")):
            kinds["clt"] = {"hookPointsIn": [by[(n, "MLP input")] for n in layers],
                            "hookPointsOut": [by[(n, "MLP output")] for n in layers]}
        if (mid, "attention input") in by and (mid, "attention output") in by:
            kinds["lorsa"] = {"hookPointIn": by[(mid, "attention input")], "hookPointOut": by[(mid, "attention output")]}
    return {
        "model": lm.spec.name, "path": lm.spec.path, "backend": lm.backend, **(lm.source.identity() if lm.source else {}),
        "layers": len(layers), "postNorm": bool(hm and hm.post_norm()),
        "usual": usual, "kinds": kinds,
        "all": [{"name": n, "shape": list(s), other: there(n)} for n, s in shapes.items()],
    }


def format_text(d: dict[str, Any], show_all: bool) -> str:
    other = "huggingface" if d["backend"] == "transformer-lens" else "transformer-lens"
    rev = f" @ {d['revision'][:12]}" if d.get("revision") else ""
    norm = "post-norm (LayerNorm after each residual add)" if d["postNorm"] else "pre-norm"
    lines = [f"{d['model']}{rev}: backend {d['backend']}, {d['layers']} layers, {norm}",
             f"usual hook points (width per token; = the {other} name of the same tensor):"]
    w = max([len(u["name"]) for u in d["usual"]] + [10])
    notes: dict[str, str] = {}
    for u in d["usual"]:
        eq = f"  = {u[other]}" if u.get(other) else ""
        lines.append(f"  {u['layer']:>3}  {u['role']:<17} {u['name']:<{w}}  [{u['width']}]{eq}")
        if u["note"]:
            notes.setdefault(u["role"], u["note"].replace(f"blocks.{u['layer']}.", "blocks.L."))
    lines += [f"  {role}: {note}" for role, note in notes.items()]
    if d["kinds"]:
        lines.append("what the dictionary kinds would read and write (spec.sae):")
        for kind, fields in d["kinds"].items():
            shown = {k: (v if isinstance(v, str) or len(v) <= 3 else [*v[:2], "...", v[-1]]) for k, v in fields.items()}
            lines.append(f"  {kind:<10} " + ", ".join(f"{k}: {v}" for k, v in shown.items()))
    lines.append("names depend on spec.model.backend; the other backend's names are given after '='")
    if show_all:
        lines.append(f"all {len(d['all'])} hook points (shape [batch, pos, ...] of a 2-token forward):")
        for h in d["all"]:
            eq = f"  = {h[other]}" if h.get(other) else ""
            lines.append(f"  {h['name']}  {h['shape']}{eq}")
    else:
        lines.append(f"{len(d['all'])} hook points in all: --all lists them")
    return "\n".join(lines)


def main_hooks(argv: Sequence[str]) -> int:
    """Entry point of `saeops hooks` (parses its own arguments)."""
    p = CommandParser(prog="saeops hooks", description=__doc__)
    p.add_argument("model", help="a manifest (its spec.model) or a model: package:NAME, hf://ORG/NAME, "
                                 "ORG/NAME, s3://bucket/prefix or a local directory")
    p.add_argument("--backend", choices=BACKENDS, help="default: the manifest's, else transformer-lens")
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--all", action="store_true", help="list every hook point with its shape")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(list(argv))
    from saeops.runtime.launch import bad_input_types
    from saeops.runtime.lm import load_language_model

    spec = model_spec_of(args.model, args.backend, args.revision)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    try:
        lm = load_language_model(spec, device="cpu")
        d = describe(lm)
    except bad_input_types() as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(str(e).splitlines()[0]) from None
    print(json.dumps(d, indent=1) if args.json else format_text(d, args.all), file=sys.stdout)
    return 0
