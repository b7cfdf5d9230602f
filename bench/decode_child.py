"""What the killable decode child costs: `decode_clip` in-process against `DecodeClient.decode`
(the same call in the long-lived child, frames back over a pipe) on one clip, one thread;
and the child's memory (Linux /proc: resident and peak).

    python bench/decode_child.py --width 640 --height 360 --frames 96 --repeat 10
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()

    import torch

    from tsa.configs import load_config
    from tsa.pipeline.decode import decode_clip
    from tsa.pipeline.decode_proc import DecodeClient
    from tsa.media.mp4 import write_mp4
    from tsa.testing.sample_clips import ClipSpec, render_clip

    torch.set_num_threads(1)
    path = Path(tempfile.mkdtemp(prefix="tsa-decode-")) / "clip.mp4"
    pixels, _ = render_clip(ClipSpec("clip.mp4", args.width, args.height, args.frames, 24), seed=0)
    write_mp4(pixels, path, 24)
    client = DecodeClient()
    try:
        for name in ("tiny", "cogvideox2b_mtsa"):
            g = load_config(name, optional=["models.teacher.checkpoint"]).geometry
            client.decode(str(path), g, 600)  # warm-up: the child's imports
            decode_clip(str(path), g)
            t = time.perf_counter()
            for _ in range(args.repeat):
                decode_clip(str(path), g)
            a = (time.perf_counter() - t) / args.repeat
            t = time.perf_counter()
            for _ in range(args.repeat):
                client.decode(str(path), g, 600)
            b = (time.perf_counter() - t) / args.repeat
            mem = {k: v.split()[0] for k, v in (ln.split(":", 1) for ln in open(f"/proc/{client.proc.pid}/status"))
                   if k in ("VmRSS", "VmHWM")}
            print(f"{name:17} output {g.num_frames}x{g.height}x{g.width}: in-process {1000 * a:.0f} ms, "
                  f"child {1000 * b:.0f} ms ({b / a:.2f}x); child RSS {int(mem['VmRSS']) // 1024} MB, "
                  f"peak {int(mem['VmHWM']) // 1024} MB")
    finally:
        client.kill()
        path.unlink()


if __name__ == "__main__":
    main()
