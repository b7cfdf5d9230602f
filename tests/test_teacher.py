"""VideoMAEv2 teacher: official key layout, loading (.pth / .safetensors), features equal to a
plain reference forward, clear errors on bad checkpoints, the position table."""
from __future__ import annotations

import argparse
import copy
import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tsa.configs import load_config
from tsa.configs.schema import ConfigError
from tsa.models.teacher import (
    TeacherCheckpointError,
    VideoMAEv2,
    load_teacher,
    resize_pos_table,
    save_random_checkpoint,
    sinusoid_table,
    teacher_features,
    weights_sha256,
)


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")


@pytest.fixture(scope="module")
def ckpt(cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_random_checkpoint(cfg.models.teacher, cfg.geometry, path, seed=3)
    return path


def _teacher(cfg, path):
    t = copy.deepcopy(cfg.models.teacher)
    t.checkpoint = str(path)
    return t


def _input(cfg, seed=0, batch=2):
    t, h, w = cfg.geometry.teacher_input
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, t, h, w, generator=g)


# ----------------------------------------------------------------------------- reference

def reference_table(n_position: int, dim: int) -> np.ndarray:
    """The original formula, element by element."""
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)]
                      for pos in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


def reference_resize(table: torch.Tensor, src, dst) -> torch.Tensor:
    """Bicubic over space for each source frame, then linear over time, one token at a time."""
    (ts, hs, ws), (td, hd, wd) = src, dst
    c = table.shape[1]
    grid = table.reshape(ts, hs, ws, c)
    spatial = torch.stack([
        F.interpolate(grid[t].permute(2, 0, 1)[None], size=(hd, wd), mode="bicubic", align_corners=False)[0]
        for t in range(ts)])  # [Ts, C, Hd, Wd]
    per_token = spatial.permute(2, 3, 1, 0).reshape(hd * wd * c, 1, ts)
    timed = F.interpolate(per_token, size=td, mode="linear", align_corners=False)  # [Hd*Wd*C, 1, Td]
    return timed.reshape(hd, wd, c, td).permute(3, 0, 1, 2).reshape(td * hd * wd, c)


