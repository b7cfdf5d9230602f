"""`tsa preprocess` inputs as OpenVid ships them: layouts, --csv/--videos, the wrong-layout
error, --subset before any file look-up, --where, --sample (+ OUT/subset.txt), and rows
that point outside the source folder. Small CSVs and empty clip files: nothing is decoded."""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

import tsa.pipeline.sources as sources
from tsa.pipeline.run import clip_list_fingerprint
from tsa.pipeline.inputs import list_clips, select_inputs
from tsa.pipeline.sources import SourceError

COLUMNS = ["video", "caption", "aesthetic score", "motion score", "temporal consistency score", "camera motion",
           "frame", "fps", "seconds"]  # OpenVid-1M.csv's header


def openvid_rows(n: int, start: int = 0) -> list[dict]:
    return [{"video": f"clip_{i:04d}.mp4", "caption": f"caption {i}", "aesthetic score": 4 + (i % 5) * 0.5,
             "motion score": i % 7, "temporal consistency score": 0.99, "camera motion": ("static", "pan")[i % 2],
             "frame": 100 + i, "fps": 30.0, "seconds": round((100 + i) / 30, 3)} for i in range(start, start + n)]


def write_csv(path: Path, rows: list[dict], columns=COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def touch_clips(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        (folder / r["video"]).write_bytes(b"")  # listing never opens a clip


def openvid_download(root: Path, n: int = 6, hd: tuple[int, ...] = (1, 3, 4)) -> list[dict]:
    """The layout OpenVid's download script writes: data/train/{OpenVid-1M,OpenVidHD}.csv, clips
    unzipped into video/, zips in download/."""
    rows = openvid_rows(n)
    write_csv(root / "data" / "train" / "OpenVid-1M.csv", rows)
    write_csv(root / "data" / "train" / "OpenVidHD.csv", [rows[i] for i in hd])
    touch_clips(root / "video", rows)
    (root / "download").mkdir()
    (root / "download" / "OpenVid_part0.zip").write_bytes(b"PK")
    return rows


def test_openvid_download_layout_is_found_from_its_root(tmp_path):
    rows = openvid_download(tmp_path)
    items = list_clips(tmp_path)
    # OpenVidHD.csv is a subset of OpenVid-1M.csv: read once, nothing listed twice.
    assert [it.video for it in items] == [r["video"] for r in rows]
    assert all(it.status == "ok" for it in items)
    assert items[0].path == str((tmp_path / "video" / "clip_0000.mp4").resolve())
    assert items[2].extras["motion score"] == 2 and items[2].extras["camera motion"] == "static"
    assert items[2].extras["csv_fps"] == 30.0 and items[2].extras["csv_seconds"] == rows[2]["seconds"]
    assert items[2].extras["frame"] == 102  # no clash with the manifest's `frames`
    # The HD clips only: name that CSV; the clips are still found from the root.
    hd = list_clips(tmp_path, csvs=[tmp_path / "data" / "train" / "OpenVidHD.csv"])
    assert [it.video for it in hd] == ["clip_0001.mp4", "clip_0003.mp4", "clip_0004.mp4"]
    assert all(it.status == "ok" for it in hd)


def test_openvid_csvs_beside_the_zips_are_not_read_twice(tmp_path):
    """The README's layout: both CSVs directly in the folder, clips unzipped elsewhere."""
    rows = openvid_rows(4)
    write_csv(tmp_path / "OpenVid-1M.csv", rows)
    write_csv(tmp_path / "OpenVidHD.csv", rows[2:])
    touch_clips(tmp_path / "video_folder", rows)
    items = list_clips(tmp_path, videos=tmp_path / "video_folder")
    assert [it.video for it in items] == [r["video"] for r in rows] and {it.status for it in items} == {"ok"}


def test_csv_and_videos_name_any_layout(tmp_path):
    a, b = openvid_rows(3), openvid_rows(2, start=10)
    csv_a = write_csv(tmp_path / "lists" / "a.csv", a)
    csv_b = write_csv(tmp_path / "lists" / "b.csv", b)
    touch_clips(tmp_path / "anywhere" / "clips", a + b)
    items = list_clips(csvs=[csv_b, csv_a], videos=tmp_path / "anywhere" / "clips")
    assert [it.video for it in items] == [r["video"] for r in b + a]  # CSVs in the order named
    assert {it.status for it in items} == {"ok"}
    with pytest.raises(SourceError, match="--csv needs --videos"):
        list_clips(csvs=[csv_a])
    with pytest.raises(SourceError, match="--videos .*nope: not a folder"):
        list_clips(csvs=[csv_a], videos=tmp_path / "nope")
    with pytest.raises(SourceError, match="--csv .*missing.csv: file not found"):
        list_clips(csvs=[tmp_path / "missing.csv"], videos=tmp_path)


def test_todays_layouts_still_work(tmp_path):
    rows = openvid_rows(3)
    write_csv(tmp_path / "clips.csv", rows)
    touch_clips(tmp_path / "videos", rows[:2])
    (tmp_path / rows[2]["video"]).write_bytes(b"")  # src/<video>
    items = list_clips(tmp_path)
    assert [it.status for it in items] == ["ok"] * 3
    assert items[2].path == str((tmp_path / rows[2]["video"]).resolve())
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.mp4").write_bytes(b"")
    (folder / "sub" / "x.txt").write_text("a caption\n")
    assert [(it.video, it.caption, it.status) for it in list_clips(folder)] == [("sub/x.mp4", "a caption", "ok")]
    for i in range(9):
        (folder / f"c{i}.mp4").write_bytes(b"")
    drawn = [it.video for it in list_clips(folder, sample=4, seed=2)]
    assert len(drawn) == 4 and drawn == sorted(drawn) and drawn == [it.video for it in list_clips(folder, sample=4, seed=2)]


def test_not_one_clip_found_is_a_wrong_layout(tmp_path):
    rows = openvid_rows(3)
    write_csv(tmp_path / "clips.csv", rows)
    touch_clips(tmp_path / "elsewhere", rows)
    with pytest.raises(SourceError, match="none of the 3 listed clips was found") as e:
        list_clips(tmp_path)
    assert str(tmp_path.resolve()) in str(e.value) and "--videos" in str(e.value)
    # One clip there: the others are broken rows, not a wrong layout.
    (tmp_path / rows[1]["video"]).write_bytes(b"")
    statuses = [(it.status, it.error or "") for it in list_clips(tmp_path)]
    assert statuses[1] == ("ok", "") and statuses[0][0] == "failed" and "file not found" in statuses[0][1]
    # The download layout without its video/ folder.
    root = tmp_path / "root"
    write_csv(root / "data" / "train" / "OpenVid-1M.csv", rows)
    with pytest.raises(SourceError, match=r"no .*video folder .*--videos DIR"):
        list_clips(root)


def test_cli_stops_on_a_wrong_layout_before_writing_anything(tmp_path):
    from typer.testing import CliRunner

    from tsa.cli import app

    rows = openvid_rows(2)
    write_csv(tmp_path / "src" / "data" / "train" / "OpenVid-1M.csv", rows)
    touch_clips(tmp_path / "src" / "video", [])  # the download failed: an empty video/
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["preprocess", "--src", str(tmp_path / "src"), "--out", str(out), "--config", "tiny",
                                   "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "none of the 2 listed clips was found" in res.output and "video" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["preprocess", "--out", str(out), "--config", "tiny"])
    assert res.exit_code == 2 and "--csv FILE with --videos DIR" in res.output
    res = CliRunner().invoke(app, ["preprocess", "--src", str(tmp_path / "src"), "--out", str(out), "--config", "tiny",
                                   "--where", "motion scor >= 2"])
    assert res.exit_code == 2 and "no column 'motion scor'" in res.output and not out.exists()


def test_subset_is_applied_before_any_file_is_looked_at(tmp_path, monkeypatch):
    rows = openvid_rows(2000)
    write_csv(tmp_path / "OpenVid-1M.csv", rows)
    keep = [rows[1500], rows[7], rows[640]]
    touch_clips(tmp_path / "videos", keep)
    (tmp_path / "subset.txt").write_text("".join(r["video"] + "\n" for r in keep))
    looked_up = []
    real = sources.resolve_clip
    monkeypatch.setattr(sources, "resolve_clip", lambda dirs, video: looked_up.append(video) or real(dirs, video))
    items = list_clips(tmp_path, subset=tmp_path / "subset.txt")
    assert [it.video for it in items] == ["clip_0007.mp4", "clip_0640.mp4", "clip_1500.mp4"]  # CSV order
    assert sorted(looked_up) == sorted(r["video"] for r in keep)


def test_where_filters_on_csv_columns(tmp_path):
    rows = openvid_rows(20)
    rows[3]["motion score"] = ""  # an empty cell never passes a filter
    write_csv(tmp_path / "OpenVid-1M.csv", rows)
    touch_clips(tmp_path / "videos", rows)

    def videos(*where):
        return [int(it.video[5:9]) for it in list_clips(tmp_path, where=list(where))]

    assert videos("motion score >= 5") == [5, 6, 12, 13, 19]
    assert videos("motion score>=5", "aesthetic score < 6") == [5, 6, 12, 13]  # ANDed
    assert videos("motion score == 0") == [0, 7, 14]
    assert videos("motion score != 0") == [i for i in range(20) if i not in (0, 3, 7, 14)]
    assert videos("camera motion == 'static'", "motion score <= 1") == [0, 8, 14]
    assert videos("camera motion != static", "motion score > 5") == [13]
    with pytest.raises(SourceError, match=r"no column 'motion' \(columns: video, caption, aesthetic score, motion score"):
        list_clips(tmp_path, where=["motion >= 2"])
    with pytest.raises(SourceError, match="expected COLUMN OP VALUE"):
        list_clips(tmp_path, where=["motion score ~ 2"])
    with pytest.raises(SourceError, match="holds numbers, 'high' is not one"):
        list_clips(tmp_path, where=["motion score >= high"])
    with pytest.raises(SourceError, match="no row .* passes --where 'motion score > 100'"):
        list_clips(tmp_path, where=["motion score > 100"])
    with pytest.raises(SourceError, match="--where needs CSV input"):
        (tmp_path / "folder").mkdir()
        list_clips(tmp_path / "folder", where=["motion score > 1"])


def test_sample_is_a_deterministic_draw_in_csv_order(tmp_path, caplog):
    rows = openvid_rows(60)
    write_csv(tmp_path / "a" / "OpenVid-1M.csv", rows)
    touch_clips(tmp_path / "a" / "videos", rows)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    write_csv(tmp_path / "b" / "list.csv", shuffled)
    touch_clips(tmp_path / "b" / "videos", rows)

    def pick(src, **kw):
        return [it.video for it in list_clips(tmp_path / src, **kw)]

    first = pick("a", sample=10)
    assert len(first) == 10 and first == sorted(first)  # input order kept (the CSV is sorted by name)
    assert pick("a", sample=10, seed=0) == first  # --seed defaults to 0; a rerun draws the same
    assert sorted(pick("b", sample=10)) == first  # the row order does not matter
    assert pick("a", sample=10, seed=1) != first
    assert set(first) < set(pick("a", sample=11))  # a larger draw contains the smaller one
    filtered = pick("a", where=["motion score >= 3"], sample=5)
    assert len(filtered) == 5 and all(int(v[5:9]) % 7 >= 3 for v in filtered)
    with caplog.at_level("WARNING"):
        assert pick("a", sample=1000) == [r["video"] for r in rows]
    assert "only 60 distinct clips" in caplog.text
    with pytest.raises(SourceError, match="--seed only applies"):
        list_clips(tmp_path / "a", seed=3)
    with pytest.raises(SourceError, match="--sample 0: must be >= 1"):
        list_clips(tmp_path / "a", sample=0)


def test_sample_list_is_written_and_repeats_the_run(tmp_path):
    rows = openvid_download(tmp_path / "root", n=30)
    sel = select_inputs(tmp_path / "root", where=["motion score >= 1"], sample=8, seed=5, limit=6)
    out = tmp_path / "out"
    out.mkdir()
    path = sel.write_subset(out)
    assert path == out / "subset.txt"
    lines = path.read_text().splitlines()
    assert lines[0] == "# --where 'motion score >= 1' --sample 8 --seed 5" and lines[1].startswith("# 6 clips")
    assert lines[2:] == [it.video for it in sel.items] and len(sel.items) == 6
    again = select_inputs(tmp_path / "root", subset=path)  # shared: the same list, the same shards
    assert clip_list_fingerprint(again.items) == clip_list_fingerprint(sel.items)
    assert again.write_subset(out) is None  # nothing drawn: nothing to record
    assert [r["video"] for r in rows if r["video"] in lines[2:]] == lines[2:]


def test_rows_outside_the_source_folder_fail_and_are_never_opened(tmp_path):
    src = tmp_path / "src"
    (src / "videos").mkdir(parents=True)
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"")
    (src / "videos" / "good.mp4").write_bytes(b"")
    os.symlink(secret, src / "videos" / "leaves.mp4")
    os.symlink(src / "videos" / "good.mp4", src / "videos" / "alias.mp4")  # stays inside: fine
    os.symlink(tmp_path, src / "videos" / "up")  # a folder link that leaves
    videos = ["good.mp4", "../../secret.mp4", str(secret), "leaves.mp4", "alias.mp4", "up/secret.mp4",
              "sub/../../secret.mp4"]
    write_csv(src / "clips.csv", [{"video": v, "caption": "c"} for v in videos], columns=["video", "caption"])
    items = list_clips(src)
    assert [it.status for it in items] == ["ok", "failed", "failed", "failed", "skipped", "failed", "failed"]
    for it in (items[1], items[2], items[3], items[5], items[6]):
        assert it.error.startswith("outside the source folder"), it.error
        assert it.path != str(secret)  # the decoder is never given the outside file
    assert items[4].error == "duplicate of input row 0 (same file)"
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(secret, folder / "x.mp4")
    (folder / "x.txt").write_text("caption")
    [item] = list_clips(folder)
    assert item.status == "failed" and item.error.startswith("outside the source folder")


def test_csv_reading_keeps_types_and_odd_cells(tmp_path):
    """Quoted commas and newlines in captions, a BOM, a caption `NA`, a number column whose
    last row is text (pyarrow would infer int from the first block and fail)."""
    body = ('\ufeffvideo,caption,score,note\n'
            ' a.mp4 ,"hello, ""world""\nsecond line",1,x\n'
            'b.mp4,NA,2,\n'
            'c.mp4,fine,n/a,y\n')
    (tmp_path / "clips.csv").write_text(body, encoding="utf-8")
    touch_clips(tmp_path / "videos", [{"video": v} for v in ("a.mp4", "b.mp4", "c.mp4")])
    items = list_clips(tmp_path)
    assert [it.video for it in items] == ["a.mp4", "b.mp4", "c.mp4"]
    assert items[0].caption == 'hello, "world"\nsecond line' and items[1].caption == "NA"
    assert [it.extras["score"] for it in items] == ["1", "2", "n/a"]
    assert [it.extras["note"] for it in items] == ["x", None, "y"]
    (tmp_path / "clips.csv").write_text("video,caption,score\na.mp4,x,1.5\nb.mp4,y,nan\nc.mp4,z,3\n")
    assert [it.extras["score"] for it in list_clips(tmp_path)] == [1.5, None, 3.0]


@pytest.mark.slow
def test_openvid_root_with_sample_runs_and_reruns_as_a_resume(tmp_path, ray_local):
    """`tsa preprocess --src ROOT --sample N --where ...` on OpenVid's download layout: the
    chosen list goes to OUT/subset.txt, a phone clip comes out upright, and the same command
    (or --subset OUT/subset.txt) again resumes instead of being refused."""
    import shutil

    from typer.testing import CliRunner

    from tsa.cli import app
    from tsa.shards.reader import open_output, read_sample
    from tsa.testing.sample_clips import make_sample_clips
    from tsa.pipeline.selection import sample_videos
    from test_pipeline_rotation import upright_frames, write_rotated  # pytest puts tests/ on sys.path

    made = make_sample_clips(tmp_path / "made", n=3, seed=4, broken=False)
    root = tmp_path / "openvid"
    shutil.move(str(made / "videos"), str(root / "video"))
    write_rotated(upright_frames(t=12), root / "video" / "phone.mp4", 90)
    with open(made / "clips.csv") as f:
        rows = list(csv.DictReader(f))
    rows.append({"video": "phone.mp4", "caption": "a phone clip held upright", "aesthetic score": 5.0,
                 "motion score": 1.0})
    names = [r["video"] for r in rows]
    write_csv(root / "data" / "train" / "OpenVid-1M.csv", rows, columns=list(rows[0]))
    write_csv(root / "data" / "train" / "OpenVidHD.csv", rows[:2], columns=list(rows[0]))
    seed = next(s for s in range(100) if "phone.mp4" in sample_videos(names, 3, s))
    out = tmp_path / "out"
    cmd = ["preprocess", "--src", str(root), "--out", str(out), "--config", "tiny", "-o",
           "preprocess.samples_per_shard=2", "--where", "aesthetic score >= 0", "--sample", "3", "--seed", str(seed),
           "--no-progress"]
    runner = CliRunner()
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
    chosen = [n for n in names if n in sample_videos(names, 3, seed)]  # CSV order
    listed = [s for s in (out / "subset.txt").read_text().splitlines() if not s.startswith("#")]
    assert listed == chosen
    info = open_output(out)
    assert [r["video"] for r in info.rows()] == chosen and {r["status"] for r in info.rows()} == {"ok"}
    phone = read_sample(out, "phone")
    assert phone["meta.json"]["rotation"] == 90 and phone["meta.json"]["source_size"] == [96, 160]
    assert {r["key"]: (r["width"], r["height"]) for r in info.rows()}["phone"] == (96, 160)
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    for again in (cmd, cmd[:cmd.index("--where")] + ["--subset", str(out / "subset.txt"), "--no-progress"]):
        res = runner.invoke(app, again)
        assert res.exit_code == 0 and "resuming: 3 of 3 clips" in res.output, res.output
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before
