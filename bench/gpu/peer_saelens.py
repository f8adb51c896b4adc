"""SAELens in the GPU peer benchmark: `TopKTrainingSAE` trained by its public `SAETrainer` from
a data-provider iterator, as bench/peers/run_saelens.py, library defaults kept (decoder init
norm 0.1, activations rescaled by decoder norms, dense decode). At the bf16 shapes it uses its
own mixed-precision switch (`autocast=True`: bf16 autocast over fp32 parameters); at fp32 ones
it trains in plain fp32.

    python bench/gpu/peer_saelens.py [--tiny] [--shapes small-fp32,...] [--out rows.jsonl]
"""

from __future__ import annotations

import sys
import time
from importlib.metadata import version
from typing import Any

import harness
import torch


class SaeLens:
    name = "sae-lens"

    def load(self, device: torch.device) -> str:
        from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig

        self.api: dict[str, Any] = dict(
            LoggingConfig=LoggingConfig, SAETrainer=SAETrainer, TopKTrainingSAE=TopKTrainingSAE,
            TopKTrainingSAEConfig=TopKTrainingSAEConfig, SAETrainerConfig=SAETrainerConfig,
        )  # fmt: skip
        return version("sae-lens")

    def train(self, ctx: harness.Ctx) -> harness.Trained:
        a, s, dev = self.api, ctx.shape, str(ctx.device)
        autocast = s.dtype == "bf16"
        t0 = time.perf_counter()
        sae = a["TopKTrainingSAE"](
            a["TopKTrainingSAEConfig"](d_in=s.d_model, d_sae=s.d_sae, k=s.k, dtype="float32", device=dev)
        )
        cfg = a["SAETrainerConfig"](
            total_training_samples=s.tokens,
            train_batch_size_samples=s.batch,
            lr=harness.LR,
            lr_end=harness.LR,  # constant
            device=dev,
            autocast=autocast,
            logger=a["LoggingConfig"](log_to_wandb=False),
            n_batches_for_norm_estimate=1,  # unused: no activation normalisation for TopK
        )
        trainer = a["SAETrainer"](cfg=cfg, sae=sae, data_provider=ctx.batches())
        ctx.sync()
        init_s = time.perf_counter() - t0
        train_s = ctx.clock(trainer.fit)
        sae.eval()
        precision = "fp32 params, bf16 autocast" if autocast else "fp32"
        extra = {"lib_dead_features": float(trainer.dead_neurons.sum().item())}
        return harness.Trained(init_s, train_s, sae.encode, sae.decode, precision + ", dense decode", extra)


if __name__ == "__main__":
    sys.exit(harness.main(SaeLens(), __doc__ or ""))
