"""Training: datasets, the training loop, threshold tuning."""
