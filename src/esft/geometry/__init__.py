"""Weight-space geometry: update norms, ES-vs-GRPO deltas, interpolation, direction probes, drift fits."""
