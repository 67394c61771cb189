"""lowbitc benchmarks: timing harness, named baselines and the runner."""
