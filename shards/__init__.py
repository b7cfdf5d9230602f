"""The shard folder, the contract between `tsa preprocess`, `tsa train` and `tsa view` (SPEC section 4):
layout and names, storage (local, s3://, gs://), the member encoding, the writer primitives, the
reader, dataset.json and the manifest/mask-atlas finalisation."""
