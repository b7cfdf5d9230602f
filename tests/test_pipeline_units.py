"""Pipeline pieces without Ray: frame rule, crop, decoding, input listing, keys, output checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tsa.pipeline.decode import DecodeError, crop_box, decode_clip, frame_indices
from tsa.shards.layout import base_key
from tsa.testing.sample_clips import make_sample_clips
from tsa.pipeline.inputs import list_clips
from tsa.pipeline.sources import SourceError


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_sample_clips(tmp_path_factory.mktemp("clips"), n=6, seed=1, broken=True)


def test_frame_rule():
    assert frame_indices(100, 49) == [2 * i for i in range(49)]  # s = 100 // 49 = 2
    assert frame_indices(49, 49) == list(range(49))
    assert frame_indices(5, 9) == [0, 1, 2, 3, 4, 4, 4, 4, 4]  # short: repeat the last frame
    assert frame_indices(1, 3) == [0, 0, 0]
    assert frame_indices(160, 9) == [17 * i for i in range(9)]
    with pytest.raises(DecodeError, match="no frames"):
        frame_indices(0, 9)


def test_crop_box_is_centred_2_3():
    assert crop_box(1920, 1080, 480, 720) == (150, 0, 1770, 1080)  # 1620 x 1080
    assert crop_box(720, 480, 480, 720) == (0, 0, 720, 480)
    left, top, right, bottom = crop_box(144, 256, 480, 720)  # portrait: crop top and bottom
    assert (left, right) == (0, 144) and bottom - top == 96 and top == (256 - 96) // 2


def test_decode_shapes_and_indices(clips, tiny_cfg):
    g = tiny_cfg.geometry
    short = decode_clip(str(clips / "videos" / "short.mp4"), g)
    assert short.frames.shape == (9, 192, 288, 3) and short.frames.dtype == np.uint8
    assert short.indices == [0, 1, 2, 3, 4, 4, 4, 4, 4] and short.num_source_frames == 5
    np.testing.assert_array_equal(short.frames[4], short.frames[8])
    long = decode_clip(str(clips / "videos" / "long.mp4"), g)
    assert long.indices == frame_indices(160, 9) and long.fps == pytest.approx(25.0)
    tiny = decode_clip(str(clips / "videos" / "tiny.mp4"), g)  # 64x48 source: upscaled
    assert tiny.frames.shape == (9, 192, 288, 3) and tiny.source_size == (64, 48)
    assert tiny.frames.std() > 10  # real content, not a blank frame
    portrait = decode_clip(str(clips / "videos" / "portrait.mp4"), g)
    assert portrait.crop_box == crop_box(144, 256, 192, 288)


@pytest.mark.parametrize("kind,reason", [("empty", "empty file"), ("garbage", "cannot open video"),
                                         ("truncated", "cannot open video"), ("text", "cannot open video"),
                                         ("audio_only", "video stream"), ("av1_codec", "cannot open video"),
                                         ("missing", "file not found")])
def test_broken_clips_raise_decode_error(clips, tiny_cfg, kind, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_clip(str(clips / "videos" / f"broken_{kind}.mp4"), tiny_cfg.geometry)


def test_list_clips_openvid_layout(clips):
    items = list_clips(clips)
    assert [it.index for it in items] == list(range(len(items)))
    by_key = {it.key: it for it in items}
    assert by_key["landscape"].status == "ok" and by_key["landscape"].extras["aesthetic score"] == 4.0
    missing = by_key["broken_missing"]
    assert missing.status == "failed" and "file not found" in missing.error
    assert len(list_clips(clips, limit=3)) == 3
    subset = clips / "subset.txt"
    subset.write_text("# the two to keep\nlong.mp4\ntiny.mp4\n")
    assert [it.key for it in list_clips(clips, subset=subset)] == ["tiny", "long"]  # CSV order, not subset order


def test_byte_order_marks_are_not_part_of_names_or_captions(tmp_path, clips):
    """Files saved by Excel or Notepad start with a UTF-8 BOM: it must not hide the first
    subset name, the `video` column of a CSV subset, or end up in a caption."""
    bom = "\ufeff"
    (tmp_path / "subset.txt").write_text(bom + "long.mp4\ntiny.mp4\n", encoding="utf-8")
    assert [it.key for it in list_clips(clips, subset=tmp_path / "subset.txt")] == ["tiny", "long"]
    (tmp_path / "subset.csv").write_text(bom + "video\nlong.mp4\n", encoding="utf-8")
    assert [it.key for it in list_clips(clips, subset=tmp_path / "subset.csv")] == ["long"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "c.mp4").write_bytes((clips / "videos" / "tiny.mp4").read_bytes())
    (folder / "c.txt").write_text(bom + "a caption\n", encoding="utf-8")
    assert list_clips(folder)[0].caption == "a caption"


def test_list_clips_folder_with_captions_and_duplicates(tmp_path, clips):
    import shutil

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        shutil.copy(clips / "videos" / "tiny.mp4", tmp_path / d / "clip.v1.mp4")
    (tmp_path / "a" / "clip.v1.txt").write_text("a tiny clip\n")
    items = list_clips(tmp_path)
    assert [it.video for it in items] == ["a/clip.v1.mp4", "b/clip.v1.mp4"]
    assert items[0].key == "clip_v1" and items[0].caption == "a tiny clip" and items[0].status == "ok"
    assert items[1].key.startswith("clip_v1_") and items[1].key != items[0].key  # disambiguated by path hash
    assert items[1].status == "failed" and "no caption file clip.v1.txt" in items[1].error


def test_list_clips_duplicate_rows_and_bad_csv(tmp_path, clips):
    import shutil

    shutil.copytree(clips / "videos", tmp_path / "videos")
    (tmp_path / "list.csv").write_text('video,caption,fps\ntiny.mp4,one,10\ntiny.mp4,again,10\n')
    items = list_clips(tmp_path)
    assert [it.status for it in items] == ["ok", "skipped"] and "duplicate of input row 0" in items[1].error
    assert items[0].extras == {"csv_fps": 10}  # clashes with the manifest's fps column
    (tmp_path / "list.csv").write_text("name,caption\nx.mp4,hi\n")
    with pytest.raises(SourceError, match=r"list.csv: missing column\(s\) video"):
        list_clips(tmp_path)
    with pytest.raises(SourceError, match="not a folder"):
        list_clips(tmp_path / "nope")


def test_keys_replace_dots():
    assert base_key("dir/My.Clip.v2.mp4") == "My_Clip_v2"
    assert base_key("noext") == "noext"


def test_rerun_with_other_config_is_refused(tmp_path, tiny_cfg):
    from tsa.shards.dataset_info import OutputMismatch, build_dataset_info
    from tsa.pipeline.run import prepare_output

    models = {"vae": {"source": "tiny", "sha256": "x"}}
    info = build_dataset_info(tiny_cfg, models=models, num_clips=3, inputs_fp="abc", scaling_factor=1.0, source="s")
    prepare_output(tmp_path, info, overwrite=False)
    prepare_output(tmp_path, info, overwrite=False)  # same config: fine
    tiny_cfg.models.student = "another/student"  # the student does not touch the cache
    tiny_cfg.preprocess.vae.batch_size = 7  # nor do resources
    same = build_dataset_info(tiny_cfg, models=models, num_clips=3, inputs_fp="abc", scaling_factor=1.0, source="s")
    prepare_output(tmp_path, same, overwrite=False)
    tiny_cfg.preprocess.teacher_dtype = "int8"
    other = build_dataset_info(tiny_cfg, models=models, num_clips=3, inputs_fp="abc", scaling_factor=1.0, source="s")
    with pytest.raises(OutputMismatch, match="preprocess.teacher_dtype: 'float16' -> 'int8'"):
        prepare_output(tmp_path, other, overwrite=False)
    fewer = dict(info, inputs_fingerprint="def", num_clips=2)
    with pytest.raises(OutputMismatch, match="different clip list"):
        prepare_output(tmp_path, fewer, overwrite=False)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-000000.tar").write_bytes(b"x")
    prepare_output(tmp_path, other, overwrite=True)
    assert json.loads((tmp_path / "dataset.json").read_text())["teacher_dtype"] == "int8"
    assert (tmp_path / "notes.txt").exists() and not (tmp_path / "shards").exists()  # only our files go


def test_changed_caption_changes_the_clip_list_fingerprint(clips):
    """A rerun after a caption edit must not resume on shards holding the old text embeddings."""
    import dataclasses

    from tsa.pipeline.run import clip_list_fingerprint

    items = list_clips(clips)
    assert clip_list_fingerprint(items) == clip_list_fingerprint(list_clips(clips))
    edited = [dataclasses.replace(items[0], caption=items[0].caption + " (edited)"), *items[1:]]
    assert clip_list_fingerprint(edited) != clip_list_fingerprint(items)
    assert clip_list_fingerprint(items[:-1]) != clip_list_fingerprint(items)


def test_vae_noise_is_seeded_by_key_and_batch_independent(tiny_cfg):
    from tsa.pipeline.encoders import VaeStage

    stage = VaeStage(tiny_cfg.to_dict())
    frames = np.random.default_rng(0).integers(0, 256, (2, 9, 192, 288, 3), dtype=np.uint8)
    both = stage({"ok": np.array([True, True]), "key": np.array(["a", "b"]), "frames": frames.copy()})["latent"]
    one = stage({"ok": np.array([True]), "key": np.array(["b"]), "frames": frames[1:].copy()})["latent"]
    np.testing.assert_array_equal(both[1], one[0])
    swapped = stage({"ok": np.array([True, False]), "key": np.array(["b", "a"]), "frames": frames[::-1].copy()})
    np.testing.assert_array_equal(swapped["latent"][0], one[0])
    assert (swapped["latent"][1] == 0).all()  # a failed row is skipped


def test_vae_moments_give_the_stored_sample(tiny_cfg):
    """latent (sample mode) = (mean + exp(logvar / 2) * eps(key)) * scaling_factor of moments mode."""
    import torch

    from tsa.pipeline.encoders import VaeStage, key_seed

    frames = np.random.default_rng(1).integers(0, 256, (1, 9, 192, 288, 3), dtype=np.uint8)
    batch = lambda: {"ok": np.array([True]), "key": np.array(["clip_a"]), "frames": frames.copy()}  # noqa: E731
    sample_stage = VaeStage(tiny_cfg.to_dict())
    sample = sample_stage(batch())["latent"][0]
    sample_stage.cfg.preprocess.latents = "moments"  # same weights, other output mode
    moments = sample_stage(batch())
    mean, logvar = moments["latent_mean"][0], moments["latent_logvar"][0]
    assert mean.shape == logvar.shape == (16, 3, 24, 36) and "latent" not in moments
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(key_seed("clip_a"))).numpy()
    expected = (mean + np.exp(0.5 * logvar) * eps) * sample_stage.vae_config["scaling_factor"]
    np.testing.assert_allclose(sample, expected, rtol=1e-5, atol=1e-5)


def test_vae_input_in_half_precision_is_rounded_once(tiny_cfg):
    """On a GPU the VAE runs in bfloat16: its input must be x / 127.5 - 1 rounded once to
    bfloat16, not computed in bfloat16 (two roundings, twice the error for half the values)."""
    import torch

    from tsa.pipeline.encoders import VaeStage

    class Captured(Exception):
        pass

    class Spy:
        def encode(self, x):
            self.x = x
            raise Captured

    stage = VaeStage(tiny_cfg.to_dict())
    stage.dtype, stage.vae = torch.bfloat16, Spy()
    values = np.arange(256, dtype=np.uint8)
    frames = np.broadcast_to(np.resize(values, (9, 192, 288))[None, ..., None], (1, 9, 192, 288, 3)).copy()
    with pytest.raises(Captured):  # (stage(batch) would turn the error into a failed row)
        stage._encode(frames, ["k"])
    got = stage.vae.x
    assert got.dtype == torch.bfloat16 and tuple(got.shape) == (1, 3, 9, 192, 288)
    expected = (torch.from_numpy(frames).permute(0, 4, 1, 2, 3).double() / 127.5 - 1).to(torch.bfloat16)
    assert torch.equal(got, expected)


def test_resume_accepts_a_hub_model_hashed_only_on_the_rerun(tmp_path, tiny_cfg):
    """A hub model not cached yet has no hash on the first run (its actors download it); the
    rerun after a crash hashes the now cached files. Same ids: resume. Two known, different
    hashes, or another clip list: refused."""
    from tsa.shards.dataset_info import OutputMismatch, build_dataset_info
    from tsa.pipeline.run import prepare_output

    def info(vae_sha, inputs_fp="abc"):
        models = {"vae": {"source": "org/model", "sha256": vae_sha}, "teacher": {"source": "t", "sha256": "t1"}}
        return build_dataset_info(tiny_cfg, models=models, num_clips=3, inputs_fp=inputs_fp, scaling_factor=1.0,
                                  source="s")

    prepare_output(tmp_path, info(None), overwrite=False)
    prepare_output(tmp_path, info("aaa"), overwrite=False)
    with pytest.raises(OutputMismatch, match="weights.vae: 'aaa' -> 'bbb'"):
        prepare_output(tmp_path, info("bbb"), overwrite=False)
    with pytest.raises(OutputMismatch, match="different clip list"):
        prepare_output(tmp_path, info(None, inputs_fp="def"), overwrite=False)


def test_foreign_dataset_json_is_refused_clearly(tmp_path, tiny_cfg):
    import json

    from tsa.shards.dataset_info import OutputMismatch, build_dataset_info
    from tsa.pipeline.run import prepare_output

    info = build_dataset_info(tiny_cfg, models={"vae": {"source": "tiny", "sha256": "x"}}, num_clips=3,
                              inputs_fp="abc", scaling_factor=1.0, source="s")
    (tmp_path / "dataset.json").write_text(json.dumps({"format_version": info["format_version"], "name": "other"}))
    with pytest.raises(OutputMismatch, match="no `config` entry: not a tsa preprocess output"):
        prepare_output(tmp_path, info, overwrite=False)
