"""Generate an ActivationCache: run the model over the dataset in order and write shards.

Resumable: rerunning skips the tokens of shards already written and verified, without
running the model on windows that contribute only skipped tokens (the special-token mask
depends on token ids alone, so tokenisation is enough to count them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from saeops.api import ActivationCache, SpecError
from saeops.runtime.cache import CacheWriter, format_inspection, inspect_cache
from saeops.runtime.data import ActivationStream, dataset_identity, load_text_dataset
from saeops.runtime.lm import load_language_model
from saeops.runtime.runner import check_dataset_path, open_output

log = logging.getLogger("saeops.cache")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _rows(stream: Any, skip: int) -> Iterator[dict[str, torch.Tensor]]:
    """Kept rows in generation order with tokens, positions and document ids; first `skip` dropped."""
    for wb in stream.window_batches():
        kept = int(wb.mask.sum())
        if skip >= kept:
            skip -= kept
            continue
        acts = stream.model.activations(wb.tokens, stream.hook_points)
        mask = wb.mask
        rows = {h: a[mask.to(a.device)][skip:].cpu() for h, a in acts.items()}
        for name in ("tokens", "positions", "documents"):
            rows[name] = getattr(wb, name)[mask][skip:]
        skip = 0
        yield rows


def generate_cache(res: ActivationCache, *, progress: bool = True) -> str:
    """Write (or finish) the cache; returns a one-paragraph summary."""
    spec = res.spec
    storage = open_output(spec.output)
    check_dataset_path(spec.dataset)
    lm = load_language_model(spec.model)
    lm.check_hook_points(spec.hook_points)
    writer = CacheWriter(
        storage, spec.hook_points, {h: lm.d_model(h) for h in spec.hook_points}, DTYPES[spec.dtype],
        tokens_per_shard=spec.shard_size,
        identity={"model": lm.identity(), "dataset": dataset_identity(spec.dataset)},
        context_size=spec.dataset.context_size, seed=spec.seed,
    )
    done = writer.resume_point()
    if not writer.complete:
        if done:
            log.info("resuming cache generation after %d tokens", done)
        stream = ActivationStream(lm, spec.dataset, spec.hook_points, batch_size=1, shuffle=False,
                                  filter_special_tokens=spec.filter_special_tokens, seed=spec.seed,
                                  documents=load_text_dataset(spec.dataset))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=spec.total_tokens, initial=done, unit="tok", unit_scale=True, desc=res.metadata.name)
        remaining = spec.total_tokens - done
        for rows in _rows(stream, done):
            n = min(len(rows["tokens"]), remaining)
            writer.write({h: rows[h][:n] for h in spec.hook_points}, rows["tokens"][:n],
                         rows["positions"][:n], rows["documents"][:n])
            remaining -= n
            if bar is not None:
                bar.update(n)
            if remaining <= 0:
                break
        if bar is not None:
            bar.close()
        if remaining > 0:
            raise SpecError(
                f"spec.totalTokens={spec.total_tokens}: the dataset ran out after "
                f"{spec.total_tokens - remaining} tokens; lower totalTokens or add text"
            )
        writer.finalize()
    return format_inspection(inspect_cache(storage, sample_shards=2))
