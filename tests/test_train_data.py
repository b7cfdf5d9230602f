"""Trainer data: global order, DataLoader workers, exact resume, dequantisation, masks,
corrupt shards and dataset.json checks, on shards written by the real writer."""
import re
import shutil

import numpy as np
import pytest
import torch

from tsa.configs import ConfigError, load_config
from tsa.shards.encode import npy_bytes
from tsa.shards.reader import read_marker, read_members, read_sample
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.shards.writer import ShardWriter
from tsa.train.data import DataPosition, RankLoader, stream_units
from tsa.train.dataset_check import DatasetMismatch, check_dataset, open_dataset
from tsa.train.shards import DataError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(*overrides):
    return load_config("tiny", list(overrides))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """9 input rows, 4 a shard; row 8 (shard 2's only row) is the failed one, so shards 0 and 1
    hold the 8 samples and shard 2 has a marker but no sample."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("train_data") / "ds", _cfg(), n=8, n_failed=1, seed=3)
    assert [read_marker(root, s)["num_samples"] for s in range(3)] == [4, 4, 0]
    return root


def _keys(loader, n):
    return [loader.next_item()["key"] for _ in range(n)]


def _items(loader, n):
    return [loader.next_item() for _ in range(n)]


def test_global_order_does_not_depend_on_the_number_of_workers(shards):
    info, cfg = open_dataset(shards), _cfg()
    one = _items(RankLoader(info, cfg, 0, 1), 12)
    assert [it["index"] for it in one] == list(range(12))
    r0, r1 = (_items(RankLoader(info, cfg, r, 2), 6) for r in (0, 1))
    assert [it["index"] for it in r0] == list(range(0, 12, 2))
    assert [it["key"] for it in r0] == [it["key"] for it in one[0::2]]
    assert [it["key"] for it in r1] == [it["key"] for it in one[1::2]]
    for a, b in zip(r1, one[1::2]):
        assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["teacher"], b["teacher"])


def test_each_sample_enters_the_stream_once_per_epoch_in_a_new_shard_order(shards):
    from collections import Counter

    info = open_dataset(shards)
    plain = RankLoader(info, _cfg("train.data_streams=1", "train.shuffle_buffer=0"), 0, 1)
    epochs = [_keys(plain, 8) for _ in range(3)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs) and len(set(epochs[0])) == 8
    assert len({tuple(e) for e in epochs}) > 1  # shards are visited in a new order each epoch
    # Behind the 8-reference shuffle buffer, 32 samples out means 40 in: 5 epochs at most.
    counts = Counter(_keys(RankLoader(info, _cfg("train.data_streams=1"), 0, 1), 32))
    assert set(counts) == set(epochs[0]) and max(counts.values()) <= 5


def test_dataloader_workers_deliver_the_in_process_order(shards):
    info = open_dataset(shards)
    cfg = _cfg("train.data_streams=2", "train.num_workers=2")
    loader = RankLoader(info, cfg, 0, 1)
    assert loader.workers == 2
    keys = _keys(loader, 10)
    loader.close()
    assert keys == _keys(RankLoader(info, _cfg(), 0, 1), 10)


def test_resume_continues_with_the_next_sample_even_on_another_world_size(shards):
    info, cfg = open_dataset(shards), _cfg()
    straight = _keys(RankLoader(info, cfg, 0, 1), 16)
    first = RankLoader(info, cfg, 0, 1)
    assert _keys(first, 6) == straight[:6]
    pos = DataPosition.from_dict(DataPosition.merged([first.position()], 6, 0).to_dict())  # as saved
    assert _keys(RankLoader(info, cfg, 0, 1, start=pos), 10) == straight[6:]
    assert _keys(RankLoader(info, cfg, 1, 2, start=pos), 5) == straight[7::2]
    with pytest.raises(ValueError, match="delivered 6 samples but consumed=8"):
        DataPosition.merged([first.position()], 8, 0)


def test_int8_teacher_is_dequantised_with_its_scale(tmp_path, shards):
    q = make_synthetic_dataset(tmp_path / "int8", _cfg("preprocess.teacher_dtype=int8"), n=8, n_failed=1, seed=3)
    a = RankLoader(open_dataset(shards), _cfg(), 0, 1).next_item()
    b = RankLoader(open_dataset(q), _cfg(), 0, 1).next_item()
    assert a["key"] == b["key"] and b["teacher"].dtype == torch.float32
    scale = torch.from_numpy(read_sample(q, b["key"], ["teacher_scale.npy"])["teacher_scale.npy"]).float()
    err = (b["teacher"] - a["teacher"].float()).abs().max(dim=-1).values
    assert torch.all(err <= scale * 0.51 + 2e-3)  # half a quantisation step (+ float16 storage)


def test_mask_comes_from_mask_npy_at_the_preprocess_ratio_else_from_motion(shards):
    from tsa.core import topk_mask

    info = open_dataset(shards)
    same = RankLoader(info, _cfg(), 0, 1).next_item()
    stored = read_sample(shards, same["key"], ["mask.npy", "motion.npy"])
    assert torch.equal(same["mask"], torch.from_numpy(stored["mask.npy"]))
    other = RankLoader(info, _cfg("align.ratio=0.5"), 0, 1).next_item()
    motion = torch.from_numpy(stored["motion.npy"].astype(np.float32))
    assert torch.equal(other["mask"], topk_mask(motion[None], 0.5)[0])
    assert int(other["mask"].sum()) == 4 * 12  # 4 frames x round(0.5 * 24)


def test_baseline_reads_no_teacher_and_moments_are_delivered(tmp_path):
    m = make_synthetic_dataset(tmp_path / "moments", _cfg("preprocess.latents=moments"), n=4, seed=1)
    cfg = _cfg("align.loss=none", "train.data_streams=1")
    item = RankLoader(open_dataset(m), cfg, 0, 1).next_item()
    assert {"latent_mean", "latent_logvar", "text"} <= item.keys() and "teacher" not in item and "mask" not in item


def _rewrite_shard(root, shard, change):
    """Rewrite `shard` with the real writer, passing each sample's members through `change`."""
    marker = read_marker(root, shard)
    tar = root / "shards" / marker["tar"]
    samples = {k: read_members(tar, e, decode=False) for k, e in marker["index"].items()}
    w = ShardWriter(root, shard)
    for row in marker["rows"]:
        key = row["key"]
        w.add({k: v for k, v in row.items() if k != "shard"},
              change(key, samples[key]) if row["status"] == "ok" else None)
    w.close()


