"""mp4 files written with PyAV (decord only reads): the videos of `tsa sample` and the
generated sample clips of the demo, tests and benchmarks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def default_codec() -> str:
    """libx264 when this FFmpeg build has it, else MPEG-4 part 2."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except ValueError:  # av.codec.codec.UnknownCodecError: no x264 in this build
        return "mpeg4"


def write_mp4(frames: np.ndarray, path: str | Path, fps: int, codec: Optional[str] = None) -> Path:
    """Write `frames` uint8 [F, H, W, 3] (RGB) as yuv420p at `fps`; H.264 by default (or MPEG-4
    part 2), or the named FFmpeg `codec`. The same frames give the same bytes."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4: expected uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4: yuv420p needs even sizes, got {h}x{w}")
    codec = codec or default_codec()
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            # crf 17: visually lossless for the evaluators. x264's macroblock-tree pass gives
            # different bytes from run to run in this build; without it the output is reproducible.
            # x264's thread count changes the bytes and by default follows the machine's cores:
            # fixed, the same frames give the same file on a laptop and on a 96-core GPU node.
            stream.options = {"crf": "17", "preset": "medium", "x264-params": "mbtree=0:threads=4"}
        elif codec == "mpeg4":
            stream.bit_rate = 16_000_000
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return Path(path)


def to_uint8(video: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] float in [0, 1] -> uint8."""
    return (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)
