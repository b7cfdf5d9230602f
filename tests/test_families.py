"""Student families beyond the paper's CogVideoX-2B (docs/families.md): the CogVideoX-5B and
CogVideoX1.5-5B paper configs against the releases' architecture, their rotary tables and
projector grids, and the whole chain preprocess -> view -> train (full and LoRA) -> sample on
their tiny random-weight counterparts."""
from __future__ import annotations

import json
import types
from pathlib import Path

import av
import pytest
import torch
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import ConfigError, load_config
from tsa.models.tiny import resolve_tiny, tiny_fingerprint
from tsa.models.cogvideox import FAMILY as COGVIDEOX
from tsa.models.student import build_projector, build_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The releases' transformer arguments that differ from diffusers' defaults (= CogVideoX-2B), from
# diffusers' scripts/convert_cogvideox_to_diffusers.py (5B: 48 heads, 42 layers, RoPE; 1.5 adds
# patch_size_t 2, no patch bias, sample 300 x 300 latents, 81 frames).
RELEASES = {
    "cogvideox5b_mtsa": dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
    "cogvideox15_5b_mtsa": dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True,
                                patch_size_t=2, patch_bias=False, sample_height=300, sample_width=300,
                                sample_frames=81),
}
# hub id, frames, height, width, text length, latent, student grid, teacher input, teacher grid, time x, layer
EXPECTED = {
    "cogvideox5b_mtsa": ("THUDM/CogVideoX-5b", 49, 480, 720, 226, (16, 13, 60, 90), (13, 30, 45),
                         (48, 160, 240), (24, 10, 15), 2, 25),
    "cogvideox15_5b_mtsa": ("THUDM/CogVideoX1.5-5B", 81, 768, 1360, 224, (16, 21, 96, 170), (11, 48, 85),
                            (80, 256, 448), (40, 16, 28), 4, 25),
}


def _paper(name):
    return load_config(name, optional=["models.teacher.checkpoint"])


def _release_transformer(name):
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        return CogVideoXTransformer3DModel(**RELEASES[name])


def _pipeline_rotary(transformer, cfg):
    """What CogVideoXPipeline itself builds for this geometry (its latents include the padding)."""
    from diffusers import CogVideoXPipeline

    g = cfg.geometry
    owner = types.SimpleNamespace(transformer=transformer, vae_scale_factor_spatial=g.vae_spatial_compression)
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(
        owner, g.height, g.width, g.latent_shape[1] + g.student_pad_frames, torch.device("cpu"))


# ----------------------------------------------------------------------------- paper configs

@pytest.mark.parametrize("name", sorted(RELEASES))
def test_paper_configs_name_the_release_and_map_its_grid_onto_the_teacher_grid(name):
    cfg = _paper(name)
    hub, frames, height, width, text, latent, student, t_in, t_grid, scale, layer = EXPECTED[name]
    m, g = cfg.models, cfg.geometry
    assert {m.student, m.vae, m.text_encoder, m.tokenizer, m.scheduler} == {hub}
    assert (g.num_frames, g.height, g.width, g.text_length) == (frames, height, width, text)
    assert (g.latent_shape, g.student_grid, g.teacher_input, g.teacher_grid) == (latent, student, t_in, t_grid)
    assert g.projector_time_scale == scale and cfg.align.layer == layer
    # The paper's loss settings are kept.
    paper = _paper("cogvideox2b_mtsa")
    assert (cfg.align.loss, cfg.align.weight, cfg.align.tau, cfg.align.ratio) == \
        (paper.align.loss, paper.align.weight, paper.align.tau, paper.align.ratio)

    transformer = _release_transformer(name)
    COGVIDEOX.check_transformer(transformer, cfg)  # the release architecture takes this config's latents and text
    projector = build_projector(transformer, cfg)
    assert projector.in_dim == 3072 and projector.time_scale == scale
    assert projector.output_grid(g.student_grid) == t_grid


def test_the_paper_2b_projector_is_unchanged():
    g = _paper("cogvideox2b_mtsa").geometry
    assert (g.student_grid, g.teacher_grid, g.projector_time_scale, g.student_pad_frames) == \
        ((13, 30, 45), (24, 10, 15), 2, 0)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_rotary_tables_at_release_geometry_are_the_pipeline_s(name):
    cfg, transformer = _paper(name), _release_transformer(name)
    cos, sin = COGVIDEOX.conditioning(transformer, cfg, torch.device("cpu"))
    f, h, w = cfg.geometry.student_grid
    assert cos.shape == sin.shape == (f * h * w, 64)
    ref_cos, ref_sin = _pipeline_rotary(transformer, cfg)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_a_1_0_transformer_is_refused_for_the_1_5_geometry_and_back():
    with pytest.raises(Exception, match="patch_size_t=None but geometry.student_patch_t=2"):
        COGVIDEOX.check_transformer(_release_transformer("cogvideox5b_mtsa"), _paper("cogvideox15_5b_mtsa"))
    with pytest.raises(Exception, match="patch_size_t=2 but geometry.student_patch_t=1"):
        COGVIDEOX.check_transformer(_release_transformer("cogvideox15_5b_mtsa"), _paper("cogvideox5b_mtsa"))


