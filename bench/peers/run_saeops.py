"""Train with saeops' public API (build_dictionary + Initializer + Trainer) on the fixed set.

Run by the main venv's python (/work/main/.venv). Settings as in examples/quickstart.yaml
(geometric-median decoder bias, grid-searched decoder norm, dataset-wise normalisation) with the
held-equal ones from common.py. Initialisation uses the first 16,384 training tokens (saeops'
default init sample size) and is timed apart from training.
"""

from __future__ import annotations

import statistics
import time
from importlib.metadata import version

import common

common.quiet()

import floor  # noqa: E402
import torch  # noqa: E402

from saeops.api import DictionarySpec, InitializerSpec, TrainerSpec  # noqa: E402
from saeops.runtime.models import Initializer, build_dictionary  # noqa: E402
from saeops.runtime.train.trainer import Trainer  # noqa: E402

HOOK = "h"


def build(variant: str, tokens: int) -> tuple[DictionarySpec, TrainerSpec]:
    if variant == "topk":
        sae = DictionarySpec(
            hook_point_in=HOOK, act_fn="topk", top_k=common.K, expansion_factor=common.EXPANSION
        )
        extra = {}
    else:
        sae = DictionarySpec(hook_point_in=HOOK, act_fn="relu", expansion_factor=common.EXPANSION)
        extra = {"sparsity_loss_type": "power", "l1_coefficient": common.L1_COEFFICIENT}
    trainer = TrainerSpec(
        total_training_tokens=tokens,
        batch_size=common.BATCH,
        lr=common.LR,
        seed=common.SEED,
        progress_bar=False,
        **extra,
    )
    return sae, trainer


def main() -> None:
    args = common.parse_args(__doc__ or "")
    data = common.setup(args)
    sae_spec, trainer_spec = build(args.variant, data.tokens)
    init_spec = InitializerSpec(bias_init_method="geometric_median", grid_search_init_norm=True)

    t_init = time.perf_counter()
    model = build_dictionary(sae_spec, d_in=common.D_MODEL, d_out=common.D_MODEL)
    sample = data.train[: init_spec.init_tokens]
    Initializer(init_spec, seed=common.SEED).initialize(model, sample, sample)
    trainer = Trainer(model, trainer_spec)
    init_s = time.perf_counter() - t_init

    t0 = time.perf_counter()
    final = trainer.fit({HOOK: x} for x in data.batches())
    train_s = time.perf_counter() - t0

    model.eval()
    out_factor = model.norm_factor_out  # dataset-wise: decode() returns the normalised space

    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode(x).dense()

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode(z) / out_factor

    with torch.no_grad():  # the pair above is the model's own forward
        x = data.eval[:256]
        torch.testing.assert_close(decode(encode(x)), model(x), rtol=1e-4, atol=1e-4)
    metrics = common.evaluate(encode, decode, data.eval)
    # The floor under the same machine load, right after training (the goal is a ratio to it).
    gemm_ms = statistics.median(floor.gemm_seconds(reps=10)) * 1e3
    common.report(
        args,
        "saeops",
        version("saeops"),
        data.tokens,
        train_s,
        metrics,
        init_s=round(init_s, 3),
        gemm_ms=round(gemm_ms, 2),
        lib_dead_fraction=final.get("dead_fraction", float("nan")),
        lib_train_ev=final.get("explained_variance", float("nan")),
        matmul_precision=torch.get_float32_matmul_precision(),
    )


if __name__ == "__main__":
    main()
