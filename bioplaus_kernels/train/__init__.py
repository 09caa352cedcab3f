"""Training harness: data, models, training loops and the command-line interface."""
