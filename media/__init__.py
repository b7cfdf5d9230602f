"""Video files written with PyAV: the mp4s of `tsa sample`, of validation during training, and of the
demo's sample clips."""
