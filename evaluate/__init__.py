"""Judging checkpoints: `tsa sample` (videos for the shipped benchmark prompt sets, on one GPU or
many) and `tsa score` (the official evaluators' files -> the paper's tables with bootstrap
intervals, runs side by side)."""
