"""Teacher families (`models.teacher.kind`): validation, the DINOv2 teacher against direct
Dinov2Model calls, unchanged fingerprints for VideoMAEv2 configs, and DINOv2 end to end
(`tsa preprocess` -> `tsa train` -> `tsa view`) on the tiny config."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tsa.configs import load_config
from tsa.configs.schema import ConfigError
from tsa.models.tiny import resolve_tiny, tiny_fingerprint

DINO = ["models.teacher.kind=dinov2", "geometry.tubelet=[2,14,14]", "geometry.teacher_size=[56,84]"]


# ----------------------------------------------------------------------------- config

def test_unknown_kinds_are_refused():
    with pytest.raises(ConfigError, match=r"models.teacher.kind='dino'.*videomaev2, dinov2, vjepa2"):
        load_config("tiny", ["models.teacher.kind=dino"])


def test_dinov2_needs_a_square_patch():
    with pytest.raises(ConfigError, match=r"geometry.tubelet=\[2, 14, 16\].*square"):
        load_config("tiny", DINO + ["geometry.tubelet=[2,14,16]", "geometry.teacher_size=[56,96]"])


@pytest.mark.parametrize("kind,tubelet", [("dinov2", [2, 14, 14]), ("vjepa2", [2, 16, 16])])
def test_teacher_configs_keep_the_videomaev2_token_grid(kind, tubelet):
    for name, base in ((f"tiny_{kind}", "tiny"), (f"configs/cogvideox2b_mtsa_{kind}.yaml", None)):
        cfg = load_config(name)
        ref = load_config(base, [] if base else ["models.teacher.checkpoint=x.pth"]).geometry
        assert cfg.models.teacher.kind == kind
        assert cfg.geometry.teacher_grid == ref.teacher_grid and cfg.geometry.student_grid == ref.student_grid
        assert cfg.geometry.tubelet == tubelet
    paper = load_config(f"configs/cogvideox2b_mtsa_{kind}.yaml")
    assert paper.geometry.teacher_input == ((48, 140, 210) if kind == "dinov2" else (48, 160, 240))
    assert paper.models.teacher.dim == (768 if kind == "dinov2" else 1024)


def test_default_kind_leaves_fingerprints_unchanged():
    """Outputs and tiny caches made before `kind` existed keep their fingerprints."""
    import hashlib

    from tsa.shards.dataset_info import fingerprinted_config

    cfg = load_config("tiny")
    assert cfg.models.teacher.kind == "videomaev2"
    d = cfg.to_dict()
    old = copy.deepcopy(d)
    del old["models"]["teacher"]["kind"]
    assert fingerprinted_config(d, {}) == fingerprinted_config(old, {})
    assert not any("kind" in k for k in fingerprinted_config(d, {}))
    # tiny_fingerprint as written before `kind`: vars(teacher) without it
    g, m = cfg.geometry, cfg.models
    geometry = {k: v for k, v in vars(g).items() if k not in ("student_patch_t", "teacher_size")}
    student = {k: v for k, v in vars(m.tiny_student).items()
               if k not in ("use_rotary_positional_embeddings", "patch_bias", "vae_scaling_factor", "snr_shift_scale")}
    teacher = {k: v for k, v in vars(m.teacher).items() if k != "kind"}
    blob = json.dumps({"geometry": geometry, "tiny_student": student, "teacher": teacher | {"checkpoint": "tiny"},
                       "seed": m.tiny_seed, "version": 4}, sort_keys=True, default=list)
    assert tiny_fingerprint(cfg) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    dino = load_config("tiny_dinov2")
    assert tiny_fingerprint(dino) != tiny_fingerprint(cfg)
    assert fingerprinted_config(dino.to_dict(), {})["models.teacher.kind"] == "dinov2"


# ----------------------------------------------------------------------------- the model

@pytest.fixture(scope="module")
def dino_cfg():
    return resolve_tiny(load_config("tiny_dinov2"))


def test_tiny_dinov2_is_a_save_pretrained_folder(dino_cfg):
    from transformers import Dinov2Config

    folder = dino_cfg.models.teacher.checkpoint
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    config = Dinov2Config.from_pretrained(folder)
    assert (config.model_type, config.hidden_size, config.patch_size, config.num_hidden_layers) == ("dinov2", 32, 14, 2)


def test_features_are_tubelet_averaged_per_frame_patch_tokens(dino_cfg):
    from transformers import Dinov2Model

    from tsa.models.teacher import load_teacher, teacher_features

    teacher = load_teacher(dino_cfg.models.teacher, dino_cfg.geometry)
    x = torch.randn(2, 3, 8, 56, 84, generator=torch.Generator().manual_seed(0))
    feats = teacher_features(teacher, x)
    assert feats.shape == (2, 4 * 4 * 6, 32) and feats.dtype == torch.float32
    direct = Dinov2Model.from_pretrained(dino_cfg.models.teacher.checkpoint).eval()
    gt, gh, gw = dino_cfg.geometry.teacher_grid
    with torch.no_grad():
        for b, t, h, w in [(0, 0, 0, 0), (1, 3, 3, 5), (0, 2, 1, 4), (1, 1, 2, 0)]:
            frames = x[b, :, 2 * t:2 * t + 2].transpose(0, 1)  # the 2 frames of slot t: [2, 3, 56, 84]
            tokens = direct(pixel_values=frames).last_hidden_state  # [2, 1 + 24, 32], CLS first
            expected = tokens[:, 1 + h * gw + w].mean(0)
            torch.testing.assert_close(feats[b, t * gh * gw + h * gw + w], expected, rtol=1e-4, atol=1e-5)
    # every frame matters: changing the second frame of slot 0 changes slot 0 only
    y = x.clone()
    y[:, :, 1] += 1.0
    moved = (teacher_features(teacher, y) - feats).abs().amax(-1).reshape(2, gt, gh * gw)
    assert (moved[:, 0] > 1e-4).all() and (moved[:, 1:] == 0).all()


def test_load_errors_name_the_field(dino_cfg, tmp_path):
    from tsa.models.teacher import TeacherCheckpointError, load_teacher

    wrong_dim = copy.deepcopy(dino_cfg)
    wrong_dim.models.teacher.dim = 64
    with pytest.raises(TeacherCheckpointError, match=r"hidden_size 32 != models.teacher.dim=64"):
        load_teacher(wrong_dim.models.teacher, wrong_dim.geometry)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    wrong_type = copy.deepcopy(dino_cfg)
    wrong_type.models.teacher.checkpoint = str(other)
    with pytest.raises(TeacherCheckpointError, match=r"model_type 'vit'.*needs 'dinov2'"):
        load_teacher(wrong_type.models.teacher, wrong_type.geometry)
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((Path(dino_cfg.models.teacher.checkpoint) / "config.json").read_text())
    state = load_file(str(Path(dino_cfg.models.teacher.checkpoint) / "model.safetensors"))
    del state["encoder.layer.1.mlp.fc2.weight"]
    save_file(state, str(partial / "model.safetensors"))
    wrong_type.models.teacher.checkpoint = str(partial)
    with pytest.raises(TeacherCheckpointError, match=r"weights do not fit.*missing 'encoder.layer.1.mlp.fc2.weight'"):
        load_teacher(wrong_type.models.teacher, wrong_type.geometry)
    wrong_type.models.teacher.checkpoint = str(tmp_path / "missing")
    with pytest.raises(TeacherCheckpointError, match=r"models.teacher.checkpoint=.*missing: cannot read a DINOv2"):
        load_teacher(wrong_type.models.teacher, wrong_type.geometry)


@pytest.fixture(scope="module")
def vjepa_cfg():
    return resolve_tiny(load_config("tiny_vjepa2"))


def test_vjepa2_positions_are_the_true_token_grid(vjepa_cfg):
    """VJEPA2's own ids assume a square G x G grid (on 4 x 6, token (0, 2, 4) would get frame 1);
    the virtual ids the teacher passes decode, through VJEPA2's own code, to (t, h, w)."""
    from transformers import VJEPA2Config
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2RopeAttention

    from tsa.models.teacher import load_teacher

    teacher = load_teacher(vjepa_cfg.models.teacher, vjepa_cfg.geometry)
    config = VJEPA2Config.from_pretrained(vjepa_cfg.models.teacher.checkpoint)
    assert config.crop_size // config.patch_size == 8  # larger than the 4 x 6 grid
    attn = VJEPA2RopeAttention(config, config.hidden_size, config.num_attention_heads)
    own = attn.get_position_ids(torch.zeros(1, 96, config.hidden_size))
    i = 2 * 6 + 4  # (t, h, w) = (0, 2, 4)
    assert (own[0][i].item(), own[1][i].item(), own[2][i].item()) != (0, 2, 4)
    frame, row, col = attn.get_position_ids(torch.zeros(1, 96, 1), masks=teacher.position_ids[None])
    t, h, w = torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(6), indexing="ij")
    for got, want in ((frame, t), (row, h), (col, w)):
        assert torch.equal(got[0, 0], want.flatten())


