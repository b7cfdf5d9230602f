"""Ray clusters as every tsa command meets them: connecting (a local Ray, RAY_ADDRESS or an address; a
cluster that cannot be reached or refuses us is one line within seconds)."""
