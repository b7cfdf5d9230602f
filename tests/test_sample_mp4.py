"""The mp4 writer of `tsa sample` and the sample clips: decodable, right size and rate,
reproducible bytes."""
from __future__ import annotations

import av
import numpy as np
import pytest

from tsa.media.mp4 import default_codec, to_uint8, write_mp4


def _clip(frames=9, h=64, w=96) -> np.ndarray:
    """A moving gradient: smooth enough for the codec to keep it close."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(h), np.arange(w), indexing="ij")
    r = (x * 255 // (w - 1) + 10 * t) % 256
    g = np.broadcast_to(y * 255 // (h - 1), r.shape)
    b = np.full_like(r, 128)
    return np.stack([r, g, b], -1).astype(np.uint8)


def _decode(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.name, float(s.average_rate), np.stack(
            [f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_roundtrip(tmp_path, codec):
    if codec == "libx264" and default_codec() != "libx264":
        pytest.skip("this PyAV build has no libx264")
    clip = _clip()
    write_mp4(clip, tmp_path / "c.mp4", fps=8, codec=codec)
    name, rate, frames = _decode(tmp_path / "c.mp4")
    assert name == {"libx264": "h264", "mpeg4": "mpeg4"}[codec]
    assert rate == 8.0
    assert frames.shape == clip.shape
    assert np.abs(frames.astype(int) - clip.astype(int)).mean() < 4.0


def test_same_frames_same_bytes(tmp_path):
    clip = np.random.default_rng(0).integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)
    write_mp4(clip, tmp_path / "a.mp4", fps=8)
    write_mp4(clip, tmp_path / "b.mp4", fps=8)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


_WRITE_ON_CPUS = """
import os, sys
import numpy as np
os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})  # x264 counts the CPUs it may use
from tsa.media.mp4 import write_mp4
rng = np.random.default_rng(0)
clip = np.cumsum(rng.integers(0, 256, (24, 240, 320, 3), dtype=np.uint8), axis=0, dtype=np.uint8)
write_mp4(clip, sys.argv[2], fps=8)
"""


def test_same_frames_same_bytes_on_one_core_and_on_all(tmp_path):
    """x264 sizes its threads from the CPUs it sees, and the thread count changes the bytes: the
    writer fixes it, so a 2-core laptop and a GPU node write the same file."""
    import os
    import subprocess
    import sys

    if default_codec() != "libx264":
        pytest.skip("this PyAV build has no libx264")
    cpus = sorted(os.sched_getaffinity(0))
    for name, allowed in (("one.mp4", cpus[:1]), ("all.mp4", cpus)):
        subprocess.run([sys.executable, "-c", _WRITE_ON_CPUS, ",".join(map(str, allowed)), str(tmp_path / name)],
                       check=True)
    assert (tmp_path / "one.mp4").read_bytes() == (tmp_path / "all.mp4").read_bytes()


def test_rejects_what_yuv420p_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="even sizes"):
        write_mp4(np.zeros((3, 63, 96, 3), np.uint8), tmp_path / "odd.mp4", fps=8)
    with pytest.raises(ValueError, match=r"expected uint8 \[F, H, W, 3\]"):
        write_mp4(np.zeros((3, 64, 96, 3), np.float32), tmp_path / "f.mp4", fps=8)


def test_to_uint8_clips_and_rounds():
    v = np.array([-0.2, 0.0, 0.5, 1.0, 1.3], np.float32).reshape(1, 1, 5, 1).repeat(3, -1)
    assert to_uint8(v)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
