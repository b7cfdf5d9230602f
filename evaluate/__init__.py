"""Generating videos from checkpoints: `tsa sample`, prompt sets, validation videos during training."""
