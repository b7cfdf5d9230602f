"""`tsa sample` on the tiny models: playable mp4s, resume, the transformer swap, bad checkpoints."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tsa.configs import load_config
from tsa.models.tiny import resolve_tiny
from tsa.evaluate.sample import SampleOptions, default_geometry, sample

CAPTIONS = [
    ("a ball rolls across the table", "a red ball rolls across a wooden table and hits a glass"),
    ("honey pours into milk", "golden honey pours slowly into a glass of warm milk"),
    ("a diver jumps into the pool", "a diver jumps from a high board into the pool with a splash"),
]


def _write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption", "upsampled_caption"])
        w.writerows(rows)
    return path


def _decode(path: Path) -> tuple[np.ndarray, float]:
    """[F, H, W, 3] uint8 frames and the stream's frame rate."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return frames, rate


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _cli(*args: str):
    from tsa.cli import app

    return CliRunner().invoke(app, ["sample", *map(str, args)])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """RUN/config.yaml (models left as `tiny`) and RUN/checkpoint-3/transformer, perturbed from the base."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    cfg = load_config("tiny")
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    base = Path(resolve_tiny(load_config("tiny")).models.student)
    transformer = CogVideoXTransformer3DModel.from_pretrained(base, subfolder="transformer")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    transformer.save_pretrained(run / "checkpoint-3" / "transformer")
    prompts = _write_csv(run / "prompts.csv", CAPTIONS)
    return SimpleNamespace(run=run, ckpt=run / "checkpoint-3", base=base, prompts=prompts)


@pytest.fixture(scope="module")
def first_out(tiny_run, tmp_path_factory):
    """`tsa sample --limit 2` with the base taken from RUN/config.yaml (read-only for the tests)."""
    out = tmp_path_factory.mktemp("samples")
    res = _cli("--checkpoint", tiny_run.ckpt, "--prompts", tiny_run.prompts, "--out", out,
               "--column", "upsampled_caption", "--steps", 2, "--limit", 2)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_writes_playable_mp4s_at_the_run_geometry(tiny_run, first_out):
    g = load_config("tiny").geometry
    names = sorted(p.name for p in first_out.iterdir())
    assert names == ["00000_s42_v0.mp4", "00001_s42_v0.mp4", "eval.csv", "sample.json", "samples.jsonl"]
    for name in names[:2]:
        frames, rate = _decode(first_out / name)
        assert frames.shape == (g.num_frames, g.height, g.width, 3)
        assert rate == 8.0
        assert frames.std() > 1.0  # decoded pictures, not a blank stream

    recs = _records(first_out)
    assert [(r["index"], r["video_index"], r["seed"], r["file"]) for r in recs] == [
        (0, 0, 42, "00000_s42_v0.mp4"), (1, 0, 42, "00001_s42_v0.mp4")]
    assert [r["prompt"] for r in recs] == [CAPTIONS[0][1], CAPTIONS[1][1]]  # prompted with --column
    assert [r["caption"] for r in recs] == [CAPTIONS[0][0], CAPTIONS[1][0]]  # judged against `caption`
    s = recs[0]["settings"]
    assert (s["steps"], s["guidance"], s["dynamic_cfg"], s["fps"], s["dtype"]) == (2, 6.0, True, 8, "fp32")
    assert (s["frames"], s["height"], s["width"]) == (g.num_frames, g.height, g.width)
    assert s["checkpoint"] == str((tiny_run.ckpt / "transformer").resolve())

    with (first_out / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["videopath"]), r["caption"]) for r in rows] == [
        ((first_out / "00000_s42_v0.mp4").resolve(), CAPTIONS[0][0]),
        ((first_out / "00001_s42_v0.mp4").resolve(), CAPTIONS[1][0])]


@pytest.mark.slow
def test_resume_skips_done_prompts(tiny_run, first_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    before = {n: (out / n).stat() for n in ("00000_s42_v0.mp4", "00001_s42_v0.mp4")}
    log_before = (out / "samples.jsonl").read_bytes()
    common = ["--checkpoint", tiny_run.ckpt, "--prompts", tiny_run.prompts, "--out", out,
              "--column", "upsampled_caption", "--steps", 2]

    res = _cli(*common)
    assert res.exit_code == 0, res.output
    assert "1 video(s) written, 2 already there" in res.output
    for name, st in before.items():  # not rewritten
        assert ((out / name).stat().st_mtime_ns, (out / name).stat().st_ino) == (st.st_mtime_ns, st.st_ino)
    assert (out / "samples.jsonl").read_bytes().startswith(log_before)
    assert [r["index"] for r in _records(out)] == [0, 1, 2]
    assert _decode(out / "00002_s42_v0.mp4")[0].shape[0] == 9

    res = _cli(*common)
    assert res.exit_code == 0, res.output
    assert "0 video(s) written, 3 already there" in res.output
    assert len(_records(out)) == 3

    # A crash mid-append leaves a torn line; a lost mp4 is made again, under the same name.
    with (out / "samples.jsonl").open("a") as f:
        f.write('{"index": 9, "pro')
    (out / "00002_s42_v0.mp4").unlink()
    (out / ".00002_s42_v0.mp4.tmp").write_bytes(b"half a video")  # killed while writing it
    res = _cli(*common)
    assert res.exit_code == 0, res.output
    assert "1 video(s) written, 2 already there" in res.output
    assert [r["index"] for r in _records(out)] == [0, 1, 2, 2]  # the torn tail is gone
    assert (out / "00002_s42_v0.mp4").is_file()
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_resume_refuses_other_settings_or_changed_prompts(tiny_run, first_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    res = _cli("--checkpoint", tiny_run.ckpt, "--prompts", tiny_run.prompts, "--out", out,
               "--column", "upsampled_caption", "--steps", 3)
    assert res.exit_code == 2
    assert "other settings" in res.output and "steps: 2 before, 3 now" in res.output

    changed = _write_csv(tmp_path / "changed.csv", [CAPTIONS[0], ("x", "a different prompt"), CAPTIONS[2]])
    res = _cli("--checkpoint", tiny_run.ckpt, "--prompts", changed, "--out", out,
               "--column", "upsampled_caption", "--steps", 2)
    assert res.exit_code == 2
    assert "prompt 1 was" in res.output and "prompt file changed" in res.output


@pytest.mark.slow
def test_fine_tuned_transformer_is_the_one_sampled(tiny_run, first_out, tmp_path):
    def one_video(checkpoint: Path, out: Path) -> np.ndarray:
        sample(SampleOptions(checkpoint=checkpoint, prompts=tiny_run.prompts, out=out, base=str(tiny_run.base),
                             column="upsampled_caption", steps=2, limit=1, frames=9, height=192, width=288),
               log=lambda _: None)
        return _decode(out / "00000_s42_v0.mp4")[0]

    tuned = _decode(first_out / "00000_s42_v0.mp4")[0]
    # Same checkpoint, same seed, base given explicitly instead of read from RUN/config.yaml: same video.
    assert np.array_equal(one_video(tiny_run.ckpt, tmp_path / "explicit"), tuned)
    # The base's own transformer (its folder passed as the checkpoint): a different video.
    untuned = one_video(tiny_run.base / "transformer", tmp_path / "untuned")
    assert np.abs(untuned.astype(np.int16) - tuned.astype(np.int16)).mean() > 1.0


def _copy_transformer_config(tiny_run, dst: Path, **changes) -> Path:
    cfg = json.loads((tiny_run.ckpt / "transformer" / "config.json").read_text())
    cfg.update(changes)
    (dst / "transformer").mkdir(parents=True)
    (dst / "transformer" / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.slow
def test_bad_checkpoints_stop_with_clear_errors(tiny_run, tmp_path):
    def err(ckpt, *extra) -> str:
        res = _cli("--checkpoint", ckpt, "--prompts", tiny_run.prompts, "--out", tmp_path / "out", *extra)
        assert res.exit_code == 2, res.output
        return res.output

    missing = tmp_path / "nope" / "checkpoint-1"
    assert f"checkpoint not found: {missing}" in err(missing)

    empty = tmp_path / "run" / "checkpoint-1"
    empty.mkdir(parents=True)
    assert "has no transformer/ folder" in err(empty)

    (empty / "transformer").mkdir()
    assert f"config missing: {(empty / 'transformer' / 'config.json').resolve()}" in err(empty)

    other = _copy_transformer_config(tiny_run, tmp_path / "other" / "checkpoint-2", num_layers=3,
                                     attention_head_dim=8)
    msg = err(other, "--base", tiny_run.base)
    assert "not a fine-tune of the base transformer" in msg
    assert "num_layers: checkpoint 3 vs base 2" in msg and "attention_head_dim: checkpoint 8 vs base 16" in msg
    assert "in_channels" not in msg

    unet = _copy_transformer_config(tiny_run, tmp_path / "unet" / "checkpoint-2", _class_name="UNet2DModel")
    assert "_class_name is 'UNet2DModel'" in err(unet, "--base", tiny_run.base)

    # No RUN/config.yaml next to the checkpoint and no --base: nowhere to take VAE and T5 from.
    lone = tmp_path / "lone" / "checkpoint-3"
    shutil.copytree(tiny_run.ckpt / "transformer", lone / "transformer")
    assert "pass --base" in err(lone)
    assert "--base: folder not found" in err(lone, "--base", tmp_path / "no-such-base")


@pytest.mark.slow
def test_bad_options_stop_before_loading_models(tiny_run, tmp_path):
    def err(*extra) -> str:
        res = _cli("--checkpoint", tiny_run.ckpt, "--prompts", tiny_run.prompts, "--out", tmp_path / "o", *extra)
        assert res.exit_code == 2, res.output
        return res.output

    assert "--frames 10: frames - 1 must be a multiple" in err("--frames", 10)
    assert "--height 100: must be a positive multiple of 16" in err("--height", 100)
    assert "--dtype fp8" in err("--dtype", "fp8")
    assert "--cpu-offload" in err("--cpu-offload", "--device", "cpu")
    assert "no column 'prompt_en'" in err("--column", "prompt_en")
    assert not (tmp_path / "o").exists()


def test_default_geometry_is_the_paper_s_unless_the_run_is_tiny():
    assert default_geometry(None) == (49, 480, 720)
    assert default_geometry(load_config("cogvideox2b_mtsa", ["models.teacher.checkpoint=x.pth"])) == (49, 480, 720)
    tiny = load_config("tiny")
    assert default_geometry(tiny) == (tiny.geometry.num_frames, tiny.geometry.height, tiny.geometry.width)


@pytest.mark.slow
def test_architecture_check_takes_a_pipeline_or_a_transformer_folder_as_base(tiny_run, tmp_path):
    from tsa.evaluate.sample import SampleError, check_architecture
    from tsa.models.cogvideox import FAMILY as COGVIDEOX

    tdir = tiny_run.ckpt / "transformer"
    for base in (tiny_run.base, tiny_run.base / "transformer"):  # models.student may name either
        assert check_architecture(tdir, str(base), COGVIDEOX)["num_layers"] == 2
    other = _copy_transformer_config(tiny_run, tmp_path / "o", text_embed_dim=64)
    with pytest.raises(SampleError, match="text_embed_dim: checkpoint 64 vs base 32"):
        check_architecture(other / "transformer", str(tiny_run.base / "transformer"), COGVIDEOX)
