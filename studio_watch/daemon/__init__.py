"""The runtime: the composition root (app), pipeline, pause, workers, metrics, alerts, checks."""
