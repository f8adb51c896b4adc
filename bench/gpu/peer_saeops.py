"""saeops in the GPU peer benchmark: build_dictionary + Initializer + Trainer, as
bench/peers/run_saeops.py (quickstart settings: geometric-median decoder bias, grid-searched
decoder norm, dataset-wise normalisation), with the GPU settings examples/run.yaml names:
bf16 parameters at the bf16 shapes and the Triton kernels on CUDA (`useTritonKernel`).

    python bench/gpu/peer_saeops.py [--tiny] [--shapes small-fp32,...] [--out rows.jsonl]
"""

from __future__ import annotations

import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# The process default for `auto` kernels, read when saeops.kernels is imported (public switch;
# the runtime sets the same from the spec's useTritonKernel). CPU tensors stay on torch.
os.environ.setdefault("SAEOPS_USE_TRITON", "1")

import harness
import torch

HOOK = "h"
REPO = Path(__file__).resolve().parents[2]


def _version() -> str:
    try:
        return version("saeops")
    except PackageNotFoundError:  # the device runs the checkout from PYTHONPATH, not installed
        import tomllib

        return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] + " (source)"


class Saeops:
    name = "saeops"

    def load(self, device: torch.device) -> str:
        from saeops.api import DictionarySpec, InitializerSpec, TrainerSpec
        from saeops.runtime.models import Initializer, build_dictionary
        from saeops.runtime.train.trainer import Trainer

        self.api: dict[str, Any] = dict(
            DictionarySpec=DictionarySpec, InitializerSpec=InitializerSpec, TrainerSpec=TrainerSpec,
            Initializer=Initializer, build_dictionary=build_dictionary, Trainer=Trainer,
        )  # fmt: skip
        return _version()

    def train(self, ctx: harness.Ctx) -> harness.Trained:
        a, s = self.api, ctx.shape
        sae_spec = a["DictionarySpec"](
            hook_point_in=HOOK, act_fn="topk", top_k=s.k, expansion_factor=s.expansion,
            dtype="bfloat16" if s.dtype == "bf16" else "float32", use_triton_kernel=ctx.cuda,
        )  # fmt: skip
        trainer_spec = a["TrainerSpec"](
            total_training_tokens=s.tokens, batch_size=s.batch, lr=harness.LR, seed=harness.SEED, progress_bar=False
        )
        t0 = time.perf_counter()
        model = a["build_dictionary"](sae_spec, d_in=s.d_model, d_out=s.d_model).to(ctx.device)
        if not ctx.warmup:  # the warm-up model only compiles kernels; its init does not matter
            init_spec = a["InitializerSpec"](bias_init_method="geometric_median", grid_search_init_norm=True)
            sample = ctx.train[: init_spec.init_tokens]
            a["Initializer"](init_spec, seed=harness.SEED).initialize(model, sample, sample)
        trainer = a["Trainer"](model, sae_spec, trainer_spec, hook_in=HOOK, hook_out=HOOK, device=ctx.device)
        ctx.sync()
        init_s = time.perf_counter() - t0

        final: dict[str, float] = {}
        train_s = ctx.clock(lambda: final.update(trainer.fit({HOOK: x} for x in ctx.batches())))
        model.eval()
        out_factor = model.norm_factor_out  # dataset-wise: decode() returns the normalised space

        def encode(x: torch.Tensor) -> torch.Tensor:
            return model.encode(x).dense()

        def decode(z: torch.Tensor) -> torch.Tensor:
            return model.decode(z) / out_factor

        kernels = "Triton kernels" if ctx.cuda else "CPU kernels"
        return harness.Trained(
            init_s, train_s, encode, decode, precision=f"{s.dtype} params, {kernels}",
            extra={"lib_train_ev": final.get("explained_variance", float("nan")),
                   "lib_dead_fraction": final.get("dead_fraction", float("nan"))},
        )  # fmt: skip


if __name__ == "__main__":
    sys.exit(harness.main(Saeops(), __doc__ or ""))
