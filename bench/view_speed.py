"""`tsa view` speed at paper or tiny geometry on a synthetic preprocess output.

Writes `--clips` synthetic samples through the real writer, then times: one clip's PNG
(indexed read of teacher features and preview, masks, correspondences, drawing, PNG save)
and the whole gallery (per clip: the same plus two thumbnails). Prints seconds per clip.

    python bench/view_speed.py --config cogvideox2b_mtsa --clips 8
    python bench/view_speed.py --config tiny --clips 32
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tsa.configs import load_config
from tsa.shards.reader import open_output
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.view.atlas import MaskAtlas
from tsa.view.clip import build_view, load_clip, teacher_grid
from tsa.view.gallery import write_gallery
from tsa.view.render import render_view


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cogvideox2b_mtsa")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[1], help="gallery worker processes to time")
    args = ap.parse_args()
    cfg = load_config(args.config, ["models.teacher.checkpoint=unused"])  # no model is loaded
    ratios, taus = [0.1, 0.2, 0.4], [1.0, 0.1, 0.03]
    with tempfile.TemporaryDirectory() as tmp:
        out = make_synthetic_dataset(Path(tmp) / "out", cfg, args.clips)
        info = open_output(out)
        key = info.keys[len(info.keys) // 2]
        grid = teacher_grid(info)

        timings = {"read (indexed sample + masks.h5)": 0.0, "maps (masks + correspondences)": 0.0,
                   "draw": 0.0, "png save": 0.0}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with MaskAtlas.open_if_present(out, grid) as atlas:
                clip = load_clip(info, key, atlas)
            t1 = time.perf_counter()
            view = build_view(clip, ratios, taus)
            t2 = time.perf_counter()
            img = render_view(view)
            t3 = time.perf_counter()
            img.save(Path(tmp) / "clip.png")
            t4 = time.perf_counter()
            for name, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                timings[name] += dt / args.repeats
        print(f"config {args.config}: teacher grid {grid}, image {img.width}x{img.height}, "
              f"{(Path(tmp) / 'clip.png').stat().st_size / 1e6:.2f} MB PNG")
        for name, dt in timings.items():
            print(f"  one clip, {name:34s} {dt:7.3f} s")
        print(f"  one clip, {'total':34s} {sum(timings.values()):7.3f} s")

        for workers in args.workers:
            t0 = time.perf_counter()
            result = write_gallery(info, Path(tmp) / f"site{workers}" / "gallery.html", ratios, taus,
                                   workers=workers)
            dt = time.perf_counter() - t0
            print(f"  gallery of {result.shown} clips, {workers} worker process(es): {dt:.2f} s, "
                  f"{dt / max(1, result.shown):.3f} s per clip (worker start-up included)")


if __name__ == "__main__":
    main()
