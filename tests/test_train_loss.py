"""Diffusion objective, alignment dispatch and per-sample randomness of the trainer."""
import pytest
import torch

from tsa.configs.schema import AlignConfig
from tsa.models.cogvideox import COGVIDEOX_2B_SCHEDULER
from tsa.models.objectives import DiffusionObjective
from tsa.train.loss import (alignment_loss, diffusion_loss, draw_noise, posterior_sample,
                        sample_seed)


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import CogVideoXDPMScheduler

    return CogVideoXDPMScheduler(**COGVIDEOX_2B_SCHEDULER)


def test_v_loss_equals_weighted_x0_loss_of_cogvideox_trainers(scheduler):
    obj = DiffusionObjective(scheduler)
    torch.manual_seed(0)
    x0 = torch.randn(4, 3, 2, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 500, 999])
    noisy, v = obj.noisy_and_target(x0, noise, t)
    pred = v + 0.3 * torch.randn_like(v)

    # The diffusers/finetrainers CogVideoX recipe: x0 from the v prediction, weight 1/(1 - alpha_bar).
    x0_pred = scheduler.get_velocity(pred, noisy, t)
    ab = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    weighted = (((x0_pred - x0) ** 2) / (1 - ab)).reshape(4, -1).mean(1).mean()
    assert torch.allclose(diffusion_loss(pred, v).double(), weighted.double(), rtol=1e-4, atol=1e-6)


def test_noising_and_target_match_the_scheduler_in_fp32(scheduler):
    obj = DiffusionObjective(scheduler)
    x0 = torch.randn(3, 16, 2, 3, 3)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 998])
    noisy, v = obj.noisy_and_target(x0.half(), noise.half(), t)
    assert noisy.dtype == v.dtype == torch.float32
    assert torch.allclose(noisy, scheduler.add_noise(x0.half().float(), noise.half().float(), t), atol=1e-6)
    assert torch.allclose(v, scheduler.get_velocity(x0.half().float(), noise.half().float(), t), atol=1e-6)


def test_fp32_keeps_neighbouring_noise_levels_apart(scheduler):
    ab = scheduler.alphas_cumprod[:4].float()
    # Why noising is done in fp32: bf16 merges alpha_bar of t=0 and t=1, and sqrt(alpha_bar) of t=1..3.
    assert ab[0] != ab[1] and ab.bfloat16()[0] == ab.bfloat16()[1]
    assert len(set(ab.sqrt().bfloat16()[1:].tolist())) == 1
    x0, noise = torch.ones(4, 1), torch.zeros(4, 1)
    noisy, _ = DiffusionObjective(scheduler).noisy_and_target(x0.bfloat16(), noise.bfloat16(), torch.arange(4))
    assert len(set(noisy.flatten().tolist())) == 4
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.snr_shift_scale == 3.0
    assert float(scheduler.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-6)  # zero terminal SNR


def test_epsilon_models_predict_the_noise(scheduler):
    from diffusers import CogVideoXDPMScheduler

    eps = DiffusionObjective(CogVideoXDPMScheduler(**{**COGVIDEOX_2B_SCHEDULER, "prediction_type": "epsilon"}))
    x0, noise = torch.randn(1, 4), torch.randn(1, 4)
    assert torch.equal(eps.noisy_and_target(x0, noise, torch.tensor([3]))[1], noise)
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionObjective(CogVideoXDPMScheduler(**{**COGVIDEOX_2B_SCHEDULER, "prediction_type": "sample"}))


def test_alignment_dispatch_matches_tsa_core():
    from tsa.core import mask_to_index, repa_loss, topk_mask, trd_loss, tsa_loss

    torch.manual_seed(1)
    grid = (2, 3, 4)
    s, t = torch.randn(2, 24, 8), torch.randn(2, 24, 8)
    query = mask_to_index(topk_mask(torch.rand(2, *grid), 0.25))
    cfg = AlignConfig(tau=0.2, margin=0.05)
    cases = {
        "mtsa": tsa_loss(s, t, grid, tau=0.2, query_index=query),
        "tsa": tsa_loss(s, t, grid, tau=0.2),
        "trd": trd_loss(s, t, grid, margin=0.05),
        "repa": repa_loss(s, t),
    }
    for name, expected in cases.items():
        cfg.loss = name
        assert torch.allclose(alignment_loss(cfg, s, t, grid, query), expected), name
    assert not torch.allclose(cases["mtsa"], cases["tsa"])
    cfg.loss = "mtsa"
    with pytest.raises(ValueError, match="query_index"):
        alignment_loss(cfg, s, t, grid, None)


