"""Evaluation: metrics, evaluation of a model on a split, the classical baseline."""
