"""What reading the rotation with PyAV adds to decoding a clip (pipeline/decode.py).

Writes one H.264 clip at `--width` x `--height` (`--frames` frames; with `--rotation` it is
stored turned and carries a display matrix) and times, best of `--repeat`:
  * probe_rotation: open with PyAV, decode the first frame (+ to RGB when rotated)
  * decode_clip:    the whole decode at the paper geometry (49 frames, 480 x 720), probe included

    python bench/rotation_probe.py --width 1920 --height 1080 --frames 120 --rotation 90
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--rotation", type=int, default=90, choices=[0, 90, 180, 270])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import av
    import numpy as np

    from tsa.configs import load_config
    from tsa.pipeline.decode import decode_clip, probe_rotation
    from tsa.testing.sample_clips import ClipSpec, render_clip

    w, h = (args.height, args.width) if args.rotation in (90, 270) else (args.width, args.height)
    frames, _ = render_clip(ClipSpec("bench", w, h, args.frames, 30), seed=0)
    stored = np.ascontiguousarray(np.rot90(frames, k=args.rotation // 90, axes=(1, 2)))
    geometry = load_config("cogvideox2b_mtsa", ["models.teacher.checkpoint=unused.pth"]).geometry
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with av.open(str(path), "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt = stored.shape[2], stored.shape[1], "yuv420p"
            if args.rotation:
                s.set_display_rotation(-args.rotation)
            for i, f in enumerate(stored):
                p = av.VideoFrame.from_ndarray(f, format="rgb24")
                p.pts = i
                c.mux(s.encode(p))
            c.mux(s.encode())
        assert probe_rotation(str(path))[0] == args.rotation
        t_probe = best(lambda: probe_rotation(str(path)), args.repeat)
        t_decode = best(lambda: decode_clip(str(path), geometry), args.repeat)
    print(f"{stored.shape[2]}x{stored.shape[1]} stored, rotation {args.rotation}, {args.frames} frames: "
          f"probe_rotation {t_probe * 1000:.1f} ms, decode_clip {t_decode * 1000:.0f} ms "
          f"(probe = {t_probe / t_decode:.1%} of it)")


if __name__ == "__main__":
    main()
