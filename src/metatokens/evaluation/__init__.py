"""Evaluation: loading a model to score, task accuracy by length, perplexity by position, and their reports."""
