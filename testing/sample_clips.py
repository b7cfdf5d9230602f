"""Write a small OpenVid-style folder of synthetic clips for the demo and the tests.

    DIR/clips.csv           video, caption, aesthetic score, motion score
    DIR/videos/<name>.mp4   coloured shapes moving over a textured, mostly static background

Clips come in several shapes, lengths and frame rates (landscape 16:9, portrait, square,
tiny, short, long); with `broken=True` the CSV also lists the broken inputs a real crawl
contains (empty file, garbage bytes, truncated mp4, text named .mp4, a missing file, a
file without a video stream, an AV1 stream that decord's FFmpeg cannot decode), each of which must become a `failed` manifest row.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsa.media.mp4 import write_mp4

CSV_NAME = "clips.csv"


@dataclass(frozen=True)
class ClipSpec:
    name: str
    width: int
    height: int
    frames: int
    fps: int


# Cycled through for n > len(SPECS); sizes are even (yuv420p) and small so that writing is fast.
SPECS = [
    ClipSpec("landscape", 320, 180, 60, 24),
    ClipSpec("portrait", 144, 256, 40, 30),
    ClipSpec("tiny", 64, 48, 20, 10),
    ClipSpec("short", 160, 120, 5, 8),
    ClipSpec("long", 256, 144, 160, 25),
    ClipSpec("square", 192, 192, 49, 15),
    ClipSpec("wide", 400, 160, 30, 12),
    ClipSpec("hd_ish", 426, 240, 24, 30),
]

BROKEN = ["empty", "garbage", "truncated", "text", "missing", "audio_only", "av1_codec"]

# {c} names the disc's colour, {d} the square's (render_clip draws shape 0 as a disc).
_CAPTIONS = ["a {c} ball rolls across a textured wall while a {d} block drifts by",
             "a {d} square slides past a {c} disc",
             "two shapes, a {c} disc and a {d} square, cross each other over a patterned floor",
             "a {c} disc and a {d} square bounce from side to side"]
_COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40),
            "magenta": (220, 40, 200), "cyan": (40, 220, 220)}


def render_clip(spec: ClipSpec, seed: int) -> tuple[np.ndarray, str]:
    """Frames uint8 [T, H, W, 3] and a caption: two shapes moving over a static texture."""
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    texture = (110 + 40 * np.sin(xx / rng.uniform(3, 9)) * np.cos(yy / rng.uniform(3, 9))
               + rng.normal(0, 8, (h, w)))
    background = np.stack([texture * k for k in rng.uniform(0.6, 1.1, 3)], axis=-1).clip(0, 255)
    names = rng.choice(list(_COLOURS), size=2, replace=False)
    r = max(3, min(h, w) // 8)
    pos = rng.uniform([r, r], [h - r, w - r], size=(2, 2))
    vel = rng.uniform(-1, 1, size=(2, 2)) * min(h, w) / 25
    frames = np.empty((spec.frames, h, w, 3), dtype=np.uint8)
    for t in range(spec.frames):
        img = background.copy()
        for i in range(2):
            pos[i] += vel[i]
            for ax, size in enumerate((h, w)):  # bounce off the borders
                if not r <= pos[i, ax] <= size - r:
                    vel[i, ax] = -vel[i, ax]
                    pos[i, ax] = np.clip(pos[i, ax], r, size - r)
            cy, cx = pos[i]
            if i == 0:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            img[inside] = _COLOURS[names[i]]
        frames[t] = img.astype(np.uint8)
    caption = _CAPTIONS[seed % len(_CAPTIONS)].format(c=names[0], d=names[1])
    return frames, caption


def _write_audio_only(path: Path) -> None:
    """An mp4 with one AAC audio stream and no video: opens fine, has nothing to decode."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = (np.sin(np.arange(16000) / 10.0) * 0.2).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_broken(videos: Path, kind: str, good: Path, seed: int) -> str | None:
    """Write one broken input; returns its file name (None for a row whose file is missing)."""
    name = f"broken_{kind}.mp4"
    path = videos / name
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "text":
        path.write_text("this is a caption file, not a video\n")
    elif kind == "missing":
        return name
    elif kind == "audio_only":
        _write_audio_only(path)
    elif kind == "av1_codec":
        import av

        if "libsvtav1" in av.codecs_available:
            os.environ.setdefault("SVT_LOG", "1")  # errors only: the encoder is chatty
            write_mp4(render_clip(SPECS[2], seed)[0], path, 10, codec="libsvtav1")
        else:  # this PyAV wheel cannot write AV1: a stream-less file is the closest unreadable input
            _write_audio_only(path)
    else:
        raise ValueError(f"unknown broken kind {kind!r}; expected one of {BROKEN}")
    return name


def make_sample_clips(dir: str | Path, n: int = 8, seed: int = 0, broken: bool = True) -> Path:
    """Write `n` synthetic clips (plus the broken inputs) and `clips.csv` into `dir`; returns `dir`."""
    root = Path(dir)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        spec = SPECS[i % len(SPECS)]
        name = f"{spec.name}_{i:03d}.mp4" if n > len(SPECS) or i >= len(SPECS) else f"{spec.name}.mp4"
        frames, caption = render_clip(spec, seed * 1000 + i)
        write_mp4(frames, videos / name, spec.fps)
        rows.append({"video": name, "caption": caption, "aesthetic score": round(4.0 + (i % 7) * 0.25, 2),
                     "motion score": round(float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean())
                                           if len(frames) > 1 else 0.0, 3)})
    if broken:
        good = videos / rows[0]["video"] if rows else write_mp4(render_clip(SPECS[0], seed)[0], videos / "_good.mp4", 24)
        for j, kind in enumerate(BROKEN):
            name = _write_broken(videos, kind, good, seed + j)
            rows.append({"video": name, "caption": f"a broken input ({kind})", "aesthetic score": 0.0,
                         "motion score": 0.0})
        if not n:
            good.unlink()
    with open(root / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["video", "caption", "aesthetic score", "motion score"])
        writer.writeheader()
        writer.writerows(rows)
    return root
