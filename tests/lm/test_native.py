import pytest
import torch

from saeops.runtime.lm import ByteTokenizer, UnknownHookPointError, load_language_model
from tests.lm.conftest import native_spec


def tokens(model, n=2, t=12):
    text = "the quick brown fox jumps over the lazy dog"
    ids = model.encode_batch([text] * n)
    return torch.tensor([[model.bos_token_id, *i[: t - 1]] for i in ids])


def test_hook_names_and_width(tiny):
    names = tiny.hook_points()
    assert "blocks.1.hook_resid_post" in names and "blocks.0.hook_mlp_out" in names
    assert tiny.has_hook_point("blocks.0.attn.hook_z")
    assert tiny.d_model("blocks.1.hook_resid_post") == 32
    assert tiny.d_model("blocks.0.attn.hook_z") == 32  # [B, T, heads, d_head] flattened
    assert tiny.unembed().shape == (32, 300)


def test_byte_tokenizer_and_special_tokens(tiny):
    assert isinstance(tiny.tokenizer, ByteTokenizer)
    assert tiny.bos_token_id == 1 and tiny.special_token_ids == {0, 1, 2}
    assert tiny.window_frame(True) == ([1], [])
    assert tiny.tokenizer.decode(tiny.encode_batch(["héllo"])[0]) == "héllo"


def test_activations_match_full_run(tiny):
    x = tokens(tiny)
    hps = ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"]
    acts = tiny.activations(x, hps)
    _, cache = tiny.bridge.run_with_cache(x % 300, names_filter=hps)
    for hp in hps:
        assert acts[hp].shape == (2, 12, 32) and acts[hp].dtype == torch.float32
        torch.testing.assert_close(acts[hp], cache[hp])


def test_stop_early_skips_later_blocks(tiny):
    fired = []
    handle = tiny.bridge.blocks[1].register_forward_hook(lambda *a: fired.append(1))
    try:
        tiny.activations(tokens(tiny), ["blocks.0.hook_resid_post"])
        assert not fired
        tiny.logits(tokens(tiny))
        assert fired
    finally:
        handle.remove()


def test_forward_with_replacement(tiny):
    x = tokens(tiny)
    logits = tiny.logits(x)
    assert logits.shape == (2, 12, 300)
    same = tiny.forward_with_replacement(x, "blocks.0.hook_resid_post", lambda a: a)
    torch.testing.assert_close(same, logits)
    zeroed = tiny.forward_with_replacement(x, "blocks.0.hook_resid_post", torch.zeros_like)
    assert (zeroed - logits).abs().max() > 1e-3


def test_seeded_and_dtype():
    a = load_language_model(native_spec(), device="cpu")
    state = torch.random.get_rng_state()
    b = load_language_model(native_spec(dtype="bfloat16"), device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # loading leaves the global RNG alone
    torch.testing.assert_close(a.unembed(), b.unembed().float(), atol=1e-2, rtol=1e-2)
    x = tokens(a)
    assert b.activations(x, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"].dtype == torch.bfloat16
    assert a.identity() == {"name": "tiny", "backend": "transformer-lens", "dtype": "float32", "path": None,
                            "native": native_spec().native.model_dump(mode="json"), "tokenizer": "bytes"}


def test_unknown_hook_point(tiny):
    with pytest.raises(UnknownHookPointError) as e:
        tiny.activations(tokens(tiny), ["blocks.1.hook_resid_psot"])
    msg = str(e.value)
    assert "\n" not in msg and "'blocks.1.hook_resid_psot'" in msg
    assert "did you mean 'blocks.1.hook_resid_post'" in msg and "saeops hooks" in msg
    assert isinstance(e.value, ValueError)
