"""Evaluation of trained dictionaries by splicing them into the language model (`saeops eval`)."""

from saeops.runtime.evaluate.cli import evaluate_run, main_eval
from saeops.runtime.evaluate.splice import (
    EvalError,
    evaluate_splice,
    kl_divergence,
    next_token_loss,
    reconstruct,
    splice_hooks,
)

__all__ = [
    "EvalError",
    "evaluate_run",
    "evaluate_splice",
    "kl_divergence",
    "main_eval",
    "next_token_loss",
    "reconstruct",
    "splice_hooks",
]
