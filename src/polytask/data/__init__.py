"""Tables in, tensors out: reading, splitting, preprocessing and batching."""
