"""Every model tsa loads: teacher families, student families (one adapter file each), the
projector-carrying student module, model refs and their hashes, and the tiny random-weight models."""
