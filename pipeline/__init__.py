"""`tsa preprocess`: clips -> shards. Input selection (local folders, OpenVid CSVs, buckets), decode,
the teacher / VAE / text stages on Ray, the run plan and the run itself; the shard format is tsa.shards."""
