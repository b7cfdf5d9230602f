"""Prompt sets for `tsa sample`: .txt and CSV, column choice, limits, clear errors."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tsa.evaluate.prompts import Prompt, PromptError, read_prompts

BENCHMARKS = Path(__file__).resolve().parents[1] / "evaluate" / "prompt_sets"  # the package's own copies


def _csv(path: Path, header, rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_txt_one_prompt_a_line_blank_lines_skipped(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("  a ball rolls \n\nhoney pours\n   \nglass shatters\n")
    assert read_prompts(p) == [Prompt(0, "a ball rolls", "a ball rolls"), Prompt(1, "honey pours", "honey pours"),
                               Prompt(2, "glass shatters", "glass shatters")]
    assert [q.index for q in read_prompts(p, limit=2)] == [0, 1]


def test_csv_default_column_is_caption_then_prompt(tmp_path):
    both = _csv(tmp_path / "a.csv", ["prompt", "caption"], [["long one", "short one"], ["long two", "short two"]])
    assert [q.text for q in read_prompts(both)] == ["short one", "short two"]
    only_prompt = _csv(tmp_path / "b.csv", ["id", "prompt"], [[1, "p1"], [2, "p2"]])
    assert read_prompts(only_prompt) == [Prompt(0, "p1", "p1"), Prompt(1, "p2", "p2")]


def test_csv_column_choice_keeps_the_caption_for_the_evaluators(tmp_path):
    p = _csv(tmp_path / "v2.csv", ["caption", "upsampled_caption"],
             [["Arrows hit a target.", "An archer, clad in black, shoots arrows at a red target."],
              ["A dog catches a frisbee.", "In a sunny park, a dog leaps to catch a red frisbee."]])
    prompts = read_prompts(p, column="upsampled_caption")
    assert [q.text for q in prompts] == ["An archer, clad in black, shoots arrows at a red target.",
                                        "In a sunny park, a dog leaps to catch a red frisbee."]
    assert [q.caption for q in prompts] == ["Arrows hit a target.", "A dog catches a frisbee."]
    assert [q.caption for q in read_prompts(p, column="upsampled_caption", caption_column="upsampled_caption")] == \
        [q.text for q in prompts]


def test_errors_name_the_file_and_the_column(tmp_path):
    p = _csv(tmp_path / "x.csv", ["video", "text"], [["a.mp4", "t"]])
    with pytest.raises(PromptError, match=r"x\.csv: no 'caption' or 'prompt' column \(columns: video, text\)"):
        read_prompts(p)
    with pytest.raises(PromptError, match=r"x\.csv: no column 'upsampled_caption' for the prompt text"):
        read_prompts(p, column="upsampled_caption")
    holes = _csv(tmp_path / "holes.csv", ["caption"], [["ok"], [""], ["ok too"]])
    with pytest.raises(PromptError, match=r"holes\.csv: data row 1 has an empty 'caption'"):
        read_prompts(holes)
    with pytest.raises(PromptError, match="prompt file not found"):
        read_prompts(tmp_path / "missing.csv")
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(PromptError, match=r"expected a \.txt .* or a \.csv"):
        read_prompts(tmp_path / "p.json")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "ok.txt").write_text("a\n")
    with pytest.raises(PromptError, match="CSV files only"):
        read_prompts(tmp_path / "ok.txt", column="caption")
    with pytest.raises(PromptError, match="--limit 0"):
        read_prompts(tmp_path / "ok.txt", limit=0)


def test_the_shipped_videophy_prompt_sets_read_in_full():
    import pandas as pd

    v1 = BENCHMARKS / "videophy_prompts.csv"
    prompts = read_prompts(v1)
    assert len(prompts) == len(pd.read_csv(v1)) == 344
    assert prompts[1].text == "Honey diffusing into warm milk."

    v2 = BENCHMARKS / "videophy2_test_prompts.csv"
    frame = pd.read_csv(v2)
    prompts = read_prompts(v2, column="upsampled_caption")
    assert len(prompts) == len(frame)
    assert [q.caption for q in prompts] == [c.strip() for c in frame["caption"]]
    assert [q.text for q in prompts] == [c.strip() for c in frame["upsampled_caption"]]
