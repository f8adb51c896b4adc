"""Train with llamascopium's public `Initializer` + `Trainer` on the fixed activation set.

Run by bench/peers/.venvs/llamascopium/bin/python. The activation stream is the harness' batches
as `{hook: x, "tokens", "mask"}` dicts (re-iterable: the trainer peeks one batch to size the run
and the initializer another for its search). Library defaults are kept except the held-equal
settings; `amp_dtype` is set to fp32 (its default is bf16 autocast), k is fixed (no k warm-up),
lr warm-up is its minimum of 1 step, then constant.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version

import common

common.quiet()

import torch  # noqa: E402
from llamascopium import Initializer, InitializerConfig, SAEConfig, SparseDictionary  # noqa: E402
from llamascopium.trainer import Trainer, TrainerConfig  # noqa: E402

HOOK = "h"


class Stream:
    """Re-iterable activation stream (each iter() starts again at batch 0)."""

    def __init__(self, data: common.Data) -> None:
        self.data = data

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for x in self.data.batches():
            n = x.shape[0]
            yield {
                HOOK: x,
                "tokens": torch.zeros(n, dtype=torch.long),
                "mask": torch.ones(n, dtype=torch.bool),
            }


def main() -> None:
    args = common.parse_args(__doc__ or "")
    data = common.setup(args)
    stream = Stream(data)
    topk = args.variant == "topk"
    t_init = time.perf_counter()
    sae_cfg = SAEConfig(
        hook_point_in=HOOK,
        hook_point_out=HOOK,
        d_model=common.D_MODEL,
        expansion_factor=common.EXPANSION,
        act_fn="topk" if topk else "relu",
        top_k=common.K,
        device="cpu",
        dtype=torch.float32,
    )
    init_cfg = InitializerConfig(bias_init_method="geometric_median", grid_search_init_norm=True)
    sae = Initializer(init_cfg).initialize_sae_from_config(sae_cfg, activation_stream=stream)
    init_s = time.perf_counter() - t_init

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            TrainerConfig(
                lr=common.LR,
                total_training_tokens=data.tokens,
                lr_scheduler_name="constantwithwarmup",
                lr_warm_up_steps=1,
                k_warmup_steps=0,
                amp_dtype=torch.float32,
                l1_coefficient=common.L1_COEFFICIENT if not topk else None,
                sparsity_loss_type=None if topk else "power",
                n_checkpoints=0,
                exp_result_path=out,
            )
        )
        t0 = time.perf_counter()
        trainer.fit(sae=sae, activation_stream=stream)
        train_s = time.perf_counter() - t0

    sae.eval()
    factor = sae.compute_norm_factor(data.eval[:1], hook_point=HOOK)  # dataset-wise: one constant

    def encode(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(sae.normalize_activations({HOOK: x})[HOOK])

    def decode(z: torch.Tensor) -> torch.Tensor:
        return sae.decode(z) / factor

    metrics = common.evaluate(encode, decode, data.eval)
    assert isinstance(sae, SparseDictionary)
    common.report(
        args,
        "llamascopium",
        version("llamascopium"),
        data.tokens,
        train_s,
        metrics,
        init_s=round(init_s, 3),
        norm_activation=sae.cfg.norm_activation,
        matmul_precision=torch.get_float32_matmul_precision(),
    )


if __name__ == "__main__":
    main()