def reference_forward(state: dict, cfg, x: torch.Tensor) -> torch.Tensor:
    """Explicit-matmul VideoMAEv2 encoder on a state dict with official keys."""
    tc, g = cfg.models.teacher, cfg.geometry
    dim, heads = tc.dim, tc.heads
    hd = dim // heads
    tok = F.conv3d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=tuple(g.tubelet))
    tok = tok.flatten(2).transpose(1, 2)  # [B, N, C]
    table = torch.from_numpy(reference_table(math.prod(tc.pos_grid), dim))
    tok = tok + reference_resize(table, tuple(tc.pos_grid), g.teacher_grid).float()
    b, n, _ = tok.shape
    for i in range(tc.depth):
        p = lambda name: state[f"blocks.{i}.{name}"]  # noqa: E731
        y = F.layer_norm(tok, (dim,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        bias = torch.cat([p("attn.q_bias"), torch.zeros(dim), p("attn.v_bias")])
        qkv = y @ p("attn.qkv.weight").T + bias
        q, k, v = (qkv[..., j * dim:(j + 1) * dim].reshape(b, n, heads, hd).transpose(1, 2) for j in range(3))
        attn = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        tok = tok + out @ p("attn.proj.weight").T + p("attn.proj.bias")
        y = F.layer_norm(tok, (dim,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        hidden = F.gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
        tok = tok + hidden @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    return tok


def official_keys(depth: int) -> set[str]:
    per_block = ["norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
                 "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                 "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias",
            "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    return keys | {f"blocks.{i}.{k}" for i in range(depth) for k in per_block}


# ----------------------------------------------------------------------------- checkpoint layout

def test_random_checkpoint_has_official_layout(cfg, ckpt, tmp_path):
    tc = cfg.models.teacher
    state = load_file(str(ckpt))
    assert set(state) == official_keys(tc.depth)
    hidden = int(tc.dim * tc.mlp_ratio)
    assert state["patch_embed.proj.weight"].shape == (tc.dim, 3, *cfg.geometry.tubelet)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * tc.dim, tc.dim)
    assert state["blocks.1.mlp.fc1.weight"].shape == (hidden, tc.dim)
    assert state["head.weight"].shape == (710, tc.dim)
    assert all(v.dtype == torch.float32 for v in state.values())
    # Non-degenerate: q/v biases random, Linear weights std about 0.02.
    assert state["blocks.0.attn.q_bias"].abs().sum() > 0 and state["blocks.0.attn.v_bias"].abs().sum() > 0
    assert 0.01 < state["blocks.0.attn.qkv.weight"].std() < 0.03

    pth = save_random_checkpoint(tc, cfg.geometry, tmp_path / "teacher.pth", seed=3)
    wrapped = torch.load(pth, map_location="cpu", weights_only=True)
    assert set(wrapped) == {"module"}
    assert set(wrapped["module"]) == set(state)
    for k in state:
        torch.testing.assert_close(wrapped["module"][k], state[k], rtol=0, atol=0)


def test_random_checkpoint_is_deterministic_and_keeps_global_rng(cfg, ckpt, tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = save_random_checkpoint(cfg.models.teacher, cfg.geometry, tmp_path / "again.safetensors", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert again.read_bytes() == ckpt.read_bytes()
    other = save_random_checkpoint(cfg.models.teacher, cfg.geometry, tmp_path / "other.safetensors", seed=4)
    assert other.read_bytes() != ckpt.read_bytes()


def test_weights_sha256_hashes_file_bytes(ckpt):
    assert weights_sha256(ckpt) == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert weights_sha256(ckpt) == weights_sha256(ckpt)


def test_paper_size_keys_match_vit_b(tmp_path):
    c = load_config(None, ["models.teacher.checkpoint=unused.pth"])
    model = VideoMAEv2(c.models.teacher, c.geometry)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 2 + 12 * 13  # buffers are not persistent: no pos_embed
    assert shapes["patch_embed.proj.weight"] == (768, 3, 2, 16, 16)
    assert shapes["blocks.11.attn.qkv.weight"] == (2304, 768)
    assert shapes["blocks.11.attn.q_bias"] == (768,)
    assert shapes["blocks.11.mlp.fc1.weight"] == (3072, 768)
    assert shapes["blocks.11.mlp.fc2.weight"] == (768, 3072)
    assert sum(math.prod(s) for s in shapes.values()) == 86_225_664  # ViT-B/16, tubelet 2, no head
    assert tuple(model.pos_embed.shape) == (1, 24 * 10 * 15, 768)
    assert "pos_embed" not in model.state_dict()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 24 and all(m.eps == 1e-6 for m in norms)


# ----------------------------------------------------------------------------- loading and features

def _write_variant(state: dict, tmp_path, variant: str):
    if variant == "safetensors":
        path = tmp_path / "t.safetensors"
        save_file(state, str(path))
    elif variant == "pth-module":
        path = tmp_path / "t.pth"
        torch.save({"module": state}, path)
    elif variant == "pth-model-encoder-prefix":
        path = tmp_path / "t.pth"
        torch.save({"model": {f"encoder.{k}": v for k, v in state.items()}, "epoch": torch.tensor(3)}, path)
    elif variant == "pth-plain-module-prefix":
        path = tmp_path / "t.pth"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif variant == "pth-training-checkpoint":  # the official script's layout, with its argparse args
        path = tmp_path / "t.pth"
        torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(lr=1e-3, model="vit_base")}, path)
    else:
        raise AssertionError(variant)
    return path


@pytest.mark.parametrize("variant", ["safetensors", "pth-module", "pth-model-encoder-prefix",
                                     "pth-plain-module-prefix", "pth-training-checkpoint"])
def test_loaded_features_match_reference_forward(cfg, ckpt, tmp_path, variant):
    state = load_file(str(ckpt))
    path = _write_variant(state, tmp_path, variant)
    model = load_teacher(_teacher(cfg, path), cfg.geometry)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = _input(cfg)
    feats = teacher_features(model, x)
    assert feats.shape == (2, math.prod(cfg.geometry.teacher_grid), cfg.models.teacher.dim)
    assert feats.dtype == torch.float32 and not feats.requires_grad
    expected = reference_forward(state, cfg, x)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-4)
    # The random weights are not degenerate: tokens differ across positions and clips.
    assert feats.std(dim=1).mean() > 0.1
    assert (feats[0] - feats[1]).abs().mean() > 1e-3


def test_ignored_keys_do_not_change_features(cfg, ckpt, tmp_path):
    state = load_file(str(ckpt))
    extra = dict(state)
    extra["pos_embed"] = torch.randn(1, 1568, cfg.models.teacher.dim)  # a stored table is not used
    extra["norm.weight"] = torch.randn(cfg.models.teacher.dim)
    path = tmp_path / "extra.safetensors"
    save_file(extra, str(path))
    x = _input(cfg, seed=1)
    a = teacher_features(load_teacher(_teacher(cfg, ckpt), cfg.geometry), x)
    b = teacher_features(load_teacher(_teacher(cfg, path), cfg.geometry), x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_load_returns_float32_features(cfg, ckpt):
    model = load_teacher(_teacher(cfg, ckpt), cfg.geometry, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    x = _input(cfg, seed=2, batch=1)
    feats = teacher_features(model, x)
    ref = teacher_features(load_teacher(_teacher(cfg, ckpt), cfg.geometry), x)
    assert feats.dtype == torch.float32
    assert (feats - ref).abs().max() < 0.1 * ref.abs().max()


def test_wrong_input_shape_is_a_clear_error(cfg, ckpt):
    model = load_teacher(_teacher(cfg, ckpt), cfg.geometry)
    t, h, w = cfg.geometry.teacher_input
    with pytest.raises(ValueError, match="geometry.teacher_input"):
        teacher_features(model, torch.zeros(1, 3, t, h + 16, w))


def test_tiny_config_loads_through_resolve_tiny(tiny_cfg):
    from tsa.models.tiny import resolve_tiny

    cfg = resolve_tiny(tiny_cfg)
    assert cfg.models.teacher.checkpoint.endswith("teacher.safetensors")
    model = load_teacher(cfg.models.teacher, cfg.geometry)
    feats = teacher_features(model, _input(cfg, batch=1))
    assert feats.shape == (1, math.prod(cfg.geometry.teacher_grid), cfg.models.teacher.dim)
    assert torch.isfinite(feats).all()


# ----------------------------------------------------------------------------- errors

class NotAllowedInWeightsOnly:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def test_missing_key_names_file_and_key(cfg, ckpt, tmp_path):
    state = load_file(str(ckpt))
    del state["blocks.1.mlp.fc2.bias"]
    path = _write_variant(state, tmp_path, "pth-module")
    with pytest.raises(TeacherCheckpointError, match=r"t\.pth.*missing key 'blocks\.1\.mlp\.fc2\.bias'"):
        load_teacher(_teacher(cfg, path), cfg.geometry)


def test_misshapen_key_names_key_and_both_shapes(cfg, ckpt, tmp_path):
    state = load_file(str(ckpt))
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3 * 32, 16)
    path = _write_variant(state, tmp_path, "safetensors")
    with pytest.raises(TeacherCheckpointError) as err:
        load_teacher(_teacher(cfg, path), cfg.geometry)
    msg = str(err.value)
    assert str(path) in msg and "'blocks.0.attn.qkv.weight'" in msg
    assert "[96, 16]" in msg and "[96, 32]" in msg


def test_checkpoint_of_another_size_is_rejected(cfg, ckpt):
    bigger = _teacher(cfg, ckpt)
    bigger.dim, bigger.heads = 64, 4
    with pytest.raises(TeacherCheckpointError, match="patch_embed.proj.weight.*shape"):
        load_teacher(bigger, cfg.geometry)
    deeper = _teacher(cfg, ckpt)
    deeper.depth = 3
    with pytest.raises(TeacherCheckpointError, match="missing key 'blocks.2."):
        load_teacher(deeper, cfg.geometry)


def test_unexpected_key_is_an_error(cfg, ckpt, tmp_path):
    state = load_file(str(ckpt))
    state["blocks.0.gamma_1"] = torch.ones(cfg.models.teacher.dim)  # layer scale: not VideoMAEv2-B
    path = _write_variant(state, tmp_path, "safetensors")
    with pytest.raises(TeacherCheckpointError, match="unexpected key 'blocks.0.gamma_1'"):
        load_teacher(_teacher(cfg, path), cfg.geometry)


def test_missing_unreadable_and_unresolved_checkpoints(cfg, tmp_path):
    with pytest.raises(TeacherCheckpointError, match="not found.*nope.pth"):
        load_teacher(_teacher(cfg, tmp_path / "nope.pth"), cfg.geometry)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherCheckpointError, match="bad.pth: cannot read"):
        load_teacher(_teacher(cfg, bad), cfg.geometry)
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"x")
    with pytest.raises(TeacherCheckpointError, match="weights.bin: unsupported"):
        load_teacher(_teacher(cfg, odd), cfg.geometry)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"module": {}, "extra": NotAllowedInWeightsOnly()}, unsafe)
    with pytest.raises(TeacherCheckpointError, match=r"unsafe.pth: cannot read .*weights_only=True.*NotAllowed"):
        load_teacher(_teacher(cfg, unsafe), cfg.geometry)
    with pytest.raises(TeacherCheckpointError, match="resolve_tiny"):
        load_teacher(_teacher(cfg, "tiny"), cfg.geometry)


