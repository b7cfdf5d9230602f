import pytest

from tsa.configs import ConfigError, load_config


def test_paper_defaults_need_teacher_checkpoint():
    with pytest.raises(ConfigError, match="models.teacher.checkpoint"):
        load_config("cogvideox2b_mtsa")


def test_paper_geometry():
    cfg = load_config("cogvideox2b_mtsa", ["models.teacher.checkpoint=/w/vit_b.pth"])
    g = cfg.geometry
    assert g.latent_shape == (16, 13, 60, 90)
    assert g.student_grid == (13, 30, 45)
    assert g.teacher_input == (48, 160, 240)
    assert g.teacher_grid == (24, 10, 15)
    assert g.text_shape == (226, 4096)
    assert (cfg.align.weight, cfg.align.tau, cfg.align.ratio, cfg.align.layer) == (0.5, 0.1, 0.2, 18)
    assert (cfg.train.lr, cfg.train.global_batch, cfg.train.max_steps) == (2e-6, 32, 4000)


def test_overrides_are_typed():
    cfg = load_config("tiny", ["align.tau=0.05", "train.max_steps=3", "align.loss=tsa"])
    assert cfg.align.tau == 0.05 and cfg.train.max_steps == 3 and cfg.align.loss == "tsa"
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config("tiny", ["train.max_steps=abc"])


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean align.tau"):
        load_config("tiny", ["align.tua=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key train.lrr"):
        load_config(bad)


def test_invalid_values_name_the_key():
    with pytest.raises(ConfigError, match="align.loss"):
        load_config("tiny", ["align.loss=foo"])
    with pytest.raises(ConfigError, match="geometry"):
        load_config("tiny", ["geometry.num_frames=10"])


def test_missing_file_lists_bundled():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("no_such_config")


def test_optional_required_key_may_stay_unset():
    cfg = load_config("cogvideox2b_mtsa", optional=["models.teacher.checkpoint"])
    assert cfg.models.teacher.checkpoint == "???"
    with pytest.raises(ConfigError, match="models.teacher.checkpoint"):
        load_config("cogvideox2b_mtsa", optional=["models.vae"])


def test_string_overrides_keep_what_was_typed():
    """`-o train.mixed_precision=no` is the documented way to turn bf16 off; YAML alone
    would read `no` as false and `2024` as an int."""
    cfg = load_config("tiny", ["train.mixed_precision=no", "models.student=2024", "models.vae=on",
                               "models.text_encoder='quoted'"], optional=["models.teacher.checkpoint"])
    assert cfg.train.mixed_precision == "no"
    assert (cfg.models.student, cfg.models.vae, cfg.models.text_encoder) == ("2024", "on", "quoted")
    with pytest.raises(ConfigError, match=r"override 'align.tau=\[1': the value is not valid YAML"):
        load_config("tiny", ["align.tau=[1"])


def test_unquoted_yaml_boolean_for_a_string_key_says_to_quote_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  mixed_precision: no\n")
    with pytest.raises(ConfigError, match=r"train.mixed_precision: expected a string, got False .*quote"):
        load_config(bad)


@pytest.mark.parametrize("override, key", [
    ("geometry.tubelet=[2,16]", "geometry.tubelet"),
    ("align.query_chunk=0", "align.query_chunk"),
    ("align.projector_hidden=0", "align.projector_hidden"),
    ("align.weight=-0.5", "align.weight"),
    ("align.weight=.nan", "align.weight"),
    ("train.betas=[0.9]", "train.betas"),
    ("train.warmup_steps=-1", "train.warmup_steps"),
    ("train.keep_last=0", "train.keep_last"),
])
def test_values_that_would_fail_deep_in_training_are_config_errors(override, key):
    """Each used to pass the loader and fail at step 1 with a bare ValueError/IndexError
    (or, for projector_hidden=0, train a projector that ignores its input)."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny", [override])


def test_folder_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
