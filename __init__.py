"""tsa: Tempered Self-similarity Alignment for text-to-video diffusion models.

One import name. The repository's top-level folders are its rooms: `tsa_core/` is `tsa.core`,
and `configs/`, `shards/`, `models/`, `media/`, `pipeline/`, `train/`, `view/`, `evaluate/`,
`testing/` and `cli.py` keep their names under `tsa.` (docs/design.md has the import rules).
"""
