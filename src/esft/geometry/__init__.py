"""Weight-space geometry: update norms (interpolation, probes and drift fits come later)."""
