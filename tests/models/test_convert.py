"""BatchTopK -> JumpReLU: on held-out activations L0 stays within 10% of k and EV within 0.02."""

from __future__ import annotations

import pytest
import torch

from saeops.api.training import InitializerSpec
from saeops.runtime.models import Initializer, LossContext, build_dictionary
from saeops.runtime.models.convert import convert_batchtopk_to_jumprelu

from .conftest import make_spec
from .test_training import N_FEATURES, _synthetic

D, D_SAE, K, BATCH = 32, 96, 4, 256


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    features = torch.randn(N_FEATURES, D, generator=g)
    features = features / features.norm(dim=-1, keepdim=True)
    model = build_dictionary(make_spec(act_fn="batchtopk", top_k=K, d_sae=D_SAE), D)
    Initializer(InitializerSpec(grid_search_init_norm=True), seed=0).initialize(model, _synthetic(4096, features, g))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        out = model.compute_loss(_synthetic(BATCH, features, g), None, LossContext(k=K))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return model, _synthetic(8192, features, g), _synthetic(4096, features, g)


@pytest.mark.slow
@pytest.mark.parametrize("per_feature", [True, False])
def test_conversion_keeps_l0_and_ev(trained, per_feature: bool) -> None:
    model, sample, held_out = trained
    jr, report = convert_batchtopk_to_jumprelu(model, sample, per_feature, held_out=(held_out, None),
                                               batch_size=BATCH)
    assert jr.spec.act_fn == "jumprelu" and jr.jumprelu is not None
    assert abs(report["l0_after"] - K) <= 0.1 * K, report
    assert abs(report["explained_variance_after"] - report["explained_variance_before"]) <= 0.02, report
    # The converted model is per-token: a token's activations do not depend on its batch.
    x = held_out[:8]
    assert torch.allclose(jr.encode(x).dense()[:1], jr.encode(x[:1]).dense(), atol=1e-6)


def test_conversion_rejects_other_kinds() -> None:
    with pytest.raises(ValueError, match=r"spec\.sae\.actFn"):
        convert_batchtopk_to_jumprelu(build_dictionary(make_spec(act_fn="topk"), 8), torch.randn(64, 8))
