"""`tsa view`: draw what `tsa preprocess` cached (preview tiles, motion heat maps, top-k masks,
teacher correspondence maps) as one PNG per clip or an HTML gallery, without any model."""
