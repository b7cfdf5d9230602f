"""Shared fixtures. Tiny models are materialised into a per-session cache folder, so every
test loads them through the same code that loads real weights."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _tsa_cache(tmp_path_factory):
    old = os.environ.get("TSA_CACHE")
    os.environ["TSA_CACHE"] = str(tmp_path_factory.mktemp("tsa_cache"))
    yield
    if old is None:
        os.environ.pop("TSA_CACHE", None)
    else:
        os.environ["TSA_CACHE"] = old


@pytest.fixture
def tiny_cfg():
    """A fresh copy of configs/tiny.yaml (tests may mutate it)."""
    from tsa.configs import load_config

    return load_config("tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are too small to gain from threads, and on a busy 2-core machine torch's
    2 OpenMP threads make a tiny training step ~50x slower than 1 thread (bench/train_step.py)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_local():
    """One fresh local Ray (2 CPUs) for a test module: never a cluster some other process
    started on this machine; the actors see the session's TSA_CACHE."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TSA_CACHE": os.environ["TSA_CACHE"]}})
    yield
    if started:
        ray.shutdown()