def test_a_time_grid_without_a_whole_upsampling_factor_is_refused():
    # 13 frames, tubelet 3 in time: 4 teacher slots over 3 student frames after frame 0.
    with pytest.raises(ConfigError, match="not a whole multiple of the 3 student frames"):
        load_config("tiny", ["geometry.num_frames=13", "geometry.tubelet=[3, 16, 16]"])
    with pytest.raises(ConfigError, match="geometry.teacher_size"):
        load_config("tiny", ["geometry.teacher_size=[64]"])


def test_sample_defaults_to_the_run_s_geometry():
    from tsa.evaluate.sample import default_geometry

    assert default_geometry(_paper("cogvideox15_5b_mtsa")) == (81, 768, 1360)
    assert default_geometry(_paper("cogvideox5b_mtsa")) == (49, 480, 720)


def test_older_configs_keep_their_fingerprints():
    """New geometry and tiny-architecture keys at their defaults change neither the tiny model
    folder nor a preprocess output's config fingerprint (older outputs still resume)."""
    from tsa.shards.dataset_info import fingerprinted_config

    tiny = load_config("tiny")
    # Pinned: version 4 of the tiny models (their VAEs lost the encoder resnets). Version 3 gave
    # ebd01d6886ab6539 from before families existed until then: added keys never moved it.
    assert tiny_fingerprint(tiny) == "c06695f243bd9a7c"
    assert tiny_fingerprint(load_config("tiny_cogvideox5b")) != tiny_fingerprint(tiny)
    new = tiny.to_dict()
    old = json.loads(json.dumps(new))
    for key in ("student_patch_t", "teacher_size"):
        del old["geometry"][key]
    assert fingerprinted_config(old, {}) == fingerprinted_config(new, {})
    changed = load_config("tiny", ["geometry.teacher_size=[64, 96]"]).to_dict()
    assert fingerprinted_config(changed, {}) != fingerprinted_config(new, {})


# ----------------------------------------------------------------------------- tiny students

@pytest.mark.parametrize("name", ["tiny_cogvideox5b", "tiny_cogvideox15"])
def test_tiny_families_copy_the_release_features(name):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel

    cfg = resolve_tiny(load_config(name))
    root = cfg.models.student
    t = CogVideoXTransformer3DModel.load_config(root, subfolder="transformer")
    assert t["use_rotary_positional_embeddings"] is True
    assert t["patch_size_t"] == (2 if name == "tiny_cogvideox15" else None)
    assert t["patch_bias"] is (name != "tiny_cogvideox15")
    assert AutoencoderKLCogVideoX.load_config(root, subfolder="vae")["scaling_factor"] == 0.7
    assert CogVideoXDPMScheduler.load_config(root, subfolder="scheduler")["snr_shift_scale"] == 1.0
    transformer = CogVideoXTransformer3DModel.from_pretrained(root, subfolder="transformer")
    ref_cos, ref_sin = _pipeline_rotary(transformer, cfg)
    cos, sin = COGVIDEOX.conditioning(transformer, cfg, torch.device("cpu"))
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_tiny_1_5_student_puts_the_padding_frame_in_front_and_drops_its_prediction():
    cfg = resolve_tiny(load_config("tiny_cogvideox15"))
    cfg.train.gradient_checkpointing = False
    torch.manual_seed(0)
    student = build_student(cfg)
    assert student.pad_frames == 1
    g = cfg.geometry
    c, f, h, w = g.latent_shape
    gen = torch.Generator().manual_seed(3)
    noisy, text = torch.randn(2, c, f, h, w, generator=gen), torch.randn(2, *g.text_shape, generator=gen)
    t = torch.tensor([100, 700])
    rotary = COGVIDEOX.conditioning(student.transformer, cfg, torch.device("cpu"))
    captured = []
    student.projector.register_forward_pre_hook(lambda mod, args: captured.append(args[0].shape))
    pad = torch.randn(2, c, 1, h, w, generator=gen)  # the caller's padding frame (train/step.py: fresh noise)
    with pytest.raises(ValueError, match="pads 1 latent frame"):
        student(noisy, text, t, rotary)
    with torch.no_grad():
        pred, projected = student(noisy, text, t, rotary, pad=pad)
        padded = torch.cat([pad, noisy], dim=2).transpose(1, 2)  # 5 -> 6 latent frames, [B, F, C, H, W]
        ref = student.transformer(hidden_states=padded, encoder_hidden_states=text, timestep=t,
                                  image_rotary_emb=rotary, return_dict=False)[0]
    assert pred.shape == noisy.shape and torch.equal(pred, ref[:, 1:].transpose(1, 2))
    sf, sh, sw = g.student_grid
    assert captured == [torch.Size([2, sf * sh * sw, 32])]
    assert projected.shape == (2, g.teacher_grid[0] * g.teacher_grid[1] * g.teacher_grid[2], cfg.models.teacher.dim)


