"""Ray Train with 2 CPU workers (gloo) trains like 1 in-process worker at the same global batch:
DDP, and FSDP2 with gradient accumulation (2 micro-batches a worker, each reduce-scattered into
the gradient shards, against 4 on one worker). Both build an empty student on every rank and
fill it from the one copy rank 0 loads (train/distributed.py, `wrap`)."""
import pytest
import torch

from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.train.command import prepare_job
from tsa.train.launch import launch
from tsa.train.metrics import read_metrics


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """As Ray's workers do (OMP_NUM_THREADS=1): the tiny model gains nothing from threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, global_batch", [("ddp", 2), ("fsdp2", 4)])
def test_two_ray_workers_match_one_worker(tmp_path, strategy, global_batch, ray_local):
    from safetensors.torch import load_file

    shards = make_synthetic_dataset(tmp_path / "ds", load_config("tiny"), n=8, seed=2)
    overrides = ["train.max_steps=3", "train.checkpoint_every=0", f"train.strategy={strategy}",
                 f"train.global_batch={global_batch}"]
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        job, cfg = prepare_job(shards, out, "tiny", overrides)
        job.tensorboard = False
        state = launch(job, workers=workers, strategy=cfg.train.strategy)
        assert state["step"] == 3 and state["world_size"] == workers and state["data"]["consumed"] == 3 * global_batch
        runs[workers] = out
    one, two = read_metrics(runs[1]), read_metrics(runs[2])
    assert [r["step"] for r in two] == [1, 2, 3]
    for key in ("loss", "loss_diffusion", "loss_align", "grad_norm"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4), key
    w1 = load_file(str(runs[1] / "checkpoint-3" / "transformer" / "diffusion_pytorch_model.safetensors"))
    w2 = load_file(str(runs[2] / "checkpoint-3" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert w1.keys() == w2.keys()
    # Adam turns round-off in near-zero gradients into full-size steps (lr = 1e-3 a step), so
    # weights agree to 1% of one step rather than to float precision.
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k
    p1 = load_file(str(runs[1] / "checkpoint-3" / "projector.safetensors"))
    p2 = load_file(str(runs[2] / "checkpoint-3" / "projector.safetensors"))
    assert all(torch.allclose(p1[k], p2[k], rtol=1e-4, atol=1e-5) for k in p1)  # projector synchronised too
