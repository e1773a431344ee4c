"""The semantik command: run the product (up, serve) and use it (index, search, workers, gpus, logs)."""
