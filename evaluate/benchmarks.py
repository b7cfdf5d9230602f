"""The benchmark prompt sets shipped with tsa (evaluate/prompt_sets/, package data) and the
paper's protocol for each: which column prompts the model, which caption the evaluator sees,
how many videos per prompt, how the files are named, and which evaluator scores them.

    videophy   344 prompts; the model sees VideoREPA's upsampled caption, VideoCon-Physics
               judges the video against the short caption; SA / PC good at score >= 0.5;
               categories: states_of_matter (solid_solid, solid_fluid, fluid_fluid)
    videophy2  591 test prompts; the model sees the official upsampled caption,
               VideoPhy-2-AutoEval judges against the short caption; good at score >= 4 (1..5)
    vbench     946 prompts (944 distinct texts), 5 videos each, named `videos/{prompt}-{i}.mp4`
               so that VBench's standard mode reads OUT/videos as it is
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

from tsa.evaluate.prompts import Prompt, PromptError, read_prompts

NAMING_INDEX = "index"  # 00012_s42_v0.mp4: prompt index, seed, video index
NAMING_VBENCH = "vbench"  # videos/{prompt}-{i}.mp4: VBench's standard-mode names (no seed in the name)

VIDEOCON = "videocon-physics"
AUTOEVAL = "videophy2-autoeval"
VBENCH = "vbench"


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str  # under evaluate/prompt_sets/
    column: str  # the text the model is prompted with
    caption_column: str  # the text the evaluator compares the video with (VBench: its own prompt)
    category_column: Optional[str]  # VideoPhy: states_of_matter; VBench: dimensions
    videos_per_prompt: int
    naming: str  # NAMING_INDEX | NAMING_VBENCH
    evaluator: str  # VIDEOCON | AUTOEVAL | VBENCH
    threshold: Optional[float]  # a video is good when its score >= threshold (VideoPhy, VideoPhy2)


BENCHMARKS = {
    "videophy": Benchmark("videophy", "videophy_upsampled_prompts.csv", "upsampled_caption", "caption",
                          "states_of_matter", 1, NAMING_INDEX, VIDEOCON, 0.5),
    "videophy2": Benchmark("videophy2", "videophy2_test_prompts.csv", "upsampled_caption", "caption",
                           None, 1, NAMING_INDEX, AUTOEVAL, 4.0),
    "vbench": Benchmark("vbench", "vbench_prompts.csv", "prompt", "prompt", "dimensions", 5, NAMING_VBENCH,
                        VBENCH, None),
}
VBENCH_MAX_VIDEOS = 5  # VBench's standard mode looks for {prompt}-0.mp4 .. {prompt}-4.mp4


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise PromptError(f"--benchmark {name}: expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def prompt_set_path(bench: Benchmark) -> Path:
    """The shipped CSV of `bench` (inside the installed package)."""
    path = Path(str(resources.files("tsa.evaluate").joinpath("prompt_sets", bench.file)))
    if not path.is_file():
        raise PromptError(f"the {bench.name} prompt set is missing from this installation: {path}")
    return path


def benchmark_prompts(bench: Benchmark, limit: Optional[int] = None, prompts_file: Optional[Path] = None,
                      column: Optional[str] = None) -> list[Prompt]:
    """The first `limit` prompts of `bench` with its protocol's columns.

    `prompts_file` (with `column`) replaces the text the model sees, e.g. NOVA's upsampled VBench
    prompts: the file must hold the benchmark's caption column with the shipped captions, all of
    them, in the same order, so that the captions the evaluator sees, the categories and the
    file names stay the benchmark's.
    """
    shipped = read_prompts(prompt_set_path(bench), bench.column, bench.caption_column,
                           category_column=bench.category_column)
    if prompts_file is not None:
        if column is None:
            raise PromptError(f"--benchmark {bench.name} with --prompts {prompts_file}: name the column to "
                              f"prompt with (--column)")
        own = read_prompts(prompts_file, column, bench.caption_column)
        if [p.caption for p in own] != [p.caption for p in shipped]:
            diff = next((i for i, (a, b) in enumerate(zip(own, shipped)) if a.caption != b.caption),
                        min(len(own), len(shipped)))
            got = own[diff].caption if diff < len(own) else "(end of file)"
            want = shipped[diff].caption if diff < len(shipped) else "(end of the set)"
            raise PromptError(f"{prompts_file}: column {bench.caption_column!r} must hold the {len(shipped)} "
                              f"{bench.name} captions in the shipped order; row {diff} is {got!r}, "
                              f"expected {want!r}")
        shipped = [Prompt(p.index, o.text, p.caption, p.category) for p, o in zip(shipped, own)]
    if bench.naming == NAMING_VBENCH:
        shipped = _merge_duplicate_captions(shipped)
    if limit is not None:
        if limit < 1:
            raise PromptError(f"--limit {limit}: must be >= 1")
        shipped = shipped[:limit]
    return shipped


def _merge_duplicate_captions(prompts: list[Prompt]) -> list[Prompt]:
    """VBench names a video by its prompt text alone, so prompts with the same text share their
    videos: each gets the union of the dimensions of all of them."""
    dims: dict[str, list[str]] = {}
    for p in prompts:
        merged = dims.setdefault(p.caption, [])
        merged += [d for d in (p.category or "").split() if d not in merged]
    return [Prompt(p.index, p.text, p.caption, " ".join(dims[p.caption]) or None) for p in prompts]


def video_file(naming: str, prompt: Prompt, seed: int, video_index: int) -> str:
    """The file of video `video_index` of `prompt`, relative to the output folder."""
    if naming == NAMING_VBENCH:
        if "/" in prompt.caption or "\0" in prompt.caption:
            raise PromptError(f"prompt {prompt.index}: {prompt.caption!r} cannot be a file name (VBench names "
                              f"videos by their prompt)")
        return f"videos/{prompt.caption}-{video_index}.mp4"
    return f"{prompt.index:05d}_s{seed}_v{video_index}.mp4"