def test_bad_teacher_dims_are_config_errors(cfg):
    t = copy.deepcopy(cfg.models.teacher)
    t.heads = 3
    with pytest.raises(ConfigError, match="models.teacher.dim"):
        VideoMAEv2(t, cfg.geometry)


# ----------------------------------------------------------------------------- position table

def test_sinusoid_table_matches_original_formula():
    ours = sinusoid_table(8 * 14 * 14, 768)
    np.testing.assert_allclose(ours.numpy(), reference_table(8 * 14 * 14, 768), rtol=0, atol=1e-9)


def test_resize_to_own_grid_is_identity():
    table = sinusoid_table(8 * 14 * 14, 768)
    torch.testing.assert_close(resize_pos_table(table, (8, 14, 14), (8, 14, 14)), table, rtol=0, atol=1e-12)


def test_resize_paper_grid_matches_reference():
    table = sinusoid_table(8 * 14 * 14, 64)
    out = resize_pos_table(table, (8, 14, 14), (24, 10, 15))
    assert out.shape == (24 * 10 * 15, 64)
    torch.testing.assert_close(out, reference_resize(table, (8, 14, 14), (24, 10, 15)), rtol=0, atol=1e-12)


def test_resize_is_linear_in_time_after_space():
    a, b = torch.tensor([[1.0, -2.0]]), torch.tensor([[5.0, 2.0]])
    out = resize_pos_table(torch.cat([a, b]).double(), (2, 1, 1), (4, 1, 1)).float()
    # align_corners=False: source times -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    expected = torch.cat([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])
    torch.testing.assert_close(out, expected)
