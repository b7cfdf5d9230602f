"""Generating videos from checkpoints: `tsa sample` and the prompt sets."""