@pytest.fixture
def broken(tmp_path, shards):
    root = tmp_path / "ds"
    shutil.copytree(shards, root)
    return root


def _drain(root, n, *overrides):
    # No shuffle buffer: epochs end where they end, so 16 samples span at least two of them.
    cfg = _cfg("train.data_streams=1", "train.shuffle_buffer=0", *overrides)
    loader = RankLoader(open_dataset(root), cfg, 0, 1)
    items = _items(loader, n)
    return items, loader.bad_samples


@pytest.fixture
def victim(shards):
    """A sample of shard 1."""
    return sorted(read_marker(shards, 1)["index"])[1]


def test_missing_member_stops_naming_shard_and_key(broken, victim):
    _rewrite_shard(broken, 1, lambda k, m: m if k != victim else {n: b for n, b in m.items() if n != "teacher.npy"})
    with pytest.raises(DataError, match=rf"shard-000001.tar: sample '{victim}' has no member teacher.npy"):
        _drain(broken, 16)
    items, bad = _drain(broken, 16, "train.skip_bad_samples=true")
    assert bad >= 2 and victim not in {it["key"] for it in items}


def test_wrong_shape_stops_naming_shard_key_and_shapes(broken, victim):
    _rewrite_shard(broken, 1, lambda k, m: {**m, "text.npy": npy_bytes(np.zeros((3, 3), np.float16))}
                   if k == victim else m)
    with pytest.raises(DataError, match=rf"shard-000001.tar: sample '{victim}' member text.npy is float16 "
                                        r"\[3, 3\], dataset.json says float16 \[16, 32\]"):
        _drain(broken, 16)
    items, bad = _drain(broken, 16, "train.skip_bad_samples=true")
    assert bad >= 2 and victim not in {it["key"] for it in items}


def test_nan_motion_stops_naming_shard_and_key(broken, victim):
    """With k != the preprocess ratio the mask is derived from motion.npy; NaN there is a
    corrupt sample like any other (it was a bare ValueError from topk_mask)."""
    nan = np.full((4, 4, 6), np.nan, np.float16)
    _rewrite_shard(broken, 1, lambda k, m: {**m, "motion.npy": npy_bytes(nan)} if k == victim else m)
    with pytest.raises(DataError, match=rf"shard-000001.tar: sample '{victim}': topk_mask: motion contains NaN"):
        _drain(broken, 16, "align.ratio=0.5")
    items, bad = _drain(broken, 16, "align.ratio=0.5", "train.skip_bad_samples=true")
    assert bad >= 2 and victim not in {it["key"] for it in items}


