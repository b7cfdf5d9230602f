"""Fixtures for the tests and the demo: synthetic preprocess outputs written through the real shard
writer, and generated sample clips (with broken files among them) in OpenVid's layout."""
