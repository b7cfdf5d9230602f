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


def test_ray_train_workers_get_the_setting_through_the_jobs_runtime_env(monkeypatch):
    """Ray Train sets up each worker's process group (and may touch the GPU) before our code
    runs there, so the setting travels in the job's runtime_env: for a local Ray (with the
    machine's TSA_CACHE) and for a cluster address (without it). A job from `ray job submit`
    (RAY_ADDRESS) keeps the runtime_env it was submitted with."""
    from test_pipeline_runtime import _recorded_ray_inits  # pytest puts tests/ on sys.path

    calls = _recorded_ray_inits(monkeypatch)  # through cluster/connect.py's connect, ray.init recorded
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    launch_module.connect_ray(None)
    launch_module.connect_ray("10.0.0.1:6379")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    launch_module.connect_ray("10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    launch_module.connect_ray(None)
    assert calls == [
        ("local", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "TSA_CACHE": "/cache/here"}),
        ("10.0.0.1:6379", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
        ("10.0.0.1:6379", {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}),
        ("10.0.0.1:6379", None),
    ]
