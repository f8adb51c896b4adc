"""Hook names across the two backends, and the hook points people usually want.

TransformerLens names a tensor after its place in a generic transformer (`blocks.3.hook_mlp_out`);
the `huggingface` backend names the module that produces it (`encoder.layer.3.output.dense`).
TransformerLens' architecture adapter says which Hugging Face module each of its components
wraps (`component_mapping`, built from `config.json` alone, no weights), so a TransformerLens
hook `P.hook_out` is the output of that module and `P.hook_in` its input (`module:input`).

Post-norm models (BERT, MiniLM) put the LayerNorm after each residual add, inside the attention
and MLP blocks; there the generic names mislead: `blocks.L.hook_attn_out` is the attention
block's *normalised residual* (= the MLP input), not what attention adds. `usual_hooks` picks,
per layer, the tensors that mean the same thing on every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT = ":input"


@dataclass
class HookMap:
    """TransformerLens hook name <-> Hugging Face module hook name for one architecture."""

    to_hf: dict[str, str] = field(default_factory=dict)
    """TL name (canonical and alias) -> HF name in the adapter's module tree."""
    aliases: dict[str, str] = field(default_factory=dict)
    """TL alias -> canonical TL name."""
    components: dict[str, tuple[str | None, type | None]] = field(default_factory=dict)
    """TL component path -> (HF module path or None, bridge class)."""
    n_layers: int = 0

    def hf_name(self, tl_name: str, modules: set[str] | None = None) -> str | None:
        """The HF name of `tl_name`, fitted to `modules` (a base model lacks the head's prefix)."""
        name = self.to_hf.get(self.aliases.get(tl_name, tl_name))
        if name is None or modules is None:
            return name
        return fit_module_name(name, modules)

    def tl_name(self, hf_name: str) -> str | None:
        """The conventional TL name of the HF tensor `hf_name` (aliases like hook_resid_post win);
        `hf_name` may lack the head's prefix (`encoder.layer.0` for `bert.encoder.layer.0`)."""
        found = [tl for tl, hf in self.to_hf.items() if hf_name in (hf, hf.partition(".")[2])]
        if not found:
            return None
        return sorted(found, key=lambda n: (n.rsplit(".", 1)[-1] not in CONVENTIONAL, n.count("."), n))[0]

    def post_norm(self, layer: int = 0) -> bool:
        """The LayerNorm before the MLP sits inside the attention block (BERT-style post-norm)."""
        ln1 = self.components.get(f"blocks.{layer}.ln1", (None, None))[0]
        attn = self.components.get(f"blocks.{layer}.attn", (None, None))[0]
        return bool(ln1 and attn and ln1.startswith(attn + "."))

    def has(self, tl_component: str) -> bool:
        return tl_component in self.components


CONVENTIONAL = ("hook_resid_pre", "hook_resid_post", "hook_mlp_in", "hook_mlp_out", "hook_attn_out")


def fit_module_name(name: str, modules: set[str]) -> str | None:
    """`bert.encoder.layer.0` in a `BertModel` is `encoder.layer.0`: drop the head's prefix when
    the module tree lacks it; None when the module does not exist there (a virtual component)."""
    base, suffix = (name[: -len(INPUT)], INPUT) if name.endswith(INPUT) else (name, "")
    if base in modules:
        return name
    _, _, rest = base.partition(".")
    if rest and rest in modules:
        return rest + suffix
    return None


def _join(base: str, name: str | None) -> str | None:
    if not name:
        return None
    return f"{base}.{name}" if base else name


def build_hook_map(mapping: dict[str, Any], n_layers: int) -> HookMap:
    """From an adapter's `component_mapping`: top-level names are absolute module paths, a
    sub-component's name is relative to its nearest ancestor that has a module."""
    hm = HookMap(n_layers=n_layers)

    def walk(comp: Any, tl: str, name: str | None, base: str) -> None:
        hf = _join(base, name)
        hm.components[tl] = (hf, type(comp))
        if hf is not None:
            hm.to_hf[f"{tl}.hook_in"] = hf + INPUT
            hm.to_hf[f"{tl}.hook_out"] = hf
        for alias, target in (getattr(comp, "hook_aliases", None) or {}).items():
            if isinstance(target, str):
                hm.aliases[f"{tl}.{alias}"] = f"{tl}.{target}"
        for sub_name, sub in (getattr(comp, "submodules", None) or {}).items():
            walk(sub, f"{tl}.{sub_name}", getattr(sub, "name", None), hf if hf is not None else base)

    for key, comp in mapping.items():
        name = getattr(comp, "name", None)
        if key == "blocks":
            for layer in range(n_layers):
                walk(comp, f"blocks.{layer}", f"{name}.{layer}" if name else None, "")
        else:
            walk(comp, key, name, "")
    for alias, target in list(hm.aliases.items()):
        if target in hm.to_hf:
            hm.to_hf[alias] = hm.to_hf[target]
    return hm


