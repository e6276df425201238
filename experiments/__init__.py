"""Experiment tooling, a client of the product: the simulator, sweeps, baselines, paired statistics, reports."""
