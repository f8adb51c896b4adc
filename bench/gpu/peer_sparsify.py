"""EleutherAI sparsify in the GPU peer benchmark: its public `Trainer` training a `SparseCoder`
with its Triton decoder (the xformers embedding bag; SPARSIFY_DISABLE_TRITON=0 on CUDA), fed by
the stand-in model and dataset of bench/peers/run_sparsify.py (a "layer" that returns rows of
the activation table, so batch i is the harness' batch i).

On CUDA sparsify always wraps the forward in bf16 autocast over fp32 parameters and sets
float32 matmul precision "high"; that is its GPU mode at every shape, fp32 ones included.
Its final checkpoint write (weights + Adam state: ~13 GB at d4096 32x) is skipped: it is I/O,
not training, and would dominate the large shapes.

    python bench/gpu/peer_sparsify.py [--tiny] [--shapes small-fp32,...] [--out rows.jsonl]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from types import ModuleType
from typing import Any

import harness
import torch


class Sparsify:
    name = "sparsify"

    def load(self, device: torch.device) -> str:
        # Before sparsify's import, which picks its decoder once; run_sparsify (the CPU
        # benchmark) only defaults the switch to "1", so this wins.
        os.environ["SPARSIFY_DISABLE_TRITON"] = "0" if device.type == "cuda" else "1"
        import run_sparsify
        import sparsify
        from sparsify import utils

        self.rs: ModuleType = run_sparsify
        self.sp: ModuleType = sparsify
        self.decoder = "triton" if utils.decoder_impl is getattr(utils, "triton_decode", None) else "eager"

        class DeviceReplay(run_sparsify.ReplayModel):  # type: ignore[name-defined,misc]
            """The CPU benchmark's stand-in model, on the activations' device."""

            @property
            def device(self) -> torch.device:
                return self.layers[0].table.device

        self.replay = DeviceReplay
        return str(sparsify.__version__)

    def train(self, ctx: harness.Ctx) -> harness.Trained:
        s, sp, seq = ctx.shape, self.sp, self.rs.SEQ
        if s.batch % seq:
            raise ValueError(f"batch {s.batch} is not a whole number of {seq}-token stand-in sequences")
        t0 = time.perf_counter()
        model = self.replay(ctx.train[: s.tokens])
        dataset = self.rs.PositionDataset(s.tokens)
        with tempfile.TemporaryDirectory() as save_dir:
            cfg = sp.TrainConfig(
                sp.SparseCoderConfig(activation="topk", expansion_factor=s.expansion, k=s.k),
                batch_size=s.batch // seq,
                optimizer="adam",
                lr=harness.LR,
                lr_warmup_steps=0,  # its schedule then decays linearly to 0 (not configurable)
                hookpoints=["layers.0"],
                init_seeds=[harness.SEED],
                log_to_wandb=False,
                save_every=10**9,
                save_dir=save_dir,
            )
            trainer = sp.Trainer(cfg, dataset, model)
            trainer.save = lambda: None  # see the module docstring
            ctx.sync()
            init_s = time.perf_counter() - t0
            train_s = ctx.clock(trainer.fit)

        sae = trainer.saes["layers.0"]
        sae.eval()
        d_sae = sae.num_latents

        def encode(x: torch.Tensor) -> torch.Tensor:
            out = sae.encode(x)
            z = torch.zeros(x.shape[0], d_sae, device=x.device, dtype=out.top_acts.dtype)
            return z.scatter_(1, out.top_indices, out.top_acts)

        def decode(z: torch.Tensor) -> torch.Tensor:
            acts, idx = z.topk(sae.cfg.k, dim=-1, sorted=False)  # the latents encode() set
            return sae.decode(acts, idx)

        lib_dead = (trainer.num_tokens_since_fired["layers.0"] > cfg.dead_feature_threshold).sum().item()
        amp = "bf16 autocast" if ctx.cuda and torch.cuda.is_bf16_supported() else "no autocast"
        extra: dict[str, Any] = {"decoder": self.decoder, "lib_dead_features": float(lib_dead),
                                 "matmul_precision": torch.get_float32_matmul_precision()}
        return harness.Trained(init_s, train_s, encode, decode, f"fp32 params, {amp}, {self.decoder} decoder", extra)


if __name__ == "__main__":
    sys.exit(harness.main(Sparsify(), __doc__ or ""))
