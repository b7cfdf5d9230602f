"""`tsa train` starts the CUDA caching allocator with expandable segments (train/launch.py):
on an H200, CogVideoX-2B at micro-batch 24 ran out of memory with 17 GiB reserved but unused
until it did (docs/train.md, "Memory per GPU"). A user's own setting wins."""
from tsa.train import launch as launch_module
from tsa.train.loop import TrainJob


def test_launch_sets_expandable_segments_before_training(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    seen = {}

    def fake_run_training(job, dist):
        import os

        seen["conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        return {}

    monkeypatch.setattr(launch_module, "run_training", fake_run_training)
    launch_module.launch(TrainJob(config={}, shards="s", out="o"), workers=1)
    assert seen["conf"] == "expandable_segments:True"


def test_a_users_allocator_setting_is_kept(monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    launch_module.set_allocator_defaults()
    import os

    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