def hook_map_of_bridge(bridge: Any) -> HookMap:
    """The map of a loaded TransformerBridge."""
    return build_hook_map(bridge.adapter.component_mapping, int(bridge.cfg.n_layers))


def hook_map_of_config(path: Path) -> HookMap | None:
    """The map of the model whose `config.json` is in `path`, without loading weights (None when
    TransformerLens has no adapter for the architecture)."""
    try:
        import torch
        from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
        from transformer_lens.model_bridge.sources.transformers.source import (
            determine_architecture_from_hf_config,
        )
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(path))
        arch = determine_architecture_from_hf_config(cfg)
        adapter = ArchitectureAdapterFactory.select_architecture_adapter(
            build_bridge_config_from_hf(cfg, arch, str(path), torch.float32))
        return build_hook_map(adapter.component_mapping, int(adapter.cfg.n_layers))
    except Exception:
        return None


@dataclass
class UsualHook:
    """One usual hook point of one layer, in TransformerLens naming."""

    layer: int
    role: str
    tl_name: str
    note: str = ""


ROLES = ("residual stream", "attention input", "attention output", "MLP input", "MLP output")


def usual_hooks(hm: HookMap) -> list[UsualHook]:
    """Per layer: residual stream after the block, attention input/output, MLP input/output, each
    the tensor with that meaning on this architecture (see the module docstring)."""
    out: list[UsualHook] = []
    for layer in range(hm.n_layers):
        b = f"blocks.{layer}"
        post = hm.post_norm(layer)
        mlp_own = hm.components.get(f"{b}.mlp", (None, None))[0] is not None
        out.append(UsualHook(layer, "residual stream", f"{b}.hook_resid_post"))
        if post:
            out.append(UsualHook(layer, "attention input", f"{b}.hook_resid_pre",
                                 "post-norm: attention reads the residual itself"))
            out.append(UsualHook(layer, "attention output", f"{b}.attn.o.hook_out",
                                 f"the output projection, before the residual add and LayerNorm "
                                 f"({b}.hook_attn_out is the normalised residual after attention)"))
            out.append(UsualHook(layer, "MLP input", f"{b}.hook_mlp_in", f"= {b}.ln1.hook_out, the normalised residual"))
        else:
            out.append(UsualHook(layer, "attention input", f"{b}.ln1.hook_out"))
            out.append(UsualHook(layer, "attention output", f"{b}.hook_attn_out"))
            out.append(UsualHook(layer, "MLP input", f"{b}.mlp.hook_in" if mlp_own else f"{b}.hook_mlp_in"))
        out.append(UsualHook(layer, "MLP output", f"{b}.hook_mlp_out", _sandwich_note(hm, b, "mlp", "ln2_post", post)))
        if not post:
            out[-3].note = _sandwich_note(hm, b, "attn", "ln1_post", post)
    return out


def _sandwich_note(hm: HookMap, b: str, part: str, norm: str, post: bool) -> str:
    """Where the output hook of `part` sits relative to a norm after it (Gemma-2's post norms)."""
    alias = f"{b}.hook_{'mlp' if part == 'mlp' else 'attn'}_out"
    target = hm.aliases.get(alias, "")
    what = "post-feedforward" if part == "mlp" else "post-attention"
    if target == f"{b}.{norm}.hook_out":
        return f"after the {what} norm: what the residual receives ({b}.{part}.hook_out is before it)"
    if hm.has(f"{b}.{norm}"):
        return f"before the {what} norm; the residual receives {b}.{norm}.hook_out"
    if post and part == "mlp":
        return "before the residual add and LayerNorm"
    return ""