def test_noise_and_timestep_depend_only_on_seed_and_sample_index():
    t1, n1 = draw_noise(0, 7, (2, 3, 4, 4), 1000)
    t2, n2 = draw_noise(0, 7, (2, 3, 4, 4), 1000)
    t3, n3 = draw_noise(0, 8, (2, 3, 4, 4), 1000)
    assert t1 == t2 and torch.equal(n1, n2)
    assert not torch.equal(n1, n3)
    assert sample_seed(1, 7) != sample_seed(0, 7)
    ts = [draw_noise(0, j, (1,), 1000)[0] for j in range(400)]
    assert min(ts) < 100 and max(ts) > 900  # uniform over [0, T)


def test_posterior_sample_uses_moments_and_scaling():
    mean = torch.full((2, 3), 2.0)
    tiny_var = torch.full((2, 3), -30.0)
    assert torch.allclose(posterior_sample(mean, tiny_var, 0, 0, 0.5), torch.full((2, 3), 1.0), atol=1e-5)
    a = posterior_sample(mean, torch.zeros(2, 3), 0, 0, 1.0)
    assert torch.equal(a, posterior_sample(mean, torch.zeros(2, 3), 0, 0, 1.0))
    assert not torch.equal(a, posterior_sample(mean, torch.zeros(2, 3), 0, 1, 1.0))


def test_posterior_sample_normalises_with_a_scalar_or_per_channel_norm():
    from tsa.train.dataset_check import DatasetInfo

    gen = torch.Generator().manual_seed(5)
    mean, logvar = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(sample_seed(0, 3, 1))).double()
    z = mean.double() + torch.exp(0.5 * logvar.double()) * eps
    cog = DatasetInfo("x", {"scaling_factor": 0.7}, [], [])
    assert cog.latent_norm() == (0.7, 0.0)
    torch.testing.assert_close(posterior_sample(mean, logvar, 0, 3, *cog.latent_norm()).double(), z * 0.7,
                               rtol=0, atol=1e-5)
    wan = DatasetInfo("x", {"scaling_factor": None, "latent_norm": {"scale": [2.0, 0.5], "shift": [1.0, -1.0]}}, [], [])
    scale, shift = wan.latent_norm()
    assert scale.shape == shift.shape == (2, 1, 1, 1)
    ref = torch.stack([(z[0] - 1.0) * 2.0, (z[1] + 1.0) * 0.5])
    torch.testing.assert_close(posterior_sample(mean, logvar, 0, 3, scale, shift).double(), ref, rtol=0, atol=1e-5)


def test_cogvideox15_padding_frame_is_frame_0_with_fresh_noise(scheduler):
    """CogVideoX1.5 (one latent frame padded in front): the student gets the clean frame 0 noised
    at the sample's timestep with noise of its own, not a copy of the noisy frame 0; the sample's
    timestep and latent noise are those of an unpadded model."""
    from tsa.configs import load_config
    from tsa.train.loss import draw_pad_noise
    from tsa.train.step import StepContext, micro_batch_losses

    cfg = load_config("tiny_cogvideox15", ["align.loss=none"])
    c, f, h, w = cfg.geometry.latent_shape
    assert cfg.geometry.student_pad_frames == 1
    obj = DiffusionObjective(scheduler)
    seen = {}

    def model(noisy, text, timestep, conditioning, pad=None):
        seen.update(noisy=noisy, pad=pad, t=timestep)
        return torch.zeros_like(noisy), None

    gen = torch.Generator().manual_seed(0)
    batch = {"latent": torch.randn(2, c, f, h, w, generator=gen), "text": torch.randn(2, *cfg.geometry.text_shape),
             "index": [5, 11]}
    micro_batch_losses(model, batch, StepContext(cfg, obj, torch.device("cpu"), None))
    for i, j in enumerate(batch["index"]):
        t, noise = draw_noise(cfg.seed, j, (c, f, h, w), obj.num_timesteps)
        assert int(seen["t"][i]) == t
        want_noisy, _ = obj.noisy_and_target(batch["latent"][i:i + 1], noise[None], torch.tensor([t]))
        assert torch.equal(seen["noisy"][i:i + 1], want_noisy)  # unchanged by the padding
        fresh = draw_pad_noise(cfg.seed, j, (c, 1, h, w))
        want_pad, _ = obj.noisy_and_target(batch["latent"][i:i + 1, :, :1], fresh[None], torch.tensor([t]))
        torch.testing.assert_close(seen["pad"][i:i + 1], want_pad, rtol=0, atol=0)
        # its noise is not frame 0's: the padding is not a copy of the noisy frame 0
        assert not torch.allclose(seen["pad"][i, :, 0], seen["noisy"][i, :, 0], atol=1e-3)
        assert not torch.allclose(fresh[:, 0], noise[:, 0], atol=1e-3)
