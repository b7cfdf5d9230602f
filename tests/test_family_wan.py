"""Wan2.1 family (models/wan.py): the release config and its grids, the flow objective against a
float64 reference and the release sampler, WanPipeline's text and latent conventions, the student
forward, and preprocess -> view -> train (full and LoRA) -> sample with tiny_wan21."""
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
from tsa.models.family import ModelError, student_family
from tsa.models.objectives import FlowMatchObjective
from tsa.models.student import build_projector, build_student
from tsa.models.tiny import resolve_tiny
from tsa.models.wan import FAMILY as WAN, WAN21_SCHEDULER

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HUB = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
# The 1.3B transformer's arguments (diffusers' scripts/convert_wan_to_diffusers.py).
RELEASE = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6)


@pytest.fixture(scope="module")
def tiny():
    return resolve_tiny(load_config("tiny_wan21"))


def _paper():
    return load_config("wan21_1.3b_mtsa", optional=["models.teacher.checkpoint"])


# ----------------------------------------------------------------------------- configs

def test_paper_config_names_the_release_and_maps_its_grid_onto_the_teacher_grid():
    from diffusers import WanTransformer3DModel

    cfg = _paper()
    m, g = cfg.models, cfg.geometry
    assert m.family == "wan" and {m.student, m.vae, m.text_encoder, m.tokenizer, m.scheduler} == {HUB}
    assert (g.num_frames, g.height, g.width, g.text_length, g.text_dim) == (81, 480, 832, 512, 4096)
    assert g.latent_shape == (16, 21, 60, 104) and g.student_grid == (21, 30, 52)
    assert g.teacher_input == (80, 160, 272) and g.teacher_grid == (40, 10, 17) and g.projector_time_scale == 2
    paper = load_config("cogvideox2b_mtsa", optional=["models.teacher.checkpoint"])
    assert vars(cfg.align) == vars(paper.align) and cfg.models.teacher == paper.models.teacher
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**RELEASE)
    WAN.check_transformer(transformer, cfg)  # the release takes this config's latents and text
    projector = build_projector(transformer, cfg)
    assert projector.in_dim == 1536 and projector.output_grid(g.student_grid) == g.teacher_grid


def test_unknown_family_is_refused():
    with pytest.raises(ConfigError, match="models.family='sora'"):
        load_config("tiny", ["models.family=sora"])


def test_check_transformer_names_the_mismatch(tiny):
    transformer = WAN.load_transformer(tiny.models.student)
    for override, message in (("align.layer=5", "align.layer=5 but the student has 3 blocks"),
                              ("geometry.text_dim=64", "text_dim=32 but geometry.text_dim=64"),
                              ("geometry.student_patch=1", r"patch_size=\[1, 2, 2\]")):
        bad = load_config("tiny_wan21", [override])
        with pytest.raises(ModelError, match=message):
            WAN.check_transformer(transformer, bad)


# ----------------------------------------------------------------------------- the objective

