"""Accuracy of checkpoints on every task (KL and lm-eval holdouts come later)."""