def _truncate_last_sample(root, shard):
    tar = root / "shards" / f"shard-{shard:06d}.tar"
    index = read_marker(root, shard)["index"]
    last_key = max(index, key=lambda k: max(off for off, _ in index[k].values()))
    end = max(off + size for off, size in index[last_key].values())
    with open(tar, "r+b") as f:
        f.truncate(index[last_key]["text.npy"][0] + 10)
    return tar, last_key, end


def test_truncated_shard_stops_before_step_one_even_when_skipping_bad_samples(broken):
    tar, _, end = _truncate_last_sample(broken, 1)
    size = tar.stat().st_size
    for skip in ("false", "true"):
        with pytest.raises(DataError, match=rf"1 truncated shard\(s\): {re.escape(str(tar))}: {size} bytes, but its marker "
                                            rf"shard-000001.json records members up to byte {end}"):
            _drain(broken, 16, f"train.skip_bad_samples={skip}")


def test_shard_truncated_during_the_run_stops_naming_shard_and_key(broken):
    info = open_dataset(broken)  # sizes checked here; the shard is cut afterwards
    _, last_key, _ = _truncate_last_sample(broken, 1)
    cfg = _cfg("train.data_streams=1", "train.shuffle_buffer=0")
    with pytest.raises(DataError, match=rf"shard-000001.tar: sample '{last_key}' member .* shard is truncated"):
        _items(RankLoader(info, cfg, 0, 1), 16)
    loader = RankLoader(info, _cfg("train.data_streams=1", "train.shuffle_buffer=0", "train.skip_bad_samples=true"),
                        0, 1)
    items = _items(loader, 16)
    assert loader.bad_samples >= 2 and last_key not in {it["key"] for it in items}


def test_tar_rewritten_behind_its_marker_is_caught(broken):
    tar = broken / "shards" / "shard-000000.tar"
    index = read_marker(broken, 0)["index"]
    key = sorted(index)[0]
    off = index[key]["teacher.npy"][0]
    data = bytearray(tar.read_bytes())
    data[off - 512:off - 412] = b"x" * 100  # the member's tar header no longer names it
    tar.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"shard-000000.tar: sample '{key}' member teacher.npy: "):
        _drain(broken, 16)


def test_dataset_json_mismatch_names_both_values(shards):
    info = open_dataset(shards)
    with pytest.raises(DatasetMismatch, match=r"geometry.latent_shape=\[16, 3, 24, 36\] but the student's latent "
                                              r"shape .* is \[16, 4, 24, 36\]"):
        check_dataset(info, _cfg("geometry.num_frames=13"))
    with pytest.raises(DatasetMismatch, match=r"geometry.text_shape=\[16, 32\] .* is \[20, 32\]"):
        check_dataset(info, _cfg("geometry.text_length=20"))
    with pytest.raises(DatasetMismatch, match=r"geometry.teacher_grid=\[4, 4, 6\] but the projector's output "
                                              r"grid is \[4, 2, 3\]"):
        check_dataset(info, _cfg(), projector_grid=(4, 2, 3))
    with pytest.raises(DatasetMismatch, match="teacher_dim=32 but the projector outputs 64 channels"):
        check_dataset(info, _cfg("models.teacher.dim=64"))
    check_dataset(info, _cfg("models.teacher.dim=64", "align.loss=none"))  # no teacher needed


def test_shards_without_samples_are_left_out(broken):
    w = ShardWriter(broken, 3)
    w.add({"key": "gone", "video": "gone.mp4", "caption": "", "status": "failed", "error": "unreadable"})
    w.close()
    assert (broken / "shards" / "shard-000003.json").is_file()
    assert read_marker(broken, 2)["num_samples"] == 0
    assert [p[-16:] for p in open_dataset(broken).shards] == ["shard-000000.tar", "shard-000001.tar"]


def test_unusable_folders_and_stream_counts_are_named(tmp_path, shards):
    with pytest.raises(DatasetMismatch, match="no dataset.json"):
        open_dataset(tmp_path)
    assert open_dataset(shards / "shards").root == str(shards)  # the shards/ subfolder is accepted
    info = open_dataset(shards)
    with pytest.raises(ConfigError, match="train.data_streams=3 must be a multiple of the number of workers"):
        RankLoader(info, _cfg("train.data_streams=3"), 0, 2)
    RankLoader(info, _cfg("train.data_streams=4"), 0, 1)  # more streams than shards: split by samples
    with pytest.raises(ConfigError, match="train.global_batch=3 must be a multiple of workers"):
        RankLoader(info, _cfg("train.global_batch=3"), 0, 2)