# ----------------------------------------------------------------------------- the whole chain


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from tsa.testing.sample_clips import make_sample_clips

    return make_sample_clips(tmp_path_factory.mktemp("family_clips"), n=2, seed=4, broken=False)


@pytest.fixture(scope="module", params=["tiny_cogvideox5b", "tiny_cogvideox15"])
def family(request, ray_local, clips, tmp_path_factory):
    """One preprocess output (two clips, one a shard) of the family's tiny config."""
    from tsa.pipeline.run import run_preprocess

    name = request.param
    out = tmp_path_factory.mktemp(name) / "shards"
    result = run_preprocess(clips, out, load_config(name, ["preprocess.samples_per_shard=1"]))
    assert result.counts["ok"] == 2, result.reasons
    return types.SimpleNamespace(name=name, shards=out, root=out.parent)


def _frames(path: Path) -> list:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _cli(*args):
    result = CliRunner().invoke(app, [*map(str, args)])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.mark.slow
def test_preprocess_writes_the_family_geometry_and_view_draws_it(family):
    import pyarrow.parquet as pq

    g = load_config(family.name).geometry
    info = json.loads((family.shards / "dataset.json").read_text())
    assert info["scaling_factor"] == pytest.approx(0.7)
    assert info["geometry"]["latent_shape"] == list(g.latent_shape)
    assert info["geometry"]["teacher_grid"] == list(g.teacher_grid)
    assert info["geometry"]["student_grid"] == list(g.student_grid)
    key = pq.read_table(family.shards / "manifest.parquet").column("key")[0].as_py()
    code, output = _cli("view", "--shards", family.shards, "--key", key, "--out", family.root / "view.png")
    assert code == 0, output
    assert (family.root / "view.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_then_sample(family, lora, tmp_path):
    run = tmp_path / "run"
    # LoRA adapters, or the full transformer with validation videos at step 2.
    one_prompt = tmp_path / "validation.txt"  # one video shows the geometry (not the 8 bundled prompts)
    one_prompt.write_text("a ball rolls across the table\n")
    extra = ["-o", "train.lora.rank=4"] if lora else ["-o", "train.validate_every=2", "-o", "train.validation_steps=2",
                                                       "-o", f"train.validation_prompts={one_prompt}"]
    code, output = _cli("train", "--shards", family.shards, "--out", run, "--config", family.name,
                        "--max-steps", 2, *extra)
    assert code == 0, output
    assert "trained to step 2 (4 samples" in output
    ckpt = run / "checkpoint-2"
    if lora:
        assert (ckpt / "pytorch_lora_weights.safetensors").is_file() and not (ckpt / "transformer").exists()
    else:
        config = json.loads((ckpt / "transformer" / "config.json").read_text())
        assert config["use_rotary_positional_embeddings"] is True and config["num_layers"] == 3

    g = load_config(family.name).geometry
    if not lora:
        videos = sorted((run / "validation" / "step-2").glob("*.mp4"))
        assert videos and len(_frames(videos[0])) == g.num_frames

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a ball rolls across the table\n")
    code, output = _cli("sample", "--checkpoint", ckpt, "--prompts", prompts, "--out", tmp_path / "videos",
                        "--steps", 2)
    assert code == 0, output
    frames = _frames(tmp_path / "videos" / "00000_s42_v0.mp4")
    assert len(frames) == g.num_frames and frames[0].shape == (g.height, g.width, 3)
    record = json.loads((tmp_path / "videos" / "samples.jsonl").read_text().splitlines()[0])
    assert record["settings"]["max_sequence_length"] == g.text_length
