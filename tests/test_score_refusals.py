"""`tsa score` refuses bad input with one line naming the file (and line) and writes nothing:
another evaluator's file or scale, SA and PC swapped, unreadable rows, missing / extra /
duplicated / foreign videos, captions that are not the sampled ones, unfinished sample folders."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from score_fixtures import autoeval_file, eval_rows, sample_folder, videocon_file
from tsa.evaluate.samples_log import read_samples, write_eval_csv

SA = [0.9, 0.5, 0.4, 0.2]
PC = [0.3, 0.7, 0.6, 0.0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    v1 = sample_folder(root / "videophy", "videophy", 4)
    v2 = sample_folder(root / "videophy2", "videophy2", 4)
    return root, v1, v2


def _refused(folder: Path, *args) -> str:
    from tsa.cli import app

    res = CliRunner().invoke(app, ["score", str(folder), *map(str, args)])
    assert res.exit_code == 2, res.output
    assert not (folder / "scores.json").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _copy(src: Path, dst: Path, edit) -> Path:
    text = src.read_text()
    dst.write_text(edit(text))
    return dst


def test_wrong_evaluator_or_scale(runs, tmp_path):
    root, v1, v2 = runs
    sa1, pc1 = videocon_file(tmp_path / "sa1.csv", v1, SA, "SA"), videocon_file(tmp_path / "pc1.csv", v1, PC, "PC")
    sa2, pc2 = autoeval_file(tmp_path / "sa2.csv", v2, [5, 4, 3, 1]), autoeval_file(tmp_path / "pc2.csv", v2, [4, 4, 2, 1])
    # VideoPhy2's files for a VideoPhy run, and the other way round
    msg = _refused(v1, "--sa", autoeval_file(tmp_path / "x.csv", v1, [5, 4, 3, 1]), "--pc", pc1)
    assert "VideoPhy-2-AutoEval CSV (scores 1-5), but the videophy benchmark is scored by videocon-physics" in msg
    assert "VideoCon-Physics rows (scores in [0, 1]), but the videophy2 benchmark" in _refused(
        v2, "--sa", videocon_file(tmp_path / "y.csv", v2, SA, "SA"), "--pc", pc2)
    # 1-5 scores written as VideoCon-Physics rows
    five = videocon_file(tmp_path / "five.csv", v1, [5.0, 4.0, 3.0, 1.0], "SA")
    assert "five.csv line 4: score 5 is outside VideoCon-Physics' [0, 1]" in _refused(v1, "--sa", five, "--pc", pc1)
    # [0, 1] probabilities in a VideoPhy-2-AutoEval CSV
    probs = autoeval_file(tmp_path / "probs.csv", v2, [0.9, 0.5, 0.4, 0.2])
    assert "probs.csv line 2: score 0.9 is not one of VideoPhy-2-AutoEval's 0..5 (VideoCon-Physics' [0, 1] scale?)" \
        in _refused(v2, "--sa", probs, "--pc", pc2)
    # SA and PC swapped, or the same file twice
    assert "given as --sa" in _refused(v1, "--sa", pc1, "--pc", sa1)
    assert "--sa and --pc are the same file" in _refused(v2, "--sa", sa2, "--pc", sa2)
    assert "give both --sa FILE and --pc FILE" in _refused(v1, "--sa", sa1)
    vb = tmp_path / "r.json"
    vb.write_text("{}")
    assert "was not sampled with --benchmark vbench" in _refused(v1, "--vbench", vb)


def test_unreadable_rows(runs, tmp_path):
    root, v1, v2 = runs
    sa, pc = videocon_file(tmp_path / "sa.csv", v1, SA, "SA"), videocon_file(tmp_path / "pc.csv", v1, PC, "PC")
    nan = _copy(pc, tmp_path / "nan.csv", lambda t: t.replace(",0.7\n", ",oops\n"))
    assert "nan.csv line 8: score 'oops' is not a number" in _refused(v1, "--sa", sa, "--pc", nan)
    short = tmp_path / "short.csv"
    short.write_text(pc.read_text() + "/some/video.mp4,0.5\n")
    assert "short.csv line 17: 2 field(s), expected 3" in _refused(v1, "--sa", sa, "--pc", short)
    other = _copy(pc, tmp_path / "other.csv", lambda t: t.replace("follow the physical laws", "look nice"))
    assert "other.csv line 4: the question is neither" in _refused(v1, "--sa", sa, "--pc", other)
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("just some text\n")
    assert "garbage.csv: neither VideoCon-Physics rows" in _refused(v1, "--sa", sa, "--pc", garbage)
    # VideoPhy-2-AutoEval stopped early: rows without a score
    sa2 = autoeval_file(tmp_path / "sa2.csv", v2, [5, 4, 3, 1])
    cut = _copy(autoeval_file(tmp_path / "pc2.csv", v2, [4, 4, 2, 1]), tmp_path / "cut.csv",
                lambda t: t.replace(",2.0\n", ",\n"))
    assert "cut.csv line 4: no score" in _refused(v2, "--sa", sa2, "--pc", cut)


def test_missing_extra_duplicate_foreign_and_miscaptioned_videos(runs, tmp_path):
    root, v1, v2 = runs
    sa, pc = videocon_file(tmp_path / "sa.csv", v1, SA, "SA"), videocon_file(tmp_path / "pc.csv", v1, PC, "PC")
    rows = list(csv.reader(pc.open(newline="")))

    def write(name: str, rs) -> Path:
        with (tmp_path / name).open("w", newline="") as f:
            csv.writer(f).writerows(rs)
        return tmp_path / name

    assert "no score for 1 of the 4 videos" in _refused(v1, "--sa", sa, "--pc", write("miss.csv", rows[:3]))
    assert "(first: 00003_s42_v0.mp4)" in _refused(v1, "--sa", sa, "--pc", write("miss.csv", rows[:3]))
    extra = rows + [["/elsewhere/00009_s42_v0.mp4", rows[0][1], "0.5"]]
    assert "1 video(s) that are not in" in _refused(v1, "--sa", sa, "--pc", write("extra.csv", extra))
    # entailment_inference.py appends: running it twice scores every video twice
    again = videocon_file(tmp_path / "twice.csv", v1, PC, "PC")
    videocon_file(again, v1, PC, "PC")
    assert "00000_s42_v0.mp4 is scored twice (lines 4 and 20)" in _refused(v1, "--sa", sa, "--pc", again)
    # scores of another run's videos (same names, another folder that exists here)
    other = tmp_path / "other_run"
    shutil.copytree(v1, other)
    write_eval_csv(other, read_samples(other))  # its own absolute videopaths
    foreign = videocon_file(tmp_path / "foreign.csv", other, PC, "PC")
    assert "is a video of another folder" in _refused(v1, "--sa", sa, "--pc", foreign)
    # SA judged against another caption than the sampled one
    wrong = _copy(sa, tmp_path / "wrong.csv", lambda t: t.replace("Honey diffusing into warm milk.", "Milk."))
    assert "00001_s42_v0.mp4 was judged against 'Milk.'" in _refused(v1, "--sa", wrong, "--pc", pc)


def test_unfinished_sample_folder(tmp_path):
    folder = sample_folder(tmp_path / "run", "videophy", 4, unfinished=1)
    assert len(eval_rows(folder)) == 3
    sa = videocon_file(tmp_path / "sa.csv", folder, SA[:3], "SA")
    pc = videocon_file(tmp_path / "pc.csv", folder, PC[:3], "PC")
    msg = _refused(folder, "--sa", sa, "--pc", pc)
    assert "is incomplete: 1 of 4 videos are not finished (first: 00003_s42_v0.mp4)" in msg
    assert "not a `tsa sample` output folder" in _refused(tmp_path, "--sa", sa, "--pc", pc)
    assert "not scored yet" in _refused(folder)
