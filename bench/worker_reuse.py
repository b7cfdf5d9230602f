"""Tiny preprocess runs one after another on one local Ray of 2 CPUs, with Ray's default idle-worker
limit (num_cpus: idle task workers beyond 2 are killed after a second) and with 12 (what the test
suite's Rays use, tests/conftest.py). Machine CPU-seconds and wall seconds per run; the first run
of each Ray starts everything and is printed apart.

    python bench/worker_reuse.py            # about 2 minutes on 2 cores; run it on an idle machine
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = 4


def one_ray(limit: int, work: Path) -> None:
    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from suite_costs import Measure

    from tsa.configs import load_config
    from tsa.pipeline.run import run_preprocess
    from tsa.testing.sample_clips import make_sample_clips

    extra = {"_system_config": {"num_workers_soft_limit": limit}} if limit else {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TSA_CACHE": os.environ["TSA_CACHE"]}}, **extra)
    clips = make_sample_clips(work / "clips", n=4, broken=False)
    cfg = load_config("tiny", ["preprocess.samples_per_shard=1"])
    for i in range(RUNS):
        shutil.rmtree(work / "out", ignore_errors=True)
        with Measure(f"idle worker limit {limit or 'default (2)'}, run {i + 1}" + (" (first)" if i == 0 else "")):
            run_preprocess(clips, work / "out", cfg)
    ray.shutdown()


def main() -> None:
    if len(sys.argv) > 1:  # one Ray per process: Ray's system config is fixed at its start
        one_ray(int(sys.argv[1]), Path(sys.argv[2]))
        return
    work = Path(tempfile.mkdtemp(prefix="tsa-worker-reuse-"))
    env = dict(os.environ, TSA_CACHE=os.environ.get("TSA_CACHE", str(work / "cache")))
    try:
        for limit in (0, 12):
            subprocess.run([sys.executable, __file__, str(limit), str(work / str(limit))], check=True, env=env,
                           stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
