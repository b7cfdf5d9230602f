"""The paper's table rows as configs, and what `tsa train` asks of a config."""
import pytest

from tsa.configs import load_config
from tsa.train.command import TEACHER_IN_SHARDS, prepare_job

ROWS = {"baseline": "none", "repa": "repa", "trd": "trd", "tsa": "tsa", "mtsa": "mtsa"}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_ablation_rows_differ_from_the_paper_config_only_in_the_alignment(row):
    paper = load_config("cogvideox2b_mtsa", ["models.teacher.checkpoint=t.pth"]).to_dict()
    cfg = load_config(f"ablations/{row}", ["models.teacher.checkpoint=t.pth"]).to_dict()
    assert cfg["align"]["loss"] == ROWS[row]
    assert {k: v for k, v in cfg.items() if k != "align"} == {k: v for k, v in paper.items() if k != "align"}
    if row != "baseline":
        assert (cfg["align"]["weight"], cfg["align"]["layer"]) == (0.5, 18)
    assert cfg["align"]["tau"] == 0.1 and cfg["align"]["ratio"] == 0.2


def test_training_does_not_ask_for_the_teacher_checkpoint(tmp_path):
    job, cfg = prepare_job(tmp_path / "shards", tmp_path / "run", "ablations/tsa", ["train.max_steps=7"])
    assert cfg.models.teacher.checkpoint == TEACHER_IN_SHARDS and cfg.train.max_steps == 7
    assert load_config(tmp_path / "run" / "config.yaml").align.loss == "tsa"  # the saved config reloads
    job, cfg = prepare_job(tmp_path / "shards", tmp_path / "run2", None, ["models.teacher.checkpoint=/w/t.pth"])
    assert cfg.models.teacher.checkpoint == "/w/t.pth" and job.config["models"]["student"] == "THUDM/CogVideoX-2b"