# ---- fewer shards than data streams ----------------------------------------------------------------
FEW = {1: 3, 2: 6, 3: 9}  # shards -> samples (4 a shard: the last shard is partly full)


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    base = tmp_path_factory.mktemp("few")
    return {s: make_synthetic_dataset(base / f"s{s}", _cfg(), n=n, seed=s) for s, n in FEW.items()}


def test_units_are_the_shards_or_runs_of_samples_or_single_samples(few):
    refs = open_dataset(few[3]).shard_refs
    assert stream_units(refs, 2) == refs and stream_units(refs, 3) == refs  # enough shards: as before
    flat = [r for shard in refs for r in shard]
    runs = stream_units(refs, 4)  # 9 samples, 4 streams: runs of 2, 2, 2, 3 in shard order
    assert [len(u) for u in runs] == [2, 2, 2, 3] and [r for u in runs for r in u] == flat
    singles = stream_units(refs, 32)  # fewer samples than streams: stream v reads sample v mod 9
    assert singles == [(flat[v % 9],) for v in range(32)]
    with pytest.raises(DataError, match="no samples"):
        stream_units([], 4)


@pytest.mark.parametrize("shards", [1, 2, 3])
@pytest.mark.parametrize("streams", [4, 32])  # 32: every bundled paper config
def test_few_shards_train_with_any_stream_count_in_one_order_for_1_and_2_workers(few, shards, streams):
    info = open_dataset(few[shards])
    n = FEW[shards]
    cfg = _cfg(f"train.data_streams={streams}")
    m = max(2 * streams, 20)
    one = _items(RankLoader(info, cfg, 0, 1), m)
    assert [it["index"] for it in one] == list(range(m))
    r0, r1 = (_items(RankLoader(info, cfg, r, 2), m // 2) for r in (0, 1))
    assert [it["key"] for it in r0] == [it["key"] for it in one[0::2]]
    assert [it["key"] for it in r1] == [it["key"] for it in one[1::2]]
    assert [it["index"] for it in r1] == list(range(1, m, 2))
    for a, b in zip(r1, one[1::2]):
        assert torch.equal(a["latent"], b["latent"])
    # the same order again (fixed for a dataset and config), and every sample is used
    assert [it["key"] for it in _items(RankLoader(info, cfg, 0, 1), m)] == [it["key"] for it in one]
    plain = _cfg(f"train.data_streams={streams}", "train.shuffle_buffer=0")
    per_stream = -(-n // streams)
    seen = {it["key"] for it in _items(RankLoader(info, plain, 0, 1), streams * per_stream)}
    assert len(seen) == n
    # exact resume, also on the other worker count
    first = RankLoader(info, cfg, 0, 1)
    _items(first, 6)
    pos = DataPosition.from_dict(DataPosition.merged([first.position()], 6, 0).to_dict())
    assert [it["key"] for it in _items(RankLoader(info, cfg, 0, 1, start=pos), 10)] == \
        [it["key"] for it in one[6:16]]
    assert [it["key"] for it in _items(RankLoader(info, cfg, 1, 2, start=pos), 5)] == \
        [it["key"] for it in one[7:17:2]]


def test_few_shards_with_dataloader_workers_and_a_one_sample_dataset(tmp_path, few):
    info = open_dataset(few[2])
    cfg = _cfg("train.data_streams=4", "train.num_workers=2")
    loader = RankLoader(info, cfg, 0, 1)
    assert loader.workers == 2 and "6 sample(s)" in loader.note
    keys = _keys(loader, 12)
    loader.close()
    assert keys == _keys(RankLoader(info, _cfg("train.data_streams=4"), 0, 1), 12)
    single = open_dataset(make_synthetic_dataset(tmp_path / "one", _cfg(), n=1, seed=0))
    paper = load_config("cogvideox2b_mtsa", optional=["models.teacher.checkpoint"])
    v = paper.train.data_streams
    loader = RankLoader(single, _cfg(f"train.data_streams={v}"), 1, 2)
    assert {it["key"] for it in _items(loader, v)} == {"synth_000000"}
