"""Clips with rotation metadata (phone footage) come out upright, and meta.json / the manifest
record the rotation and the upright source size.

The clips are real mp4s written with PyAV with a display matrix (what phones and FFmpeg
write); the test reads the matrix back from the file's `tkhd` box itself, so it does not
trust the code under test to tell whether the rotation is really in the file.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tsa.pipeline.decode import crop_box, decode_clip, probe_rotation, rotate_frames, still_stored

COLOURS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 0)}


def upright_frames(t: int = 6, h: int = 160, w: int = 96) -> np.ndarray:
    """A portrait clip with one colour a quadrant: where each lands shows the orientation."""
    f = np.zeros((t, h, w, 3), np.uint8)
    f[:, : h // 2, : w // 2] = COLOURS["tl"]
    f[:, : h // 2, w // 2:] = COLOURS["tr"]
    f[:, h // 2:, : w // 2] = COLOURS["bl"]
    f[:, h // 2:, w // 2:] = COLOURS["br"]
    return f


def write_rotated(upright: np.ndarray, path: Path, rotation: int, tag_only: bool = False) -> Path:
    """Store `upright` turned `rotation` degrees counter-clockwise, with metadata saying "turn it
    `rotation` degrees clockwise to show it" (a display matrix in mp4; a `rotate` tag in mkv)."""
    import av

    stored = np.ascontiguousarray(np.rot90(upright, k=rotation // 90, axes=(1, 2)))
    _, h, w, _ = stored.shape
    with av.open(str(path), "w", format="matroska" if tag_only else "mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if tag_only:
            stream.metadata["rotate"] = str(rotation)
        elif rotation:
            stream.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        for i, frame in enumerate(stored):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return path


def tkhd_matrix(path: Path) -> tuple[int, int, int, int]:
    """(a, b, c, d) of the video track's tkhd matrix, as integers (16.16 fixed point / 65536)."""
    data = path.read_bytes()
    i = data.find(b"tkhd")
    assert i > 0, "no tkhd box"
    version = data[i + 4]
    offset = i + 4 + (36 if version == 1 else 24) + 16  # header fields, then reserved/layer/group/volume
    a, b, _u, c, d, _v = struct.unpack(">6i", data[offset:offset + 24])
    return a // 65536, b // 65536, c // 65536, d // 65536


# What FFmpeg's mov muxer writes for a `rotate` tag of 90/180/270 (movenc.c) and phones record.
MATRIX = {0: (1, 0, 0, 1), 90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}


def quadrant_colours(frame: np.ndarray) -> dict[str, tuple[int, ...]]:
    h, w, _ = frame.shape
    pick = {"tl": frame[h // 4, w // 4], "tr": frame[h // 4, 3 * w // 4], "bl": frame[3 * h // 4, w // 4],
            "br": frame[3 * h // 4, 3 * w // 4]}
    return {k: tuple(int(round(c / 255)) * 255 for c in v) for k, v in pick.items()}


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("rotated")
    up = upright_frames()
    clips = {r: write_rotated(up, root / f"rot{r}.mp4", r) for r in (0, 90, 180, 270)}
    clips["tag90"] = write_rotated(up, root / "tag90.mkv", 90, tag_only=True)
    return clips


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_written_clips_really_carry_the_rotation(rotated, rotation):
    import av

    assert tkhd_matrix(rotated[rotation]) == MATRIX[rotation]
    with av.open(str(rotated[rotation])) as c:
        frame = next(c.decode(video=0))
        stored_hw = frame.to_ndarray(format="rgb24").shape[:2]
        assert -frame.rotation % 360 == rotation
    assert stored_hw == ((96, 160) if rotation in (90, 270) else (160, 96))
    with av.open(str(rotated["tag90"])) as c:
        assert {k.lower(): v for k, v in c.streams.video[0].metadata.items()}["rotate"] == "90"


@pytest.mark.parametrize("rotation", [0, 90, 180, 270, "tag90"])
def test_rotated_clips_decode_upright(rotated, rotation, tiny_cfg):
    g = tiny_cfg.geometry
    clip = decode_clip(str(rotated[rotation]), g)
    expected = 90 if rotation == "tag90" else rotation
    assert clip.rotation == expected and probe_rotation(str(rotated[rotation]))[0] == expected
    assert clip.source_size == (96, 160)  # upright width x height
    assert clip.crop_box == crop_box(96, 160, g.height, g.width)
    for frame in (clip.frames[0], clip.frames[-1]):
        assert quadrant_colours(frame) == COLOURS
    plain = decode_clip(str(rotated[0]), g)
    assert np.abs(clip.frames.astype(np.int16) - plain.frames).mean() < 3


def test_frames_a_decoder_left_as_stored_are_turned_here(rotated, tiny_cfg, monkeypatch):
    """decord 0.6.0 applies the rotation itself; a build that does not (older decord) gives
    the stored frames, which decode_clip must turn itself."""
    import decord

    real = decord.VideoReader

    class _Arr:
        def __init__(self, a):
            self.a = a

        def asnumpy(self):
            return self.a

    class StoredReader:  # undoes decord's rotation: frames exactly as stored
        def __init__(self, path, num_threads=1):
            self.r = real(path, num_threads=num_threads)
            self.k = probe_rotation(path)[0] // 90

        def __len__(self):
            return len(self.r)

        def get_avg_fps(self):
            return self.r.get_avg_fps()

        def __getitem__(self, i):
            return _Arr(np.ascontiguousarray(np.rot90(self.r[i].asnumpy(), k=self.k)))

        def get_batch(self, idx):
            return _Arr(np.ascontiguousarray(np.rot90(self.r.get_batch(idx).asnumpy(), k=self.k, axes=(1, 2))))

    monkeypatch.setattr(decord, "VideoReader", StoredReader)
    for rotation in (90, 180, 270):
        clip = decode_clip(str(rotated[rotation]), tiny_cfg.geometry)
        assert clip.rotation == rotation and clip.source_size == (96, 160)
        assert quadrant_colours(clip.frames[0]) == COLOURS


def test_rotate_frames_and_still_stored():
    import torch

    up = upright_frames(t=1)
    for rotation in (90, 180, 270):
        stored = np.ascontiguousarray(np.rot90(up, k=rotation // 90, axes=(1, 2)))
        turned = rotate_frames(torch.from_numpy(stored), rotation).numpy()
        np.testing.assert_array_equal(turned, up)
        assert still_stored(stored[0], stored[0], rotation)
        assert not still_stored(up[0], stored[0], rotation)
    square = upright_frames(t=1, h=64, w=64)[0]
    assert not still_stored(np.rot90(square, k=-1), square, 90)  # same shape: decided by pixels


def test_meta_json_and_manifest_record_rotation_and_upright_size(rotated, tiny_cfg):
    from tsa.pipeline.prepare import Prepare

    item = {"index": 0, "key": "rot90", "video": "rot90.mp4", "path": str(rotated[90]), "caption": "a phone clip",
            "status": "ok", "error": None, "extras": {}}
    row = Prepare(tiny_cfg.to_dict())(item)
    assert row["ok"]
    meta, manifest = json.loads(row["meta_json"]), json.loads(row["row_json"])
    assert meta["rotation"] == 90 and meta["source_size"] == [96, 160]
    assert meta["crop_box"] == list(crop_box(96, 160, tiny_cfg.geometry.height, tiny_cfg.geometry.width))
    assert (manifest["width"], manifest["height"]) == (96, 160)
    assert quadrant_colours(row["frames"][0]) == COLOURS
