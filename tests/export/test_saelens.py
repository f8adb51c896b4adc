"""SAELens format: export, import round trip, refusals, and SAELens itself loading our export.

The SAELens check runs in a separate interpreter (SAELens pins transformer-lens<4, so it cannot
share the main environment): `SAEOPS_SAELENS_PYTHON`, else `bench/peers/.venvs/sae-lens/bin/python`.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saeops.api.training import DictionarySpec
from saeops.runtime.export import ExportError, export_saelens, import_saelens
from saeops.runtime.models import build_dictionary

D, D_OUT, D_SAE = 16, 12, 48
REPO = Path(__file__).resolve().parents[2]

CASES: dict[str, dict[str, object]] = {
    "relu": dict(act_fn="relu"),
    "topk-gated": dict(act_fn="topk", top_k=6),
    "topk-plain": dict(act_fn="topk", top_k=6, sparsity_include_decoder_norm=False),
    "jumprelu-gated": dict(act_fn="jumprelu"),
    "jumprelu-plain": dict(act_fn="jumprelu", sparsity_include_decoder_norm=False),
    "token-wise": dict(act_fn="topk", top_k=6, norm_activation="token-wise"),
    "transcoder": dict(type="transcoder", act_fn="relu"),
    "skip-transcoder-jumprelu": dict(type="transcoder", act_fn="jumprelu", skip_connection=True),
}


def make(case: str):
    kw = dict(CASES[case])
    kind = kw.pop("type", "sae")
    spec = DictionarySpec(type=kind, hook_point_in="blocks.0.ln2.hook_out" if kind == "transcoder"
                          else "blocks.0.hook_resid_post",
                          hook_point_out="blocks.0.hook_mlp_out" if kind == "transcoder" else None,
                          d_sae=D_SAE, **{"norm_activation": "dataset-wise", **kw})
    m = build_dictionary(spec, D, D_OUT if kind == "transcoder" else D)
    g = torch.Generator().manual_seed(hash(case) % 1000)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if m.jumprelu is not None:
            m.jumprelu.log_jumprelu_threshold.fill_(-1.0)
    if spec.norm_activation == "dataset-wise":
        m.set_dataset_norm_factors(3.0, 0.7 if kind == "transcoder" else 3.0)
    return m.eval()


def saelens_python() -> str | None:
    env = os.environ.get("SAEOPS_SAELENS_PYTHON")
    if env:
        return env
    peer = REPO / "bench/peers/.venvs/sae-lens/bin/python"
    return str(peer) if peer.exists() else None


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_layout_and_import_roundtrip(tmp_path: Path, case: str) -> None:
    m = make(case)
    export_saelens(m, tmp_path, metadata={"model_name": "tiny"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert cfg["d_in"] == D and cfg["d_sae"] == D_SAE and cfg["metadata"]["hook_name"] == m.spec.hook_point_in
    assert weights["W_enc"].shape == (D, D_SAE) and weights["W_dec"].shape == (D_SAE, m.d_out)
    assert cfg["normalize_activations"] in ("none", "constant_norm_rescale")
    x = torch.randn(20, D) * 2
    back = import_saelens(tmp_path)
    assert back.spec.type == m.spec.type
    assert torch.allclose(back(x), m(x), atol=1e-4)


@pytest.mark.parametrize(("field", "spec_kw"), [
    ("spec.sae.type", dict(type="clt", hook_points_in=["blocks.0.ln2.hook_out"],
                           hook_points_out=["blocks.0.hook_mlp_out"])),
    ("spec.sae.type", dict(type="lorsa", hook_point_in="blocks.0.ln1.hook_out",
                           hook_point_out="blocks.0.hook_attn_out", lorsa={"n_qk_heads": 2, "d_qk_head": 4})),
    ("spec.sae.useGluEncoder", dict(hook_point_in="blocks.0.hook_resid_post", use_glu_encoder=True)),
    ("spec.sae.actFn", dict(hook_point_in="blocks.0.hook_resid_post", act_fn="batchtopk", top_k=4)),
    ("spec.sae.actFn", dict(type="transcoder", hook_point_in="blocks.0.ln2.hook_out",
                            hook_point_out="blocks.0.hook_mlp_out", act_fn="topk", top_k=4)),
    ("spec.sae.normActivation", dict(hook_point_in="blocks.0.hook_resid_post", norm_activation="batch-wise")),
])
def test_unrepresentable_kinds_name_the_field(tmp_path: Path, field: str, spec_kw: dict[str, object]) -> None:
    m = build_dictionary(DictionarySpec(d_sae=D_SAE, **spec_kw), D)
    with pytest.raises(ExportError, match=field):
        export_saelens(m, tmp_path)


SAELENS_SCRIPT = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    from sae_lens import SAE
    x = load_file(sys.argv[1])["x"]
    out = {}
    for name, path in zip(sys.argv[3::2], sys.argv[4::2]):
        sae = SAE.load_from_disk(path, device="cpu")
        sae.eval()
        with torch.no_grad():
            out[name] = sae(x).contiguous()
    save_file(out, sys.argv[2])
""")


def test_saelens_loads_our_export_and_reconstructs_the_same(tmp_path: Path) -> None:
    python = saelens_python()
    if python is None:
        pytest.skip("SAELens is not installed: set SAEOPS_SAELENS_PYTHON to a python with sae-lens "
                    "(e.g. python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install "
                    "-c <torch==2.13.0 constraints> sae-lens)")
    x = torch.randn(32, D) * 2
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours: dict[str, torch.Tensor] = {}
    args: list[str] = []
    for case in sorted(CASES):
        m = make(case)
        with torch.no_grad():
            ours[case] = m(x)
        export_saelens(m, tmp_path / case)
        args += [case, str(tmp_path / case)]
    script = tmp_path / "run_saelens.py"
    script.write_text(SAELENS_SCRIPT)
    proc = subprocess.run([python, str(script), str(tmp_path / "x.safetensors"), str(tmp_path / "out.safetensors"),
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = load_file(str(tmp_path / "out.safetensors"))
    for case in CASES:
        err = (theirs[case] - ours[case]).abs().max().item()
        assert err <= 1e-5 * max(1.0, ours[case].abs().max().item()), (case, err)
