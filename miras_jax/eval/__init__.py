"""Evaluation: synthetic memory tasks at several context lengths, and held-out perplexity."""

from miras_jax.eval.runner import TASKS, evaluate, plot

__all__ = ["TASKS", "evaluate", "plot"]
