"""Student with projector: block-l capture, gradients, checkpointing, config checks, optimiser."""
import pytest
import torch

from tsa.configs import load_config
from tsa.models.tiny import resolve_tiny
from tsa.models.cogvideox import FAMILY as COGVIDEOX
from tsa.models.family import ModelError
from tsa.models.student import Student, build_student
from tsa.train.optim import WarmupConstant, build_lr_scheduler, build_optimizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cfg():
    return resolve_tiny(load_config("tiny"))


def _inputs(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, f, h, w = cfg.geometry.latent_shape
    noisy = torch.randn(batch, c, f, h, w, generator=g)
    text = torch.randn(batch, *cfg.geometry.text_shape, generator=g)
    return noisy, text, torch.tensor([10, 900][:batch])


def _student(cfg, checkpointing: bool) -> Student:
    cfg.train.gradient_checkpointing = checkpointing
    torch.manual_seed(0)
    return build_student(cfg)


def test_block_output_is_captured_once_per_forward_even_with_checkpointing(cfg):
    plain, ckpt = _student(cfg, False), _student(cfg, True)
    assert ckpt.transformer.is_gradient_checkpointing and not plain.transformer.is_gradient_checkpointing
    seen = {}
    for name, m in (("plain", plain), ("ckpt", ckpt)):
        m.projector.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
    grads = {}
    for name, m in (("plain", plain), ("ckpt", ckpt)):
        pred, proj = m(*_inputs(cfg))
        (pred.square().mean() + proj.square().mean()).backward()
        grads[name] = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
        assert m.captures == 1  # the block ran again in backward, the hook kept only the first output
    f, h, w = cfg.geometry.student_grid
    width = plain.transformer.config.num_attention_heads * plain.transformer.config.attention_head_dim
    assert seen["plain"].shape == (2, f * h * w, width)  # video tokens only, no text tokens
    assert torch.allclose(seen["plain"], seen["ckpt"], atol=1e-6)
    assert grads["plain"].keys() == grads["ckpt"].keys()
    for k in grads["plain"]:
        assert torch.allclose(grads["plain"][k], grads["ckpt"][k], atol=1e-5, rtol=1e-4), k


def test_capture_is_the_output_of_block_l_and_gradients_reach_only_blocks_up_to_l(cfg):
    student = _student(cfg, False)
    outputs = []
    student.transformer.transformer_blocks[cfg.align.layer - 1].register_forward_hook(
        lambda mod, args, out: outputs.append(out[0]))
    inputs = []
    student.projector.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    _, proj = student(*_inputs(cfg))
    assert inputs[0] is outputs[0]
    t = cfg.geometry.teacher_grid
    assert proj.shape == (2, t[0] * t[1] * t[2], cfg.models.teacher.dim)
    proj.square().mean().backward()  # the alignment path alone
    blocks = student.transformer.transformer_blocks
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks[0].parameters() if p.requires_grad)
    assert all(p.grad is None for p in blocks[1].parameters())  # after block l = 1
    assert all(p.grad is not None for p in student.projector.parameters())


def test_no_projector_for_plain_fine_tuning(cfg):
    cfg.align.loss = "none"
    try:
        student = _student(cfg, False)
    finally:
        cfg.align.loss = "mtsa"
    assert student.projector is None
    pred, proj = student(*_inputs(cfg))
    assert proj is None and pred.shape == _inputs(cfg)[0].shape


def test_student_config_mismatches_name_both_values(cfg):
    transformer = COGVIDEOX.load_transformer(cfg.models.student)
    bad = load_config("tiny", ["align.layer=5"])
    with pytest.raises(ModelError, match="align.layer=5 but the student has 2 blocks"):
        COGVIDEOX.check_transformer(transformer, bad)
    bad = load_config("tiny", ["geometry.text_length=20"])
    with pytest.raises(ModelError, match="max_text_seq_length=16 but geometry.text_length=20"):
        COGVIDEOX.check_transformer(transformer, bad)
    bad = load_config("tiny", ["geometry.text_dim=64"])
    with pytest.raises(ModelError, match="text_embed_dim=32 but geometry.text_dim=64"):
        COGVIDEOX.check_transformer(transformer, bad)


def test_rotary_models_get_their_3d_rotary_tables(cfg):
    from diffusers import CogVideoXTransformer3DModel

    c, f, h, w = cfg.geometry.latent_shape
    torch.manual_seed(0)
    rot = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=c, out_channels=c,
                                      num_layers=1, time_embed_dim=32, text_embed_dim=cfg.geometry.text_dim,
                                      sample_frames=cfg.geometry.num_frames, sample_height=h, sample_width=w,
                                      use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
    cos, sin = COGVIDEOX.conditioning(rot, cfg, torch.device("cpu"))
    sf, sh, sw = cfg.geometry.student_grid
    assert cos.shape == sin.shape == (sf * sh * sw, 16)
    assert COGVIDEOX.conditioning(COGVIDEOX.load_transformer(cfg.models.student), cfg, torch.device("cpu")) is None
    student = Student(COGVIDEOX, rot, None, 1, cfg.geometry.student_grid)
    noisy, text, t = _inputs(cfg)
    with_rope = student(noisy, text, t, (cos, sin))[0]
    assert not torch.allclose(with_rope, student(noisy, text, t, None)[0])


def test_optimizer_groups_and_warmup(cfg):
    cfg.train.projector_lr = 5e-3
    student = _student(cfg, False)
    opt = build_optimizer(student, cfg.train)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["student", "projector"]
    assert [g["lr"] for g in opt.param_groups] == [cfg.train.lr, 5e-3]
    n_proj = sum(p.numel() for p in student.projector.parameters())
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == n_proj
    assert all(p.dtype == torch.float32 for g in opt.param_groups for p in g["params"])
    sched = build_lr_scheduler(opt, cfg.train)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([cfg.train.lr / 2, cfg.train.lr, cfg.train.lr, cfg.train.lr])  # warmup_steps 2
    assert WarmupConstant(0)(0) == 1.0
    assert sched.state_dict()["lr_lambdas"] == [{"warmup_steps": 2}] * 2  # plain data, one per group
