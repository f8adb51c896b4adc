"""Train with EleutherAI sparsify's public Python `Trainer` on the fixed activation set.

Run by bench/peers/.venvs/eai-sparsify/bin/python. sparsify's trainer hooks a language model, so
the activations are served by a stand-in "model" whose only layer returns rows of the activation
table: input_ids are token positions (sequence r holds positions r*128 .. r*128+127), so a batch of
32 sequences is exactly the harness' batch i. Its cost (one embedding lookup per step) is inside
the timed fit(). Triton is absent (eager embedding-bag decoder), as sparsify does on CPU.
"""

from __future__ import annotations

import os
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import common

common.quiet()
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import sparsify  # noqa: E402
import torch  # noqa: E402
from sparsify import SparseCoderConfig, TrainConfig, Trainer  # noqa: E402
from torch import nn  # noqa: E402

SEQ = 128  # positions per stand-in sequence; BATCH // SEQ sequences per step


class ActivationTable(nn.Module):
    """The one 'layer': position ids -> stored activations (a forward hook sees its output)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


class ReplayModel(nn.Module):
    """Just enough of a HF PreTrainedModel for sparsify's Trainer (config, base_model, device)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ActivationTable(table)])
        self.config = SimpleNamespace(num_hidden_layers=1)
        self.dummy_inputs = {"input_ids": torch.zeros(1, 4, dtype=torch.long)}

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.layers[0](input_ids)


class PositionDataset(torch.utils.data.Dataset):
    """Sequence r = positions [r*SEQ, (r+1)*SEQ) of the training set, in order."""

    def __init__(self, n_tokens: int) -> None:
        self.ids = torch.arange(n_tokens).view(-1, SEQ)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i]}


def main() -> None:
    args = common.parse_args(__doc__ or "")
    if args.variant != "topk":
        raise SystemExit("sparsify trains TopK (or groupmax) coders only; no ReLU+L1")
    data = common.setup(args)
    t_init = time.perf_counter()
    model = ReplayModel(data.train[: data.tokens])
    dataset = PositionDataset(data.tokens)
    with tempfile.TemporaryDirectory() as save_dir:
        cfg = TrainConfig(
            SparseCoderConfig(activation="topk", expansion_factor=common.EXPANSION, k=common.K),
            batch_size=common.BATCH // SEQ,
            optimizer="adam",
            lr=common.LR,
            lr_warmup_steps=0,  # its schedule then decays linearly to 0 (not configurable)
            hookpoints=["layers.0"],
            init_seeds=[common.SEED],
            log_to_wandb=False,
            save_every=10**9,
            save_dir=save_dir,
        )
        trainer = Trainer(cfg, dataset, model)  # type: ignore[arg-type]
        init_s = time.perf_counter() - t_init

        t0 = time.perf_counter()
        trainer.fit()  # includes its final checkpoint write (~19 MB) to save_dir
        train_s = time.perf_counter() - t0

    sae = trainer.saes["layers.0"]
    sae.eval()
    d_sae = sae.num_latents

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = sae.encode(x)
        return torch.zeros(x.shape[0], d_sae).scatter_(1, out.top_indices, out.top_acts)

    def decode(z: torch.Tensor) -> torch.Tensor:
        acts, idx = z.topk(sae.cfg.k, dim=-1, sorted=False)  # the latents encode() set, exactly
        return sae.decode(acts, idx)

    metrics = common.evaluate(encode, decode, data.eval)
    with torch.no_grad():  # cross-check: its own FVU on the last training batch
        last = data.train[(data.steps - 1) * common.BATCH : data.steps * common.BATCH]
        lib_train_ev = 1 - sae(last).fvu.item()
    lib_dead = (trainer.num_tokens_since_fired["layers.0"] > cfg.dead_feature_threshold).sum().item()
    common.report(
        args,
        "eai-sparsify",
        sparsify.__version__,
        data.tokens,
        train_s,
        metrics,
        init_s=round(init_s, 3),
        lib_dead_features=float(lib_dead),
        lib_train_ev=round(lib_train_ev, 5),
        matmul_precision=torch.get_float32_matmul_precision(),
    )


if __name__ == "__main__":
    main()
