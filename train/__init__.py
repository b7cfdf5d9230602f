"""`tsa train`: shards -> student + projector + diffusion loss + lambda * M-TSA, one readable loop around
small parts (data, loss, optimizer, checkpoint, metrics, distribution, validation videos)."""
