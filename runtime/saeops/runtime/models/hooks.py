"""Hook-point name helpers shared by the dictionary kinds (TransformerLens naming).

TransformerLens 4 (TransformerBridge) names, per block `L`, among others:
`blocks.L.ln1.hook_normalized`, `blocks.L.ln1.hook_out`, `blocks.L.attn.hook_in` (attention
input), `blocks.L.attn.hook_out` == `blocks.L.hook_attn_out` (attention output),
`blocks.L.ln2.hook_out`, `blocks.L.mlp.hook_in` (MLP input), `blocks.L.mlp.hook_out` ==
`blocks.L.hook_mlp_out` (MLP output).
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
ATTN_OUT = re.compile(r"^blocks\.(\d+)\.(?:hook_attn_out|attn\.hook_out|attn\.hook_result)$")
MLP_IN_SUFFIXES = ("ln2.hook_normalized", "ln2.hook_out", "mlp.hook_in", "hook_mlp_in", "mlp.in.hook_in")
MLP_OUT_SUFFIXES = ("hook_mlp_out", "mlp.hook_out", "mlp.out.hook_out")


def layer_of(hook_point: str) -> int | None:
    """The block index in a hook point name (`blocks.3.hook_resid_post` -> 3), else None."""
    m = _LAYER.search(hook_point)
    return int(m.group(1)) if m else None


def suffix_of(hook_point: str) -> str:
    """What follows `blocks.N.` (the whole name when there is no block)."""
    m = _LAYER.search(hook_point)
    return hook_point[m.end():] if m else hook_point


def is_attention_output(hook_point: str) -> bool:
    """True for an attention layer's output (`blocks.N.hook_attn_out` / `blocks.N.attn.hook_out`)."""
    return ATTN_OUT.match(hook_point) is not None


def is_mlp_pair(hook_in: str, hook_out: str) -> bool:
    """True when the pair is one block's MLP input -> that block's MLP output."""
    lin, lout = layer_of(hook_in), layer_of(hook_out)
    return (
        lin is not None and lin == lout
        and suffix_of(hook_in) in MLP_IN_SUFFIXES and suffix_of(hook_out) in MLP_OUT_SUFFIXES
    )


__all__ = ["MLP_IN_SUFFIXES", "MLP_OUT_SUFFIXES", "is_attention_output", "is_mlp_pair",
           "layer_of", "suffix_of"]
