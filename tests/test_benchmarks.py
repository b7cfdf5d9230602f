"""The shipped benchmark prompt sets and their protocols (`tsa sample --benchmark`): the columns
the model and the evaluator see, videos per prompt, VBench's names, --limit, a replacement
prompt file, and the option errors. No model is loaded (sample folders are written through the
sampler's own record functions)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from score_fixtures import eval_rows, sample_folder
from tsa.evaluate.benchmarks import BENCHMARKS, benchmark_prompts, video_file
from tsa.evaluate.prompts import PromptError
from tsa.evaluate.sample import SampleError, SampleOptions, resolve_prompts

ROOT = Path(__file__).resolve().parents[1]


def test_protocols_of_the_three_benchmarks():
    v1 = benchmark_prompts(BENCHMARKS["videophy"])
    assert len(v1) == 344
    assert v1[1].caption == "Honey diffusing into warm milk." and v1[1].category == "fluid_fluid"
    assert v1[1].text.startswith("In a cozy kitchen, a clear glass jar of golden honey")  # VideoREPA's upsampled
    assert [sum(p.category == c for p in v1) for c in ("solid_solid", "solid_fluid", "fluid_fluid")] == [143, 146, 55]
    with (ROOT / "evaluate" / "prompt_sets" / "videophy_prompts.csv").open() as f:  # the original 344, same order
        assert [r["caption"] for r in csv.DictReader(f)] == [p.caption for p in v1]

    v2 = benchmark_prompts(BENCHMARKS["videophy2"])
    assert len(v2) == 591 and v2[0].caption.startswith("Arrows are shot at a moving target")
    assert v2[0].text.startswith("“In this dynamic archery sequence") and v2[0].category is None

    vb = benchmark_prompts(BENCHMARKS["vbench"])
    assert len(vb) == 946 and len({p.caption for p in vb}) == 944
    assert vb[0].text == vb[0].caption == "In a still frame, a stop sign" and vb[0].category == "temporal_flickering"
    # the two texts VBench lists twice share their videos and serve both occurrences' dimensions
    assert vb[503].caption == vb[746].caption == "The bund Shanghai, oil painting"
    assert set(vb[503].category.split()) == set(vb[746].category.split()) == \
        {"appearance_style", "overall_consistency", "aesthetic_quality", "imaging_quality"}
    assert BENCHMARKS["vbench"].videos_per_prompt == 5
    assert video_file("vbench", vb[503], 42, 4) == "videos/The bund Shanghai, oil painting-4.mp4"
    assert video_file("index", v1[12], 42, 0) == "00012_s42_v0.mp4"
    assert [p.index for p in benchmark_prompts(BENCHMARKS["videophy"], limit=3)] == [0, 1, 2]


def test_vbench_folder_holds_vbench_standard_names_once(tmp_path):
    folder = sample_folder(tmp_path / "vb", "vbench", 2, videos=5)
    names = sorted(p.name for p in (folder / "videos").iterdir())
    assert names == [f"In a still frame, a stop sign-{i}.mp4" for i in range(5)] + \
        [f"a toilet, frozen in time-{i}.mp4" for i in range(5)]
    plan = json.loads((folder / "sample.json").read_text())
    assert plan["benchmark"] == "vbench" and plan["videos_per_prompt"] == 5 and len(plan["expected"]) == 10
    assert [Path(r["videopath"]).parent.name for r in eval_rows(folder)] == ["videos"] * 10
    opts = SampleOptions(checkpoint=Path("x"), out=tmp_path, benchmark="vbench")
    from tsa.evaluate.sample import wanted_videos

    wanted = wanted_videos(resolve_prompts(opts), 42)
    assert len(wanted) == 944 * 5  # the repeated texts are made once
    assert wanted["videos/The bund Shanghai, oil painting-0.mp4"][0].index == 503


def test_a_replacement_prompt_file_keeps_the_benchmark_s_captions(tmp_path):
    shipped = benchmark_prompts(BENCHMARKS["vbench"])
    good = tmp_path / "nova.csv"
    with good.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "upsampled"])
        w.writerows([p.caption, f"A detailed shot: {p.caption}."] for p in shipped)
    own = benchmark_prompts(BENCHMARKS["vbench"], limit=2, prompts_file=good, column="upsampled")
    assert [p.text for p in own] == ["A detailed shot: In a still frame, a stop sign.",
                                     "A detailed shot: a toilet, frozen in time."]
    assert [p.caption for p in own] == [p.caption for p in shipped[:2]] and own[0].category == "temporal_flickering"

    rows = list(csv.reader(good.open()))
    rows[3][0] = "a different prompt"
    bad = tmp_path / "bad.csv"
    csv.writer(bad.open("w", newline="")).writerows(rows)
    with pytest.raises(PromptError, match=r"bad\.csv: column 'prompt' must hold the 946 vbench captions in the "
                                          r"shipped order; row 2 is 'a different prompt'"):
        benchmark_prompts(BENCHMARKS["vbench"], prompts_file=bad, column="upsampled")
    with pytest.raises(PromptError, match="name the column to prompt with"):
        benchmark_prompts(BENCHMARKS["vbench"], prompts_file=good)


def test_option_errors(tmp_path):
    def err(**kw) -> str:
        with pytest.raises((SampleError, PromptError)) as e:
            resolve_prompts(SampleOptions(checkpoint=Path("x"), out=tmp_path, **kw))
        return str(e.value)

    assert "give --benchmark (videophy|videophy2|vbench) or --prompts FILE" in err()
    assert "--benchmark vbenh: expected one of videophy, videophy2, vbench" in err(benchmark="vbenh")
    assert "VBench's standard mode reads videos 0..4" in err(benchmark="vbench", num_videos_per_prompt=6)
    assert "--caption-column: --benchmark videophy fixes the caption" in err(benchmark="videophy",
                                                                              caption_column="x")
    assert "names a column of your own --prompts file" in err(benchmark="videophy", column="caption")
    assert "--limit 0: must be >= 1" in err(benchmark="videophy", limit=0)
    assert "--num-videos-per-prompt 0" in err(benchmark="videophy", num_videos_per_prompt=0)
    # a folder holds one prompt set
    sample_folder(tmp_path / "v1", "videophy", 2)
    from tsa.evaluate.samples_log import SamplesError, write_plan

    with pytest.raises(SamplesError, match="holds videophy videos, not videophy2"):
        write_plan(tmp_path / "v1", {"benchmark": "videophy2", "expected": [], "seeds": [42]})
