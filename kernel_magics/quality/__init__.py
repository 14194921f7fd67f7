"""Model quality: the inference log, feedback, drift and canary analysis."""
