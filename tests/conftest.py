"""Shared fixtures. Tiny models are materialised into a per-session cache folder, so every
test loads them through the same code that loads real weights."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _tsa_cache(tmp_path_factory):
    """One tiny-model cache for the whole run, shared by the xdist workers (each worker's base
    temp folder sits in the run's one folder): tiny models are written to a temporary name
    and renamed, so workers that race build the same bytes and one of them wins."""
    old = os.environ.get("TSA_CACHE")
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tsa_cache"
    cache.mkdir(exist_ok=True)
    os.environ["TSA_CACHE"] = str(cache)
    yield
    if old is None:
        os.environ.pop("TSA_CACHE", None)
    else:
        os.environ["TSA_CACHE"] = old


# xdist (pyproject's addopts: `-n 2 --dist loadscope`) sends a module's tests to one worker, so
# its module-scoped Ray and preprocess outputs are built once. These long tests are split: each
# parameter of the first two is a scope of its own, and test_families.py's tests go by family
# (each family has its own preprocess output), so the two workers share them.
OWN_SCOPE = ("tests/test_train_cluster.py::test_two_workers_from_relative_paths_resume_exactly_on_two_then_one_worker",
             "tests/test_train_ddp.py::test_two_ray_workers_match_one_worker")
BY_FIRST_PARAMETER = ("tests/test_families.py",)


def xdist_scope(nodeid: str) -> str:
    """The xdist scope of a test id (tests of one scope run on one worker, in order)."""
    module, _, rest = nodeid.partition("::")
    if nodeid.split("[")[0] in OWN_SCOPE:
        return nodeid
    if module in BY_FIRST_PARAMETER and "[" in rest:
        return f"{module}::{rest.split('[', 1)[1].split('-')[0]}"
    return module


# The longest scopes first (measured with --durations), so that the two workers do not end on
# one long test each while the other waits; then every other module in collection order.
LONGEST_FIRST = ("tests/test_train_cluster.py", "tests/test_pipeline_runtime_ray.py", "tests/test_preprocess_s3.py",
                 "tests/test_families.py", "tests/test_train_ddp.py", "tests/test_pipeline_node_loss.py",
                 "tests/test_train_node_loss.py", "tests/test_pipeline_cluster.py", "tests/test_pipeline_preprocess.py",
                 "tests/test_sample_workers.py", "tests/test_family_wan.py", "tests/test_teachers.py",
                 "tests/test_train_ray.py", "tests/test_storage.py")


def pytest_collection_modifyitems(items):
    """The longest modules first (a stable sort: each module's own order, and so its fixtures'
    grouping, is kept). xdist runs `--no-loadscope-reorder`, so scopes go out in this order."""
    rank = {m: i for i, m in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return xdist_scope(nodeid)

    return Scheduling(config, log)


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


# ---- the skip policy (tests/allowed_skips.txt) ---------------------------------------------------
ALLOWED_SKIPS = Path(__file__).with_name("allowed_skips.txt")
_skips: list[tuple[str, str]] = []  # (test id, reason)


def allowed_skips() -> dict[str, str]:
    """reason text -> why it may skip, from tests/allowed_skips.txt."""
    entries = {}
    for line in ALLOWED_SKIPS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            text, _, why = line.partition("|")
            entries[text.strip()] = why.strip()
    return entries


def _strict() -> bool:
    return os.environ.get("TSA_STRICT_SKIPS") == "1" or os.environ.get("CI", "").lower() == "true"


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)  # a module-level skip (importorskip) skips its whole file at collection


def unexpected_skips(skips: list[tuple[str, str]]) -> list[tuple[str, str]]:
    allowed = allowed_skips()
    return [(nodeid, reason) for nodeid, reason in skips if not any(text in reason for text in allowed)]


def pytest_sessionfinish(session, exitstatus):
    ok = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    if _strict() and unexpected_skips(_skips) and session.exitstatus in ok:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _skips:
        return
    bad = unexpected_skips(_skips)
    terminalreporter.section("skips")
    for nodeid, reason in _skips:
        mark = "NOT ALLOWED" if (nodeid, reason) in bad else "allowed"
        terminalreporter.write_line(f"{mark}: {nodeid}: {reason}")
    if bad:
        terminalreporter.write_line(
            f"{len(bad)} skip(s) not in tests/allowed_skips.txt"
            + (": failing the run (CI or TSA_STRICT_SKIPS=1)" if _strict() else " (a CI run fails on them)"))