def test_vjepa2_on_a_square_grid_equals_the_model_forward(vjepa_cfg):
    from transformers import VJEPA2Model

    from tsa.models.teacher_vjepa2 import Vjepa2Teacher

    model = VJEPA2Model.from_pretrained(vjepa_cfg.models.teacher.checkpoint).eval()
    geometry = load_config("tiny", ["geometry.teacher_size=[128,128]"]).geometry  # 8 x 8 = the model's G x G
    teacher = Vjepa2Teacher(model, geometry).eval()
    x = torch.randn(2, 3, 8, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(pixel_values_videos=x.transpose(1, 2), skip_predictor=True).last_hidden_state
        torch.testing.assert_close(teacher(x), ref, rtol=1e-5, atol=1e-5)


def test_vjepa2_load_errors(vjepa_cfg):
    from tsa.models.teacher import TeacherCheckpointError, load_teacher

    big = load_config("tiny_vjepa2", ["geometry.height=480", "geometry.width=720"])  # 10 x 15 > 8 x 8
    big.models.teacher.checkpoint = vjepa_cfg.models.teacher.checkpoint
    with pytest.raises(TeacherCheckpointError, match=r"teacher grid 10 x 15 is larger than the model's 8 x 8"):
        load_teacher(big.models.teacher, big.geometry)
    wrong = copy.deepcopy(vjepa_cfg)
    wrong.models.teacher.dim = 64
    with pytest.raises(TeacherCheckpointError, match=r"hidden_size 32 != models.teacher.dim=64"):
        load_teacher(wrong.models.teacher, wrong.geometry)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dinov2", "vjepa2"])
def test_preprocess_train_view(kind, tmp_path, one_torch_thread, ray_local):
    """`tsa preprocess` -> `tsa train` (2 steps) -> `tsa view` with each tiny transformers teacher."""
    from tsa.cli import app
    from tsa.pipeline.decode import decode_clip
    from tsa.shards.reader import open_output, read_sample
    from tsa.testing.sample_clips import make_sample_clips
    from tsa.models.teacher import load_teacher, preprocess_frames, teacher_features
    from tsa.core import motion_map

    clips = make_sample_clips(tmp_path / "clips", n=2, seed=4, broken=False)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["preprocess", "--src", str(clips), "--out", str(out), "--config", f"tiny_{kind}",
                              "-o", "preprocess.samples_per_shard=1", "--no-progress"])
    assert res.exit_code == 0, res.output
    info = open_output(out)
    assert info.dataset["geometry"]["teacher_grid"] == [4, 4, 6] and info.dataset["geometry"]["teacher_dim"] == 32
    patch = 14 if kind == "dinov2" else 16
    assert info.dataset["geometry"]["tubelet"] == [2, patch, patch]
    assert info.dataset["config"]["models"]["teacher"]["kind"] == kind
    assert info.dataset["models"]["teacher"]["sha256"]
    assert len(info.keys) == 2

    cfg = load_config(f"tiny_{kind}")
    key = info.keys[0]
    s = read_sample(out, key)
    assert s["teacher.npy"].shape == (96, 32) and s["motion.npy"].shape == (4, 4, 6)
    clip = decode_clip(str(clips / "videos" / f"{key}.mp4"), cfg.geometry)
    pixels01, normalized = preprocess_frames(torch.from_numpy(clip.frames)[None], cfg.geometry)
    assert pixels01.shape[-2:] == (4 * patch, 6 * patch)
    motion = motion_map(pixels01, (2, patch, patch))[0].numpy()
    np.testing.assert_array_equal(s["motion.npy"], motion.astype(np.float16))
    resolved = resolve_tiny(copy.deepcopy(cfg))
    feats = teacher_features(load_teacher(resolved.models.teacher, resolved.geometry), normalized)[0].numpy()
    np.testing.assert_allclose(s["teacher.npy"].astype(np.float32), feats, rtol=2e-3, atol=2e-3)

    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--shards", str(out), "--out", str(run), "--config", f"tiny_{kind}",
                              "--max-steps", "2", "--checkpoint-every", "2"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all(np.isfinite(r["loss_align"]) for r in lines)
    assert lines[0]["loss_align"] > 0

    page = tmp_path / "gallery.html"
    res = runner.invoke(app, ["view", "--shards", str(out), "--out", str(page)])
    assert res.exit_code == 0, res.output
    assert key in page.read_text()
