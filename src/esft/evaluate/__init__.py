"""Accuracy of checkpoints on every task, and KL between checkpoints (lm-eval holdouts come later)."""