def test_flow_objective_equals_a_float64_reference():
    obj = FlowMatchObjective(shift=3.0)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 4, 2, 3, 5, generator=gen), torch.randn(6, 4, 2, 3, 5, generator=gen)
    u = (t.double() + 1) / 1000
    sigma = 3 * u / (1 + 2 * u)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy, target = obj.noisy_and_target(x0, eps, t)
    torch.testing.assert_close(noisy.double(), (1 - s) * x0.double() + s * eps.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(target.double(), eps.double() - x0.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(obj.model_timestep(t).double(), sigma * 1000, rtol=0, atol=1e-3)
    assert obj.sigma(torch.tensor([999])).item() == 1.0  # the last timestep is pure noise
    with pytest.raises(ValueError, match="flow shift"):
        FlowMatchObjective(shift=0.0)


def test_release_sampler_feeds_the_trained_timestep_convention_and_integrates_the_target():
    """The UniPC flow sampler of the release calls the transformer with timestep = sigma * 1000 at
    noise level sigma (as the trainer does), its sigmas lie on the trained shift curve, and a model
    that predicts exactly the trained target (eps - x0) takes pure noise to x0."""
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(**WAN21_SCHEDULER)
    sched.set_timesteps(8)
    sigmas = sched.sigmas[:-1].double()
    torch.testing.assert_close(sched.timesteps.double(), sigmas * 1000, rtol=0, atol=1.0)
    u = sigmas / (3 - 2 * sigmas)  # the shift curve, inverted: every sigma has its u in (0, 1]
    assert bool(((u > 0) & (u <= 1)).all())

    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(1, 4, 2, 3, 5, generator=gen), torch.randn(1, 4, 2, 3, 5, generator=gen)
    z = eps.clone()
    for t in sched.timesteps:
        z = sched.step(eps - x0, t, z).prev_sample
    torch.testing.assert_close(z, x0, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- text and latents

def test_text_embeddings_equal_the_pipelines_and_the_preprocess_stage(tiny):
    from diffusers import WanPipeline

    from tsa.pipeline.encoders import TextStage

    pipe = WanPipeline.from_pretrained(tiny.models.student)
    length = tiny.geometry.text_length
    captions = ["a ball rolls across the table", "water flows from a tap into a white sink " * 4]
    ref = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=length,
                             device=torch.device("cpu"))[0]
    ours = WAN.encode_text(pipe.tokenizer, pipe.text_encoder, captions, length, torch.device("cpu"))
    assert ours.shape == (2, length, tiny.geometry.text_dim)
    torch.testing.assert_close(ours, ref.float(), rtol=0, atol=1e-5)
    real = int(pipe.tokenizer(captions[0]).input_ids.__len__())
    assert real < length and bool((ours[0, real:] == 0).all()) and bool((ours[0, :real] != 0).any())
    stage = TextStage(load_config("tiny_wan21").to_dict())
    torch.testing.assert_close(torch.from_numpy(stage.encode(captions)), ref.float(), rtol=0, atol=1e-5)


def test_latents_are_normalised_per_channel_as_the_pipeline_decodes_them(tiny):
    vae_config = WAN.vae_config(tiny.models.vae)
    z = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    zn = WAN.normalize_latent(z, vae_config)
    ref = torch.empty_like(z, dtype=torch.float64)
    for c in range(16):  # plain per-channel reference in float64
        ref[:, c] = (z[:, c].double() - vae_config["latents_mean"][c]) / vae_config["latents_std"][c]
    torch.testing.assert_close(zn.double(), ref, rtol=0, atol=1e-5)
    # WanPipeline's decode side: latents / (1 / std) + mean gives the VAE's latent back.
    mean = torch.tensor(vae_config["latents_mean"]).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae_config["latents_std"]).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(zn / inv_std + mean, z, rtol=1e-5, atol=1e-5)
    assert WAN.scaling_factor(vae_config) is None
    # The VAE runs in float32 even when preprocess.dtype / --dtype asks for bf16 (WanPipeline's way).
    assert next(WAN.load_vae(tiny.models.vae, torch.bfloat16).parameters()).dtype == torch.float32


def test_moments_give_the_stored_sample_with_per_channel_normalisation(tiny):
    """Sample mode stores normalise(mean + exp(logvar / 2) * eps(key)); the trainer's posterior
    sample of moments-mode arrays with dataset.json's latent_norm and the same eps gives it back."""
    import numpy as np

    from tsa.models.refs import vae_normalization
    from tsa.pipeline.encoders import VaeStage, key_seed
    from tsa.train.loss import posterior_sample

    g = tiny.geometry
    frames = np.random.default_rng(1).integers(0, 256, (1, g.num_frames, g.height, g.width, 3), dtype=np.uint8)
    batch = lambda: {"ok": np.array([True]), "key": np.array(["clip_a"]), "frames": frames.copy()}  # noqa: E731
    stage = VaeStage(load_config("tiny_wan21").to_dict())
    sample = stage(batch())["latent"][0]
    stage.cfg.preprocess.latents = "moments"  # same weights, other output mode
    moments = stage(batch())
    mean, logvar = moments["latent_mean"][0], moments["latent_logvar"][0]
    scaling_factor, norm = vae_normalization(tiny)
    assert scaling_factor is None
    vae_config = WAN.vae_config(tiny.models.vae)
    assert norm["shift"] == pytest.approx(vae_config["latents_mean"])
    assert norm["scale"] == pytest.approx([1 / s for s in vae_config["latents_std"]])
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(key_seed("clip_a"))).double()
    z = torch.from_numpy(mean).double() + torch.exp(0.5 * torch.from_numpy(logvar).double()) * eps
    ref = torch.stack([(z[c] - vae_config["latents_mean"][c]) / vae_config["latents_std"][c] for c in range(16)])
    torch.testing.assert_close(torch.from_numpy(sample).double(), ref, rtol=1e-5, atol=1e-5)
    # The trainer's draw from moments (its own seeded eps), against a float64 per-channel reference.
    from tsa.train.loss import sample_seed

    scale, shift = (torch.tensor(norm[k]).view(-1, 1, 1, 1) for k in ("scale", "shift"))
    drawn = posterior_sample(torch.from_numpy(mean), torch.from_numpy(logvar), 0, 7, scale, shift)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(sample_seed(0, 7, 1))).double()
    z = torch.from_numpy(mean).double() + torch.exp(0.5 * torch.from_numpy(logvar).double().clamp(-30, 20)) * eps
    ref = torch.stack([(z[c] - vae_config["latents_mean"][c]) / vae_config["latents_std"][c] for c in range(16)])
    torch.testing.assert_close(drawn.double(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the student

def test_student_captures_the_block_output_and_predicts_like_the_transformer(tiny):
    tiny.train.gradient_checkpointing = False
    torch.manual_seed(0)
    student = build_student(tiny)
    g = tiny.geometry
    c, f, h, w = g.latent_shape
    gen = torch.Generator().manual_seed(3)
    noisy, text = torch.randn(2, c, f, h, w, generator=gen), torch.randn(2, *g.text_shape, generator=gen)
    t = WAN.objective(tiny.models.scheduler).model_timestep(torch.tensor([10, 900]))
    blocks, fed = [], []
    student.transformer.blocks[tiny.align.layer - 1].register_forward_hook(lambda m, a, out: blocks.append(out))
    student.projector.register_forward_pre_hook(lambda m, args: fed.append(args[0]))
    pred, projected = student(noisy, text, t)
    assert len(blocks) == 1 and fed[0] is blocks[0] and fed[0].shape == (2, f * (h // 2) * (w // 2), 32)
    with torch.no_grad():
        ref = student.transformer(hidden_states=noisy, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(pred, ref)
    ft, ht, wt = g.teacher_grid
    assert projected.shape == (2, ft * ht * wt, tiny.models.teacher.dim)
    (pred.square().mean() + projected.square().mean()).backward()
    block = student.transformer.blocks[0].attn1.to_q.weight.grad
    assert block is not None and block.abs().sum() > 0
    assert student.family is student_family("wan")


def test_checkpointed_wan_blocks_are_captured_once_and_give_the_same_gradients():
    students = {}
    for checkpointing in (False, True):
        cfg = resolve_tiny(load_config("tiny_wan21", [f"train.gradient_checkpointing={str(checkpointing).lower()}"]))
        torch.manual_seed(0)
        students[checkpointing] = build_student(cfg)
    assert students[True].transformer.is_gradient_checkpointing
    g = cfg.geometry
    gen = torch.Generator().manual_seed(4)
    noisy, text = torch.randn(2, *g.latent_shape, generator=gen), torch.randn(2, *g.text_shape, generator=gen)
    t = torch.tensor([100.0, 800.0])
    grads = {}
    for key, student in students.items():
        pred, projected = student(noisy, text, t)
        (pred.square().mean() + projected.square().mean()).backward()
        assert student.captures == 1  # the block ran again in backward; the hook kept the first output
        grads[key] = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert grads[False].keys() == grads[True].keys() and any("blocks.1." in n for n in grads[True])
    for n in grads[False]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the whole chain

def _cli(*args):
    result = CliRunner().invoke(app, [*map(str, args)])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _video(path: Path) -> tuple[list, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)], float(stream.average_rate)


@pytest.fixture(scope="module")
def wan_shards(ray_local, tmp_path_factory):
    from tsa.pipeline.run import run_preprocess
    from tsa.testing.sample_clips import make_sample_clips

    root = tmp_path_factory.mktemp("wan")
    clips = make_sample_clips(root / "clips", n=2, seed=5, broken=False)
    out = root / "shards"
    result = run_preprocess(clips, out, load_config("tiny_wan21", ["preprocess.samples_per_shard=1"]))
    assert result.counts["ok"] == 2, result.reasons
    return types.SimpleNamespace(shards=out, root=root)


@pytest.mark.slow
def test_preprocess_writes_wan_latents_and_text_and_view_draws_them(wan_shards, tiny):
    import pyarrow.parquet as pq

    info = json.loads((wan_shards.shards / "dataset.json").read_text())
    g = tiny.geometry
    assert info["scaling_factor"] is None and info["config"]["models"]["family"] == "wan"
    assert info["geometry"]["latent_shape"] == list(g.latent_shape)
    assert info["geometry"]["teacher_grid"] == list(g.teacher_grid)
    key = pq.read_table(wan_shards.shards / "manifest.parquet").column("key")[0].as_py()
    code, output = _cli("view", "--shards", wan_shards.shards, "--key", key, "--out", wan_shards.root / "view.png")
    assert code == 0, output
    # Shards of one family do not train another.
    code, output = _cli("train", "--shards", wan_shards.shards, "--out", wan_shards.root / "wrong", "--config", "tiny",
                        "--max-steps", 1)
    assert code != 0 and "models.family=wan" in output and "models.family=cogvideox" in output


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_then_sample(wan_shards, lora, tmp_path):
    run = tmp_path / "run"
    one_prompt = tmp_path / "validation.txt"  # one video shows the geometry (not the 8 bundled prompts)
    one_prompt.write_text("a ball rolls across the table\n")
    extra = ["-o", "train.lora.rank=4"] if lora else ["-o", "train.validate_every=2", "-o", "train.validation_steps=2",
                                                       "-o", f"train.validation_prompts={one_prompt}"]
    code, output = _cli("train", "--shards", wan_shards.shards, "--out", run, "--config", "tiny_wan21",
                        "--max-steps", 2, *extra)
    assert code == 0, output
    assert "trained to step 2 (4 samples" in output
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss_align"] > 0 and m["loss_diffusion"] > 0 for m in metrics if "loss_align" in m)
    ckpt = run / "checkpoint-2"
    g = load_config("tiny_wan21").geometry
    if lora:
        assert (ckpt / "pytorch_lora_weights.safetensors").is_file() and not (ckpt / "transformer").exists()
    else:
        config = json.loads((ckpt / "transformer" / "config.json").read_text())
        assert config["_class_name"] == "WanTransformer3DModel" and config["num_layers"] == 3
        frames, _ = _video(sorted((run / "validation" / "step-2").glob("*.mp4"))[0])
        assert len(frames) == g.num_frames

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a ball rolls across the table\n")
    code, output = _cli("sample", "--checkpoint", ckpt, "--prompts", prompts, "--out", tmp_path / "videos",
                        "--steps", 2)
    assert code == 0, output
    frames, fps = _video(tmp_path / "videos" / "00000_s42_v0.mp4")
    assert len(frames) == g.num_frames and frames[0].shape == (g.height, g.width, 3) and fps == 16
    settings = json.loads((tmp_path / "videos" / "samples.jsonl").read_text().splitlines()[0])["settings"]
    assert settings["scheduler"] == "UniPCMultistepScheduler/flow" and settings["guidance"] == 5.0
    assert settings["max_sequence_length"] == g.text_length


@pytest.mark.slow
def test_moments_shards_record_the_per_channel_norm_and_train(ray_local, wan_shards, tiny, tmp_path):
    from tsa.pipeline.run import run_preprocess

    clips = wan_shards.root / "clips"
    out = tmp_path / "moments"
    result = run_preprocess(clips, out, load_config("tiny_wan21", ["preprocess.samples_per_shard=1",
                                                                   "preprocess.latents=moments"]))
    assert result.counts["ok"] == 2, result.reasons
    info = json.loads((out / "dataset.json").read_text())
    vae_config = WAN.vae_config(tiny.models.vae)
    assert info["latents"] == "moments" and info["scaling_factor"] is None
    assert info["latent_norm"]["shift"] == pytest.approx(vae_config["latents_mean"])
    code, output = _cli("train", "--shards", out, "--out", tmp_path / "run", "--config", "tiny_wan21",
                        "-o", "preprocess.latents=moments", "--max-steps", 2)
    assert code == 0, output
    assert "trained to step 2 (4 samples" in output
