"""`tsa score DIR_A DIR_B ...`: scored runs side by side with the paired difference to the first
and its interval (hand-computed), the Markdown / CSV / PNG outputs, and the refusal to pair runs
made from other prompts or seeds."""
from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from score_fixtures import sample_folder, videocon_file

SA_A = [0.9, 0.5, 0.4, 0.2, 0.75, 0.5, 0.1, 0.95]  # good: 1 1 0 0 1 1 0 1 (62.5)
SA_B = [0.9, 0.5, 0.6, 0.2, 0.75, 0.5, 0.1, 0.95]  # prompt 2 becomes good (75.0)
PC = [0.3, 0.7, 0.51, 0.0, 1.0, 0.2, 0.6, 0.4]  # the same in both runs (50.0)


def _cli(*args):
    from tsa.cli import app

    return CliRunner().invoke(app, ["score", *map(str, args)])


def _scored(root, name: str, sa: list[float], limit: int = 8, seed: int = 42):
    folder = sample_folder(root / name, "videophy", limit, seed=seed)
    res = _cli(folder, "--sa", videocon_file(root / f"{name}_sa.csv", folder, sa, "SA"),
               "--pc", videocon_file(root / f"{name}_pc.csv", folder, PC[:limit], "PC"), "--replicates", 2000)
    assert res.exit_code == 0, res.output
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return root, _scored(root, "a", SA_A), _scored(root, "b", SA_B)


def test_paired_difference_and_its_interval(runs):
    root, a, b = runs
    res = _cli(a, b, "--out", root / "cmp", "--replicates", 2000)
    assert res.exit_code == 0, res.output
    assert "| metric | a | b | b − a | prompts for ±1 |" in res.output
    with (root / "cmp" / "comparison.csv").open() as f:
        rows = {(r["metric"], r["run"]): r for r in csv.DictReader(f)}
    sa_b = rows[("SA", "b")]
    assert float(rows[("SA", "a")]["value"]) == 62.5 and float(sa_b["value"]) == 75.0
    # B - A differs on prompt 2 only: per draw 100 * (times prompt 2 drawn) / 8, times ~ Binomial(8, 1/8):
    # P(0) = 0.344 > 2.5 %, P(<= 2) = 0.933 < 97.5 % <= P(<= 3) = 0.989 -> [0, 37.5]
    assert float(sa_b["diff"]) == 12.5
    assert (float(sa_b["diff_ci_low"]), float(sa_b["diff_ci_high"])) == (0.0, 37.5)
    # identical PC scores: a zero difference with a zero-width interval
    pc_b = rows[("PC", "b")]
    assert (float(pc_b["diff"]), float(pc_b["diff_ci_low"]), float(pc_b["diff_ci_high"])) == (0.0, 0.0, 0.0)
    assert pc_b["prompts_for_1pt"] == "0"
    # +-18.75 points on 8 prompts -> 8 x 18.75^2 prompts for +-1 point
    assert sa_b["prompts_for_1pt"] == "2813"  # ceil(2812.5)
    assert rows[("solid_fluid/SA", "b")]["diff"]  # per category too
    md = (root / "cmp" / "comparison.md").read_text()
    assert "| SA | 62.5 [25.0, 87.5] | 75.0 " in md and "+12.5 [+0.0, +37.5] | 2,813 |" in md
    png = Image.open(io.BytesIO((root / "cmp" / "comparison.png").read_bytes()))
    assert png.format == "PNG" and png.width > 300 and png.height > 300
    # the reference compared with itself: zero everywhere
    res = _cli(a, a, "--replicates", 2000)
    assert res.exit_code == 0 and "+0.0 [+0.0, +0.0]" in res.output


def test_refuses_other_prompts_seeds_or_evaluators(runs, tmp_path):
    root, a, b = runs

    def refused(*dirs) -> str:
        res = _cli(*dirs)
        assert res.exit_code == 2, res.output
        assert not list(tmp_path.glob("comparison.*"))
        return res.stderr.strip()

    fewer = _scored(tmp_path, "fewer", SA_A[:6], limit=6)
    assert "different prompts (2 only in the first, 0 only in the second; first: prompt 6)" in refused(a, fewer)
    seed = _scored(tmp_path, "seed", SA_A, seed=7)
    assert "was sampled with --seed 7, " in refused(a, seed) and "with 42" in refused(a, seed)
    data = json.loads((b / "scores.json").read_text())
    data["evaluator"], data["benchmark"] = "videophy2-autoeval", "videophy2"
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "scores.json").write_text(json.dumps(data))
    assert "not comparable" in refused(a, tmp_path / "v2")
    assert "not found (score the run first" in refused(a, tmp_path)
    res = _cli(a, b, "--sa", tmp_path / "x.csv")
    assert res.exit_code == 2 and "score each run on its own" in res.stderr
