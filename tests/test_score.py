"""`tsa score` on the official evaluators' own file formats, with hand-computed answers: VideoPhy
SA / PC overall and per states_of_matter, VideoPhy2 SA / PC / Joint, VBench dimensions and the
final scores of its script, and bootstrap intervals whose exact or approximate bounds are known."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from score_fixtures import autoeval_file, eval_rows, sample_folder, vbench_file, videocon_file
from tsa.evaluate import bootstrap
from tsa.evaluate.score import ScoreInputs, score_folder
from tsa.evaluate.vbench_final import DIMENSIONS, final_scores

# The first 8 VideoPhy prompts: states_of_matter of prompt 0..7
CATS = ["solid_fluid", "fluid_fluid", "solid_fluid", "solid_fluid", "solid_fluid", "solid_solid", "solid_fluid",
        "solid_solid"]
SA = [0.9, 0.5, 0.49999, 0.2, 0.75, 0.5, 0.1, 0.95]  # >= 0.5: 1 1 0 0 1 1 0 1
PC = [0.3, 0.7, 0.51, 0.0, 1.0, 0.2, 0.6, 0.4]  # >= 0.5: 0 1 1 0 1 0 1 0


def _cli(*args):
    from tsa.cli import app

    return CliRunner().invoke(app, ["score", *map(str, args)])


@pytest.fixture(scope="module")
def videophy(tmp_path_factory):
    root = tmp_path_factory.mktemp("videophy")
    folder = sample_folder(root / "run", "videophy", 8)
    return folder, videocon_file(root / "sa.csv", folder, SA, "SA"), videocon_file(root / "pc.csv", folder, PC, "PC")


def test_videophy_sa_pc_overall_and_per_category(videophy):
    folder, sa, pc = videophy
    assert [r["category"] for r in map(json.loads, (folder / "samples.jsonl").read_text().splitlines())] == CATS
    res = _cli(folder, "--sa", sa, "--pc", pc)
    assert res.exit_code == 0, res.output
    assert "| % | 62.5 | 50.0 | 100.0 | 0.0 | 40.0 | 60.0 | 100.0 | 100.0 |" in res.output
    scores = json.loads((folder / "scores.json").read_text())
    assert (scores["benchmark"], scores["evaluator"], scores["videos"], scores["prompts"]) == \
        ("videophy", "videocon-physics", 8, 8)
    m = scores["metrics"]
    assert (m["SA"]["value"], m["PC"]["value"]) == (62.5, 50.0)  # 5 of 8 >= 0.5 (0.5 counts), 4 of 8
    c = scores["categories"]
    assert list(c) == ["solid_solid", "solid_fluid", "fluid_fluid"]  # the paper's column order
    assert [c[k]["videos"] for k in c] == [2, 5, 1]
    # solid_solid: prompts 5, 7 (SA 1 1, PC 0 0); solid_fluid: 0 2 3 4 6 (SA 1 0 0 1 0, PC 0 1 0 1 1); fluid_fluid: 1
    assert [(c[k]["SA"]["value"], c[k]["PC"]["value"]) for k in c] == [(100.0, 0.0), (40.0, 60.0), (100.0, 100.0)]
    # Every prompt of a category agreeing: each redraw gives the same value.
    assert c["solid_solid"]["SA"]["ci95"] == [100.0, 100.0] and c["solid_solid"]["PC"]["ci95"] == [0.0, 0.0]
    for entry in [m["SA"], m["PC"], *(c[k][x] for k in c for x in ("SA", "PC"))]:
        lo, hi = entry["ci95"]
        assert lo <= entry["value"] <= hi
    # 8 prompts, p = 5/8: the interval is wide (about +-34 points), and within [0, 100]
    assert 0 <= m["SA"]["ci95"][0] <= 37.5 and 87.5 <= m["SA"]["ci95"][1] <= 100
    assert [v["scores"] for v in scores["per_video"]][:2] == [{"SA": 0.9, "PC": 0.3}, {"SA": 0.5, "PC": 0.7}]
    # printing a scored folder again reads scores.json and writes nothing
    before = (folder / "scores.json").read_bytes()
    again = _cli(folder)
    assert again.exit_code == 0 and "| % | 62.5 | 50.0 |" in again.output
    assert (folder / "scores.json").read_bytes() == before


def test_videophy2_sa_pc_and_joint_on_the_same_video(tmp_path):
    folder = sample_folder(tmp_path / "run", "videophy2", 6)
    rows = eval_rows(folder)
    assert [Path(r["videopath"]).name for r in rows] == [f"{i:05d}_s42_v0.mp4" for i in range(6)]
    sa = autoeval_file(tmp_path / "sa.csv", folder, [5, 4, 3, 1, 4, 2])  # >= 4: 1 1 0 0 1 0
    pc = autoeval_file(tmp_path / "pc.csv", folder, [4, 5, 4, 4, 3, 0])  # >= 4: 1 1 1 1 0 0
    assert sa.read_text().splitlines()[0] == ",videopath,caption,score"  # pandas' index column
    res = _cli(folder, "--sa", sa, "--pc", pc)
    assert res.exit_code == 0, res.output
    m = json.loads((folder / "scores.json").read_text())["metrics"]
    assert list(m) == ["Joint", "SA", "PC"]  # Table 2's order
    assert m["SA"]["value"] == 50.0 and m["PC"]["value"] == pytest.approx(66.6667, abs=1e-4)
    assert m["Joint"]["value"] == pytest.approx(33.3333, abs=1e-4)  # prompts 0, 1 only: not 3/6 x 4/6
    assert "1 score(s) of 0" in res.output  # the evaluator's "could not parse" value, reported
    for entry in m.values():
        assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]


def test_bootstrap_intervals_exact_and_approximate():
    # Two prompts, one good: redraws give 2, 1 or 0 good with p 1/4, 1/2, 1/4 -> [0, 100].
    sums = np.array([[[1.0, 1.0]], [[0.0, 1.0]]])
    est = bootstrap.estimates(bootstrap.replicate_weights(2), sums)
    assert est[0, 0] == 0.5 and bootstrap.interval(est[1:, 0]) == (0.0, 1.0)
    # 344 prompts, 172 good: the normal approximation 50 +- 1.96 sqrt(0.25 / 344) = 50 +- 5.28 points
    sums = np.zeros((344, 1, 2))
    sums[:172, 0, 0] = 1.0
    sums[:, 0, 1] = 1.0
    lo, hi = bootstrap.interval(100 * bootstrap.estimates(bootstrap.replicate_weights(344), sums)[1:, 0])
    assert lo == pytest.approx(44.72, abs=0.6) and hi == pytest.approx(55.28, abs=0.6)
    # a +-1-point interval needs (5.28 / 1)^2 times the prompts
    assert bootstrap.prompts_for_half_width(lo, hi, 344) == pytest.approx(344 * 5.28 ** 2, rel=0.12)
    # several videos of one prompt travel together: the ratio is sum(num) / sum(den)
    sums = np.array([[[2.0, 5.0]], [[3.0, 5.0]]])
    assert bootstrap.estimates(bootstrap.replicate_weights(2, 10), sums)[0, 0] == 0.5


PAPER_TABLE_3 = {  # CogVideoX-2B* and + M-TSA rows of the paper's Table 3 (x 100)
    "base": ([93.4, 94.2, 98.0, 98.3, 56.9, 63.4, 63.2, 91.3, 71.6, 98.2, 85.0, 75.5, 52.2, 24.4, 25.2, 27.1],
             {"Total": 81.0, "Quality": 81.4, "Semantic": 79.4}),
    "mtsa": ([93.5, 94.5, 98.0, 98.4, 56.1, 63.0, 63.5, 90.2, 73.0, 98.8, 84.4, 75.9, 53.4, 24.5, 25.2, 27.2],
             {"Total": 81.2, "Quality": 81.5, "Semantic": 79.7}),
}


def test_vbench_final_scores_match_the_paper_and_hand_values():
    order = list(DIMENSIONS)
    for dims, expected in PAPER_TABLE_3.values():
        got = final_scores({d: np.array(v / 100) for d, v in zip(order, dims)})
        for key, value in expected.items():  # the paper's dimensions are rounded to 0.1
            assert 100 * float(got[key]) == pytest.approx(value, abs=0.15), key
    best = {d: np.array(hi) for d, (lo, hi, w) in DIMENSIONS.items()}
    assert {k: float(v) for k, v in final_scores(best).items()} == pytest.approx(
        {"Quality": 1.0, "Semantic": 1.0, "Total": 1.0})
    # dynamic degree at its minimum (weight 0.5): Quality = 6 / 6.5, Total = (4 x 6/6.5 + 1) / 5
    best["dynamic_degree"] = np.array(0.0)
    got = final_scores(best)
    assert float(got["Quality"]) == pytest.approx(6 / 6.5) and float(got["Total"]) == pytest.approx((24 / 6.5 + 1) / 5)
    del best["color"]
    assert set(final_scores(best)) == {"Quality"}  # no Semantic or Total without all its dimensions


def _vbench_run(tmp_path):
    """75 temporal_flickering prompts and 2 multiple_objects ones, 2 videos each."""
    folder = sample_folder(tmp_path / "run", "vbench", 77, videos=2)
    names = sorted(p.name for p in (folder / "videos").iterdir())
    assert len(names) == 154 and "In a still frame, a stop sign-0.mp4" in names
    flicker = [{"video_path": f"/gpu/box/videos/{n}", "video_results": 0.9 if n.endswith("-0.mp4") else 0.8}
               for n in names if not n.startswith(("a bird and a cat", "a cat and a dog"))]
    objects = [{"video_path": f"/gpu/box/videos/{n}", "video_results": s / 16, "success_frame_count": s,
                "frame_count": 16} for n, s in zip(["a bird and a cat-0.mp4", "a bird and a cat-1.mp4",
                                                   "a cat and a dog-0.mp4", "a cat and a dog-1.mp4"], [16, 4, 0, 12])]
    return folder, flicker, objects


def test_vbench_dimensions_from_its_results_json(tmp_path):
    folder, flicker, objects = _vbench_run(tmp_path)
    assert len(flicker) == 150
    results = vbench_file(tmp_path / "r_eval_results.json",
                          {"temporal_flickering": (0.85, flicker), "multiple_objects": (32 / 64, objects)})
    res = _cli(folder, "--vbench", results)
    assert res.exit_code == 0, res.output
    s = json.loads((folder / "scores.json").read_text())
    m = s["metrics"]
    assert set(m) == {"temporal_flickering", "multiple_objects"}  # no Quality/Semantic/Total from 2 of 16
    assert m["temporal_flickering"]["value"] == pytest.approx(85.0)  # (0.9 + 0.8) / 2 per prompt
    assert m["temporal_flickering"]["ci95"] == pytest.approx([85.0, 85.0])  # every prompt the same
    assert m["multiple_objects"]["value"] == pytest.approx(50.0)  # (16 + 4 + 0 + 12) / 64 frames
    assert s["vbench"]["version"] == "0.1.5" and s["vbench"]["offsets"]["multiple_objects"] == pytest.approx(0.0)
    lo, hi = m["multiple_objects"]["ci95"]  # prompt means 62.5 and 37.5: redraws give 37.5, 50 or 62.5
    assert (lo, hi) == pytest.approx((37.5, 62.5))
    assert "Temporal Flickering" in res.output and "Multiple Objects" in res.output


def test_vbench_refuses_missing_extra_and_duplicate_videos(tmp_path):
    folder, flicker, objects = _vbench_run(tmp_path)

    def run(results: dict) -> str:
        path = vbench_file(tmp_path / "bad.json", results)
        res = _cli(folder, "--vbench", path)
        assert res.exit_code == 2, res.output
        assert not (folder / "scores.json").exists()
        return res.output

    assert "multiple_objects has no result for 1 of its 4 videos" in run({"multiple_objects": (0.5, objects[:3])})
    assert "scores a cat and a dog-1.mp4 twice" in run({"multiple_objects": (0.5, objects + objects[3:])})
    assert "its prompt does not serve temporal_flickering" in run({"temporal_flickering": (0.85, flicker + objects[:1])})
    stray = {"video_path": "/x/a dog-0.mp4", "video_results": 1.0}
    assert "scores a dog-0.mp4, not a video of" in run({"temporal_flickering": (0.85, flicker + [stray])})
    assert "'camera_motion' is not one of VBench's 16" in run({"camera_motion": (0.5, [])})
    # VBench drops temporal-flickering videos itself: a missing one is a note, not an error
    res = _cli(folder, "--vbench", vbench_file(tmp_path / "ok.json", {"temporal_flickering": (0.85, flicker[1:])}))
    assert res.exit_code == 0, res.output
    assert "temporal_flickering: VBench kept 149 of 150 videos" in res.output


def test_score_folder_api_returns_the_same_numbers(videophy):
    folder, sa, pc = videophy
    result, notes = score_folder(folder, ScoreInputs(sa=sa, pc=pc), replicates=1000)
    assert result["metrics"]["SA"]["value"] == 62.5 and result["bootstrap"]["replicates"] == 1000
    assert notes == []
