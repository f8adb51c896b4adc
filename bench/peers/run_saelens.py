"""Train with SAELens' public trainer (`SAETrainer` + a data-provider iterator) on the fixed set.

Run by bench/peers/.venvs/sae-lens/bin/python. Library defaults are kept except the held-equal
settings (width, k, batch, lr, tokens, fp32, constant lr without warm-up or decay).
"""

from __future__ import annotations

import itertools
import time
from importlib.metadata import version

import common

common.quiet()

import torch  # noqa: E402
from sae_lens import (  # noqa: E402
    LoggingConfig,
    SAETrainer,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.config import SAETrainerConfig  # noqa: E402

NORM_BATCHES = 8  # as llamascopium's dataset-wise norm estimate


def main() -> None:
    args = common.parse_args(__doc__ or "")
    data = common.setup(args)
    t_init = time.perf_counter()
    sae: TopKTrainingSAE | StandardTrainingSAE
    if args.variant == "topk":
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                d_in=common.D_MODEL, d_sae=common.D_SAE, k=common.K, dtype="float32", device="cpu"
            )
        )
    else:
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(
                d_in=common.D_MODEL,
                d_sae=common.D_SAE,
                l1_coefficient=common.L1_COEFFICIENT,
                # Anthropic-style objective, as saeops/llamascopium use for ReLU+L1: E||x|| = sqrt(d).
                normalize_activations="expected_average_only_in",
                dtype="float32",
                device="cpu",
            )
        )
    cfg = SAETrainerConfig(
        total_training_samples=data.tokens,
        train_batch_size_samples=common.BATCH,
        lr=common.LR,
        lr_end=common.LR,  # constant
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(NORM_BATCHES, data.steps),
    )
    # The norm estimate (ReLU variant only) reads from the same provider: give it the first
    # batches once more in front, so that training still sees batches 0..N-1 in order.
    provider = data.batches()
    if args.variant == "relu":
        provider = itertools.chain(itertools.islice(data.batches(), NORM_BATCHES), provider)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider)
    init_s = time.perf_counter() - t_init

    t0 = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t0

    sae.eval()
    metrics = common.evaluate(sae.encode, sae.decode, data.eval)
    common.report(
        args,
        "sae-lens",
        version("sae-lens"),
        data.tokens,
        train_s,
        metrics,
        init_s=round(init_s, 3),
        lib_dead_features=float(trainer.dead_neurons.sum().item()),
        matmul_precision=torch.get_float32_matmul_precision(),
    )


if __name__ == "__main__":
    main()
