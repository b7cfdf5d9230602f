"""Fixtures for the `tsa score` tests: finished sample folders written through the sampler's own
record, plan and commit functions (stand-in bytes instead of videos), and the official
evaluators' output files written the way each evaluator writes them:

- VideoCon-Physics: VideoPhy's utils/prepare_data.py turns eval.csv into sa_testing.csv /
  physics_testing.csv (pandas), entailment_inference.py appends csv.writer rows
  [videopath, templated question, score] without a header;
- VideoPhy-2-AutoEval: inference.py reads eval.csv with pandas, sets df.at[i, "score"] and
  writes df.to_csv(output_csv) (index column included);
- VBench: save_json({dimension: [value, per-video results]}, indent=4).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from tsa.evaluate.sample import SampleOptions, plan_entry, resolve_prompts, video_record, wanted_videos
from tsa.evaluate.samples_log import append_record, commit_video, write_eval_csv, write_plan

# The question templates of VideoPhy's utils/constants.py (the format of the files under test).
PROMPT_VTA = ('The following is a conversation between a curious human and AI assistant. The assistant gives '
              'helpful, detailed, and polite answers to the user\'s questions.\nHuman: <|video|>\nHuman: Does this '
              'video entail the description: "{caption}"?\nAI: ')
PROMPT_PHYSICS = ('The following is a conversation between a curious human and AI assistant. The assistant gives '
                  'helpful, detailed, and polite answers to the user\'s questions.\nHuman: <|video|>\nHuman: Does '
                  'this video follow the physical laws?\nAI: ')
SETTINGS = {"checkpoint": "/runs/x/checkpoint-4000/transformer", "steps": 50, "guidance": 6.0, "dynamic_cfg": True,
            "frames": 49, "height": 480, "width": 720, "fps": 8, "dtype": "bf16", "scheduler": "dpm"}


def sample_folder(out: Path, benchmark: str, limit: int, seed: int = 42, videos: Optional[int] = None,
                  unfinished: int = 0) -> Path:
    """A `tsa sample --benchmark B --limit N` folder, the last `unfinished` videos not made."""
    opts = SampleOptions(checkpoint=Path("unused"), out=out, benchmark=benchmark, limit=limit, seed=seed,
                         num_videos_per_prompt=videos)
    ps = resolve_prompts(opts)
    wanted = wanted_videos(ps, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_plan(out, plan_entry(ps, opts, wanted))
    records = []
    for file, (prompt, v) in list(wanted.items())[:len(wanted) - unfinished]:
        commit_video(out, file, f"stand-in video {file}".encode())
        records.append(video_record(prompt, v, file, ps.benchmark, seed, 1.0, SETTINGS))
        append_record(out, records[-1])
    write_eval_csv(out, records)
    return out


def eval_rows(folder: Path) -> list[dict]:
    with (folder / "eval.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def videocon_file(path: Path, folder: Path, scores: list[float], task: str) -> Path:
    """entailment_inference.py's output for `folder`'s eval.csv rows, in order."""
    import pandas as pd

    df = pd.read_csv(folder / "eval.csv")  # prepare_data.py
    with path.open("a") as f:
        writer = csv.writer(f)
        for (videopath, caption), score in zip(zip(df["videopath"], df["caption"]), scores, strict=True):
            text = PROMPT_VTA.format(caption=caption) if task == "SA" else PROMPT_PHYSICS
            writer.writerow([videopath, text, score])
    return path


def autoeval_file(path: Path, folder: Path, scores: list[int]) -> Path:
    """VIDEOPHY2/inference.py's output for `folder`'s eval.csv."""
    import pandas as pd

    df = pd.read_csv(folder / "eval.csv")
    df["score"] = float("nan")  # inference.py sets df.at[i, "score"] on a new column: the same file
    for i, _ in df.iterrows():
        df.at[i, "score"] = scores[i]
    df.to_csv(path)
    return path


def vbench_file(path: Path, results: dict[str, tuple[float, list[dict]]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        json.dump({dim: [value, videos] for dim, (value, videos) in results.items()}, f, indent=4)
    return path
