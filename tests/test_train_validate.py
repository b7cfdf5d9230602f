"""Validation videos during training (train.validate_every): fixed prompts and seeds, mp4s under
RUN/validation/step-N/ and frame strips in TensorBoard, without touching the training itself."""
import json

import numpy as np
import pytest

from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.train.command import prepare_job
from tsa.train.launch import launch
from tsa.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("val") / "ds", load_config("tiny"), n=8, seed=9)


def _train(shards, out, *overrides, resume=False, tensorboard=False):
    job, _ = prepare_job(shards, out, None if resume else "tiny", list(overrides), resume=resume)
    job.tensorboard = tensorboard
    return launch(job)


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_validation_videos_are_fixed_and_leave_training_alone(shards, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na ball rolls across the table\n\nwater flows from a tap into a white sink\n")
    val = ["train.validate_every=2", "train.validation_steps=2", f"train.validation_prompts={prompts}"]
    plain, with_val, again = tmp_path / "plain", tmp_path / "val", tmp_path / "again"
    _train(shards, plain, "train.max_steps=4")
    _train(shards, with_val, "train.max_steps=2", *val, tensorboard=True)
    _train(shards, with_val, "train.max_steps=4", resume=True, tensorboard=True)
    _train(shards, again, "train.max_steps=2", *val)

    # The training is the same with and without validation (its RNG and modes are restored).
    for key in ("loss", "loss_diffusion", "loss_align", "grad_norm"):
        assert [r[key] for r in read_metrics(with_val)] == pytest.approx([r[key] for r in read_metrics(plain)],
                                                                            rel=1e-6, abs=1e-9), key
    g = load_config("tiny").geometry
    for step in (2, 4):
        folder = with_val / "validation" / f"step-{step}"
        record = json.loads((folder / "prompts.json").read_text())
        assert record["step"] == step
        assert [v["prompt"] for v in record["videos"]] == ["a ball rolls across the table",
                                                            "water flows from a tap into a white sink"]
        assert [v["seed"] for v in record["videos"]] == [42, 43]
        for v in record["videos"]:
            assert _frames(folder / v["file"]).shape == (g.num_frames, g.height, g.width, 3)
    # Same weights, same prompts and seeds: the same videos in another run.
    for name in ("00_s42.mp4", "01_s43.mp4"):
        assert np.array_equal(_frames(with_val / "validation" / "step-2" / name),
                              _frames(again / "validation" / "step-2" / name))
    # Training moved the weights between step 2 and step 4.
    assert not np.array_equal(_frames(with_val / "validation" / "step-2" / "00_s42.mp4"),
                              _frames(with_val / "validation" / "step-4" / "00_s42.mp4"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(with_val / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["validation/00", "validation/01"]
    assert sorted(e.step for e in events.Images("validation/00")) == [2, 4]


def test_bundled_prompts_and_a_missing_file(tmp_path):
    from tsa.configs.schema import ConfigError
    from tsa.train.validate import validation_prompts

    bundled = validation_prompts(load_config("tiny"))
    assert 3 <= len(bundled) <= 8 and all(not p.startswith("#") for p in bundled)
    with pytest.raises(ConfigError, match="train.validation_prompts=.*nope.txt: file not found"):
        validation_prompts(load_config("tiny", [f"train.validation_prompts={tmp_path / 'nope.txt'}"]))
