"""Shared fixtures. Tiny models are materialised into a per-session cache folder, so every
test loads them through the same code that loads real weights."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import pytest


def run_folder(tmp_path_factory) -> Path:
    """The whole run's temporary folder, seen by every xdist worker (each worker's base temp
    folder sits in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def _tsa_cache(tmp_path_factory):
    """One tiny-model cache for the whole run, shared by the xdist workers: tiny models are
    written to a temporary name and renamed, so workers that race build the same bytes and one
    of them wins."""
    old = os.environ.get("TSA_CACHE")
    cache = run_folder(tmp_path_factory) / "tsa_cache"
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
# one long test each while the other waits; among them, the modules that share the worker's Ray
# (`ray_local`) come together, so that it is started about once per worker rather than once per
# module; then every other module in collection order.
LONGEST_FIRST = ("tests/test_preprocess_s3.py", "tests/test_pipeline_runtime_ray.py", "tests/test_family_wan.py",
                 "tests/test_train_cluster.py", "tests/test_families.py", "tests/test_pipeline_preprocess.py",
                 "tests/test_teachers.py", "tests/test_train_ddp.py", "tests/test_pipeline_sources.py",
                 "tests/test_sample_workers.py", "tests/test_pipeline_cluster.py", "tests/test_pipeline_node_loss.py",
                 "tests/test_train_node_loss.py", "tests/test_storage.py", "tests/test_train_fsdp_memory.py",
                 "tests/test_train_validate.py", "tests/test_train_ray.py")


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


# ---- preprocess outputs built once per run ---------------------------------------------------------
@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A folder of the whole run, seen by every xdist worker."""
    root = run_folder(tmp_path_factory) / "shared"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def built_once(folder: Path):
    """Yields True to the one process (of all xdist workers) that must build `folder`, False to
    the others, which wait on a file lock until it is built. A build that fails leaves no `done`
    mark, so the next caller builds it again."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder.parent / f"{folder.name}.done"
        build = not done.exists()
        if build and folder.exists():
            shutil.rmtree(folder)
        yield build
        if build:
            done.touch()


REFERENCE_OPTS = ["preprocess.samples_per_shard=2"]  # 12 inputs -> 6 shards: room to kill between two


@pytest.fixture(scope="module")
def reference_output(shared_dir):
    """One tiny-config preprocess of 5 clips and every broken kind (12 inputs, 6 shards), made
    once per run and shared read-only by test_pipeline_preprocess.py and test_preprocess_s3.py:
    (clips folder, output folder, its RunResult). The caller provides a running Ray."""
    from dataclasses import asdict

    from tsa.configs import load_config
    from tsa.pipeline.run import RunResult, run_preprocess
    from tsa.testing.sample_clips import make_sample_clips

    clips, out, result = shared_dir / "reference_clips", shared_dir / "reference_out", shared_dir / "reference.json"
    with built_once(clips) as build:
        if build:
            make_sample_clips(clips, n=5, seed=2, broken=True)
    with built_once(out) as build:
        if build:
            done = run_preprocess(clips, out, load_config("tiny", REFERENCE_OPTS))
            result.write_text(json.dumps(asdict(done), default=str))
    return clips, out, RunResult(**json.loads(result.read_text()))


# ---- one local Ray per test process ----------------------------------------------------------------
# Starting Ray costs ~4 CPU-seconds and its first Ray Data run ~4 more (Ray Data's own actors);
# the decode workers of a run are reused by the next run of the same driver. So every module
# that asks for `ray_local` shares one Ray, started by the first of them and kept until the
# session ends; a module that does not ask for it (its own cluster, fake GPUs, a CLI that must
# start and stop its own Ray) runs with none up.
_SHARED_RAY = {"up": False}


def stop_shared_ray() -> None:
    if _SHARED_RAY["up"]:
        import ray

        ray.shutdown()
        _SHARED_RAY["up"] = False


def start_local_ray(num_gpus: Optional[int] = None, **env_vars: str):
    """A new local Ray of 2 CPUs (and `num_gpus` declared GPUs, else the machine's; never a cluster
    some other process started on this machine) whose workers see the session's TSA_CACHE and
    `env_vars`."""
    import ray

    # Ray keeps at most num_cpus (2) idle task workers and kills the rest after a second idle; a run's
    # decode and route tasks (0.5 and 0.25 CPU: 4 and 8 fit in 2 CPUs) use more, so each of the many
    # runs on one test Ray started task workers and their decode children (a torch import each)
    # again: ~5 CPU-s a run (docs/benchmarks.md). A cluster with many CPUs keeps them; so does this.
    ray.init(address="local", num_cpus=2, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TSA_CACHE": os.environ["TSA_CACHE"], **env_vars}},
             _system_config={"num_workers_soft_limit": 12})
    return ray


def _module_asks_for(request, name: str) -> bool:
    return any(name in item.fixturenames for item in request.session.items
               if getattr(item, "module", None) is request.module)


@pytest.fixture(scope="module", autouse=True)
def _shared_ray_only_where_asked(request):
    if not _module_asks_for(request, "ray_local"):
        stop_shared_ray()
    yield


@pytest.fixture(scope="session")
def _ray_hooks_file(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "ray_hooks.json"  # per xdist worker, as its Ray is
    path.write_text("{}")
    return path


@pytest.fixture(scope="module")
def ray_local(_ray_hooks_file):
    """The test process's local Ray (`start_local_ray`); its workers also see the fault file of
    `ray_hooks`. Shared by every module that asks for it (see above): tests leave it running."""
    import ray

    if not (_SHARED_RAY["up"] and ray.is_initialized()):
        stop_shared_ray()
        assert not ray.is_initialized(), "a Ray of another kind is still up"
        start_local_ray(TSA_TEST_HOOKS=str(_ray_hooks_file))
        _SHARED_RAY["up"] = True
    yield ray


@pytest.fixture(scope="module")
def ray_own():
    """A local Ray of the module's own (2 CPUs), started after the module's other fixtures set
    their environment (a moto server's AWS_* variables: Ray's workers inherit the raylet's
    environment, as on a real cluster), and shut down at the module's end."""
    import ray

    assert not ray.is_initialized()
    yield start_local_ray()
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_hooks(ray_local, _ray_hooks_file):
    """The shared Ray's fault file (pipeline/hooks.py, read at each use): a module writes the
    faults it wants between runs; it is emptied again when the module ends."""
    _ray_hooks_file.write_text("{}")
    yield _ray_hooks_file
    _ray_hooks_file.write_text("{}")


def pytest_sessionfinish(session, exitstatus):
    stop_shared_ray()
    _fail_on_unexpected_skips(session)


def pytest_configure(config):
    """Compile tsa's modules once. Where PYTHONDONTWRITEBYTECODE=1 is set (as on the development
    machine) nothing writes them, and each of the hundreds of Ray workers and subprocesses the
    suite starts would compile every tsa module it imports again (0.1-0.3 CPU-seconds each)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller did it before starting the workers
    import compileall

    import tsa

    root = Path(tsa.__file__).resolve().parent
    for path in sorted(root.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file() and path.name not in ("tests", "tmp"):
            compileall.compile_dir(str(path), quiet=1)
        elif path.suffix == ".py":
            compileall.compile_file(str(path), quiet=1)


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


def _fail_on_unexpected_skips(session) -> None:
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
