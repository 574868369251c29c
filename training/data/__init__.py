"""What the model is trained on: the five-tuple manifest format and the K-bucketed batches built from it."""
