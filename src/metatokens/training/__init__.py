"""Training: settings, set-up (devices, parallelism, precision), checkpoints, the loop, pre-training and fine-tuning."""
