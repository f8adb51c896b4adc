"""Synthetic activations for cache tests: row r of the stream is identifiable from its tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch

CTX = 16
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
D_MODEL = {"blocks.0.hook_resid_post": 24, "blocks.1.hook_resid_post": 40}
IDENTITY = {"model": {"name": "toy", "revision": "abc"}, "dataset": {"name": "synthetic", "split": "train"},
            "context_size": CTX, "seed": 7}


def make_data(total: int, hooks: list[str] = HOOKS, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(total)
    data = {h: torch.randn(total, D_MODEL[h], generator=g) * (i + 1) for i, h in enumerate(hooks)}
    data["tokens"] = torch.randint(0, 50_000, (total,), generator=g, dtype=torch.int32)
    data["positions"] = (rows % CTX).to(torch.int32)
    data["documents"] = (rows // CTX).to(torch.int64)
    return data


def chunks(data: dict[str, torch.Tensor], hooks: list[str], *, skip: int = 0, chunk: int = 37
           ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """What a generator would yield: uneven chunks (not aligned to shards), starting after `skip` rows."""
    total = data["tokens"].shape[0]
    for a in range(skip, total, chunk):
        b = min(a + chunk, total)
        yield ({h: data[h][a:b] for h in hooks}, data["tokens"][a:b], data["positions"][a:b], data["documents"][a:b])


def row_ids(batch_documents: torch.Tensor, batch_positions: torch.Tensor) -> torch.Tensor:
    """Global stream row index of each row of a batch."""
    return batch_documents * CTX + batch_positions.to(torch.int64)
