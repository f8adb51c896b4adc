"""Initialisation on the peer case: its time, and the held-out EV and dead fraction after one pass.

The peer case (bench/peers: MiniLM layer 3, 16x, TopK k 32, 98 steps of 4096 tokens, Adam at
lr 4e-4, held-out 32,768 tokens) trained once per case, everything else as in
bench/peers/run_saeops.py. A case is an `InitializerSpec` (python field names, JSON) plus
optional sample sizes of the norm search and the geometric median (module constants of
`saeops.runtime.models.init`, when the code under test has them). Init is timed `--repeat`
times (a fresh model each time; the last one is trained). One JSON line per case.

    .venv/bin/python bench/init/run.py --case none='{}' \\
        --case quickstart='{"bias_init_method": "geometric_median", "grid_search_init_norm": true}'
    .venv/bin/python bench/init/run.py --knee            # sample sizes x seeds (see knee_cases)
    # the code before this change, same script: PYTHONPATH=<old checkout>/runtime:<...>/kernels

Requires bench/peers/data/acts.safetensors (bench/peers/make_activations.py).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "peers"))

import common  # noqa: E402

common.quiet()

import floor  # noqa: E402
import torch  # noqa: E402

import saeops.runtime.models.init as init_module  # noqa: E402

try:
    from saeops.api import DictionarySpec, InitializerSpec, TrainerSpec
except ImportError:  # the code before the api/runtime split (e.g. 860a48f): the specs lived in the runtime
    from saeops.runtime.spec import DictionarySpec, InitializerSpec, TrainerSpec  # type: ignore[no-redef]
from saeops.runtime.models import Initializer, build_dictionary  # noqa: E402
from saeops.runtime.train.trainer import Trainer  # noqa: E402


def make_trainer(model: Any, sae: DictionarySpec, trainer: TrainerSpec, hook_in: str, hook_out: str) -> Trainer:
    """The Trainer of the code under test (its signature changed in the dictionaries' refactor;
    the bench runs the code before and after)."""
    if "hook_in" in inspect.signature(Trainer).parameters:
        return Trainer(model, sae, trainer, hook_in=hook_in, hook_out=hook_out)  # type: ignore[call-arg]
    return Trainer(model, trainer)

HOOK = "h"
QUICKSTART = {"bias_init_method": "geometric_median", "grid_search_init_norm": True}


def knee_cases(seeds: int) -> list[tuple[str, dict[str, Any]]]:
    """Sample sizes of the norm search and the geometric median (and `init_tokens`, which also
    sizes the norm factor), each with `seeds` seeds."""
    cases = []
    for n in (512, 1024, 2048, 4096, 8192, 16384):
        for s in range(seeds):
            cases.append((f"sample-{n}-seed{s}", {"init": {**QUICKSTART, "init_tokens": n}, "seed": common.SEED + s,
                                                   "search_tokens": n, "median_tokens": n}))
    return cases


def parse_case(text: str) -> tuple[str, dict[str, Any]]:
    name, _, body = text.partition("=")
    case = json.loads(body or "{}")
    if "init" not in case:  # a bare InitializerSpec
        case = {"init": case}
    return name, case


def run_case(data: common.Data, name: str, case: dict[str, Any], repeat: int, lr: float, k: int,
             train: bool = True) -> dict[str, Any]:
    seed = int(case.get("seed", common.SEED))
    init_spec = InitializerSpec(**case["init"])
    overrides = {"SEARCH_MAX_TOKENS": case.get("search_tokens"), "MEDIAN_MAX_TOKENS": case.get("median_tokens")}
    saved = {c: getattr(init_module, c) for c, v in overrides.items() if v is not None and hasattr(init_module, c)}
    for c in saved:  # not `k`: that is the TopK k argument
        setattr(init_module, c, overrides[c])
    k = int(case.get("k", k))
    lr = float(case.get("lr", lr))
    sae_spec = DictionarySpec(hook_point_in=HOOK, act_fn="topk", top_k=k, expansion_factor=common.EXPANSION)
    trainer_spec = TrainerSpec(total_training_tokens=data.tokens, batch_size=common.BATCH, lr=lr, seed=seed,
                               progress_bar=False)
    # The sample is drawn from the training tokens (already shuffled), as in run_saeops.py.
    sample = data.train[: init_spec.init_tokens]
    times = []
    try:
        for _ in range(repeat):
            torch.manual_seed(seed)
            model = build_dictionary(sae_spec, d_in=common.D_MODEL, d_out=common.D_MODEL)
            initializer = Initializer(init_spec, seed=seed)
            t0 = time.perf_counter()
            initializer.initialize(model, sample, sample)
            times.append(time.perf_counter() - t0)
    finally:
        for c, v in saved.items():
            setattr(init_module, c, v)
    search = getattr(initializer, "last_search", None)
    # Exploration knobs (not timed): scale the initialised decoder / encoder, e.g. to ask whether
    # another norm than the sample-MSE optimum trains better.
    with torch.no_grad():
        model.W_dec.mul_(float(case.get("dec_scale", 1.0)))
        model.W_enc.mul_(float(case.get("enc_scale", 1.0)))
    init_norm = float(model.decoder_norms().detach().mean())
    model.eval()
    out_factor = model.norm_factor_out

    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode(x).dense()

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode(z) / out_factor

    at_init = common.evaluate(encode, decode, data.eval)
    if not train:  # timing only (e.g. the code before and after, alternated on a shared machine)
        return {"case": name, "init": init_spec.model_dump(exclude_defaults=True), "seed": seed,
                "init_s": [round(t, 3) for t in times], "load": [round(x, 2) for x in os.getloadavg()],
                "ev_init": round(at_init["ev"], 4), "saeops": init_module.__file__}
    model.train()
    trainer = make_trainer(model, sae_spec, trainer_spec, HOOK, HOOK)
    t0 = time.perf_counter()
    trainer.fit({HOOK: x} for x in data.batches())
    train_s = time.perf_counter() - t0
    model.eval()
    after = common.evaluate(encode, decode, data.eval)
    # The machine is shared: the encoder GEMM under the same load, to read times against.
    gemm_ms = statistics.median(floor.gemm_seconds(reps=5)) * 1e3
    row = {
        "case": name,
        "init": init_spec.model_dump(exclude_defaults=True),
        **{k: case[k] for k in ("dec_scale", "enc_scale") if k in case},
        "seed": seed,
        "lr": lr,
        "k": k,
        "steps": data.steps,
        "search_tokens": case.get("search_tokens", getattr(init_module, "SEARCH_MAX_TOKENS", None)),
        "median_tokens": case.get("median_tokens", getattr(init_module, "MEDIAN_MAX_TOKENS", None)),
        "init_s_median": round(statistics.median(times), 3),
        "init_s_min": round(min(times), 3),
        "init_s_max": round(max(times), 3),
        "init_repeats": len(times),
        "gemm_ms": round(gemm_ms, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        "init_norm": round(init_norm, 4),
        "search": None if search is None else {"norm": round(search.norm, 4), "method": search.method,
                                               "evaluations": search.evaluations},
        "ev_init": round(at_init["ev"], 4),
        "dead_init": round(at_init["dead_fraction"], 5),
        "train_s": round(train_s, 2),
        "ev": round(after["ev"], 4),
        "dead_fraction": round(after["dead_fraction"], 5),
        "l0": round(after["l0"], 2),
        "saeops": init_module.__file__,
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--acts", type=Path, default=common.DEFAULT_ACTS)
    ap.add_argument("--case", action="append", default=[], metavar="NAME=JSON",
                    help='InitializerSpec kwargs, or {"init": {...}, "seed": N, "search_tokens": N, "median_tokens": N, '
                         '"dec_scale": F, "enc_scale": F, "k": N, "lr": F}')
    ap.add_argument("--knee", action="store_true", help="the sample-size cases (knee_cases)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per knee point")
    ap.add_argument("--repeat", type=int, default=5, help="initialisations timed per case")
    ap.add_argument("--lr", type=float, default=common.LR, help="default lr (a case may set its own)")
    ap.add_argument("--k", type=int, default=common.K, help="default TopK k (a case may set its own)")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--no-train", action="store_true", help="time the initialisation only (no training)")
    ap.add_argument("--out", type=Path, help="append JSON lines here")
    args = ap.parse_args()
    args.variant = "topk"
    data = common.setup(args)
    try:  # build or load the C++ kernels before anything is timed
        from saeops.kernels import cpu_ext

        cpu_ext.module()
    except ImportError:
        pass
    cases = [parse_case(c) for c in args.case] + (knee_cases(args.seeds) if args.knee else [])
    if not cases:
        cases = [("none", {"init": {}}), ("quickstart", {"init": QUICKSTART})]
    for name, case in cases:
        common.emit(run_case(data, name, case, args.repeat, args.lr, args.k, train=not args.no_train), args.out)


if __name__ == "__main__":
    main()
