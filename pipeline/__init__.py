"""Command lines and the job graph: `run`, `demo`, `evaluate`, `threshold`, `train_umci`, `make_synthetic`."""
