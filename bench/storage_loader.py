"""The trainer's loader reading shards from S3 (a local S3 server) against the same shards on disk.

Writes `--samples` synthetic samples at the config's size through the real writer, uploads the
folder to moto's S3 server started on a free localhost port (tests/s3_server.py, the server the
tests use), and times `train.data.RankLoader` (byte-range reads at the markers' offsets, tar
header checks, `.npy` checks, mask, collation) over `--epochs` epochs for each DataLoader worker
count, from the local folder and from s3://. Also prints the up-front work: opening the output
(one listing, every marker) and the shard size check. Prints samples/s.

    python bench/storage_loader.py --config cogvideox2b_mtsa --samples 24 --workers 0,2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cogvideox2b_mtsa")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--samples-per-shard", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("-o", "--override", action="append", default=[])
    args = ap.parse_args()

    from tsa.configs import load_config
    from tsa.testing.synthetic import make_synthetic_dataset
    from s3_server import S3Server
    from tsa.train.dataset_check import open_dataset
    from train_step import time_loader

    base = load_config(args.config, [f"preprocess.samples_per_shard={args.samples_per_shard}",
                                     "models.teacher.checkpoint=unused", *args.override])
    with tempfile.TemporaryDirectory() as tmp, S3Server() as s3:
        os.environ.update(s3.env())
        local = make_synthetic_dataset(Path(tmp) / "ds", base, n=args.samples, seed=0)
        mb = sum(p.stat().st_size for p in (local / "shards").glob("*.tar")) / 2 ** 20
        t = time.perf_counter()
        url = s3.upload(local, "s3://tsa-bench/ds")
        print(f"{args.samples} samples ({mb / args.samples:.1f} MB a sample) in "
              f"{args.samples // args.samples_per_shard} shards; upload to {s3.endpoint} "
              f"{time.perf_counter() - t:.1f} s")
        # The server's own ceiling: plain boto3 GETs of each sample's byte range, one after another.
        info = open_dataset(url)
        client, bucket = s3.s3, url[len("s3://"):].split("/", 1)[0]
        spans = [(r.shard[len("s3://") + len(bucket) + 1:], min(o for _, o, _ in r.entry) - 512,
                  max(o + n for _, o, n in r.entry)) for refs in info.shard_refs for r in refs]
        t = time.perf_counter()
        for key, start, end in spans:
            client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read()
        dt = time.perf_counter() - t
        print(f"s3    server ceiling (boto3 ranged GET of each whole sample, sequential): {len(spans) / dt:.1f} "
              f"samples/s")
        for where, shards in (("local", str(local)), ("s3", url)):
            t = time.perf_counter()
            info = open_dataset(shards)
            print(f"{where:5s} open_dataset (listing, markers, size check): {time.perf_counter() - t:.3f} s")
            n = args.samples * args.epochs
            for workers in [int(w) for w in args.workers.split(",")]:
                rate, cfg, used = time_loader(info, args.config, len(info.shards), workers, n, args.override)
                print(f"{where:5s} loader config={args.config} align.loss={cfg.align.loss} "
                      f"num_workers={used}: {rate:.1f} samples/s ({n} samples, "
                      f"{rate * mb / args.samples:.0f} MB/s)")


if __name__ == "__main__":
    main()
