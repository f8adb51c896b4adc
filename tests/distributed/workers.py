"""Worker programs run under torchrun by the tests (or in-process as the reference).

    python -m torch.distributed.run --standalone --nproc-per-node=2 workers.py dp-job SPEC OUT
    python -m torch.distributed.run --standalone --nproc-per-node=2 workers.py tp-equal OUT
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import torch

D = 16


def global_batch(seed: int, index: int, rows: int) -> torch.Tensor:
    """Batch `index` of a deterministic stream of sparse activations (the same in every process)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    feats = torch.randn(64, D, generator=torch.Generator().manual_seed(seed))
    codes = torch.rand(rows, 64, generator=g) * (torch.rand(rows, 64, generator=g) < 0.06)
    return codes @ feats


class SyntheticSource:
    """Rank r of w gets rows [r*B/w, (r+1)*B/w) of every global batch: together the ranks see
    exactly the batches a single process sees."""

    lm = None

    def __init__(self, spec: Any, hooks: list[str], rank: int = 0, world_size: int = 1) -> None:
        self.hook, self.rank, self.world = hooks[0], rank, world_size
        self.batch = spec.trainer.batch_size

    def dims(self) -> dict[str, int]:
        return {self.hook: D}

    def sample(self, n_tokens: int, seed: int) -> dict[str, torch.Tensor]:
        return {self.hook: global_batch(seed, 10**6, n_tokens)}

    def stream(self, seed: int, skip_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        local = self.batch // self.world
        i = skip_batches
        while True:
            rows = global_batch(seed, i, self.batch)[self.rank * local:(self.rank + 1) * local]
            yield {self.hook: rows}
            i += 1


def dp_job(spec_path: str) -> None:
    """Train through TrainingJob (the `saeops run` path) on the synthetic stream."""
    from saeops.api import load_resource
    from saeops.runtime.train.job import TrainingJob

    TrainingJob(load_resource(spec_path), progress=False, source=SyntheticSource).run_job()


def _spec(act_fn: str) -> Any:
    from saeops.api import DictionarySpec, TrainerSpec

    sae = DictionarySpec(hook_point_in="h", act_fn=act_fn, top_k=4, d_sae=64)
    return sae, TrainerSpec(total_training_tokens=64 * 6, batch_size=64, lr=3e-3, log_frequency=2,
                            progress_bar=False, clip_grad_norm=1.0)


def _selected(acts: Any) -> set[tuple[int, int]]:
    rows, cols = (acts.values != 0).nonzero(as_tuple=True)
    return {(int(r), int(acts.indices[r, c])) for r, c in zip(rows, cols, strict=True)}


def tp_equal(out_path: str, data: int, tensor: int) -> None:
    """Every rank trains a ShardedSAE (data x tensor mesh) and, alone, the unsharded reference
    on the global batch; records whether selections match and how far the weights drift."""
    from saeops.runtime.distributed import init_distributed
    from saeops.runtime.distributed.comm import DistributedComm
    from saeops.runtime.distributed.sharded import ShardedSAE
    from saeops.runtime.models import LossContext, build_dictionary
    from saeops.runtime.train.trainer import Trainer

    ctx = init_distributed(data, tensor)
    report: dict[str, Any] = {}
    for act_fn in ("topk", "batchtopk"):
        sae, tr = _spec(act_fn)
        torch.manual_seed(0)
        full = build_dictionary(sae, D, D)
        shard = ShardedSAE.from_full(full, ctx.tensor, data=ctx.data, batch_group=ctx.world)
        ref = Trainer(full, tr)
        dist = Trainer(shard, tr, comm=DistributedComm(ctx, shard))
        same_selection = True
        for step in range(tr.total_steps):
            x = global_batch(1, step, tr.batch_size)
            local = x.chunk(ctx.data.size)[ctx.data.rank]
            lo = ctx.data.rank * local.shape[0]
            with torch.no_grad():
                ctx_k = LossContext(k=4)
                a = _selected(shard.compute_loss(local, None, ctx_k).acts)
                # The reference selects on the global batch; compare this rank's rows of it.
                b = {(r - lo, c) for r, c in _selected(full.compute_loss(x, None, ctx_k).acts)
                     if lo <= r < lo + local.shape[0]}
            same_selection &= a == b
            ref.train_step({"h": x})
            dist.train_step({"h": local})
        got = shard.full_state_dict()
        diff = max(float((got[k] - v).abs().max()) for k, v in full.state_dict().items())
        report[act_fn] = {"same_selection": bool(same_selection), "max_abs_diff": diff}
        # Round trip through the optimizer's unsharded form.
        opt = dist.comm.export_optimizer(dist.optimizer.state_dict())  # type: ignore[union-attr]
        ref_opt = ref.optimizer.state_dict()
        report[act_fn]["optimizer_diff"] = max(
            float((opt["state"][i]["exp_avg"] - ref_opt["state"][i]["exp_avg"]).abs().max())
            for i in ref_opt["state"]
        )
    with open(f"{out_path}.rank{ctx.rank}.json", "w") as f:
        json.dump(report, f)
    ctx.close()


if __name__ == "__main__":
    if sys.argv[1] == "dp-job":
        dp_job(sys.argv[2])
    elif sys.argv[1] == "tp-equal":
        tp_equal(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    from saeops.runtime.entrypoint import exit_now

    exit_now(0)  # as the runtime's own workers end (see exit_now)
