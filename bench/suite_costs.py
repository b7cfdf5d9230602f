"""What the end-to-end tests pay per process and per run on this machine, in machine CPU-seconds
(every process: Ray's daemons, workers and actors, subprocesses) and wall seconds. These are
the floor under the test suite's time (docs/benchmarks.md, "Test suite"): nearly all of a tiny
run's cost is starting Python processes that import torch and the model libraries.

    python bench/suite_costs.py            # about 3 minutes on 2 cores; run it on an idle machine

Prints one line per measurement.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pytest_cpu import machine_cpu_seconds  # noqa: E402


class Measure:
    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        self.cpu, self.wall = machine_cpu_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            print(f"{self.what:62s} {machine_cpu_seconds() - self.cpu:6.1f} CPU-s {time.monotonic() - self.wall:6.1f} s",
                  flush=True)


def python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def imports() -> None:
    with Measure("python -c 'pass'"):
        python("pass")
    with Measure("python -c 'import torch'"):
        python("import torch")
    with Measure("... + diffusers' AutoencoderKLCogVideoX (the VAE actor)"):
        python("import torch; from diffusers import AutoencoderKLCogVideoX")
    with Measure("... + transformers' T5EncoderModel (the text actor)"):
        python("import torch; from transformers import T5EncoderModel")
    with Measure("... + tsa's preprocess, train and CLI modules"):
        python("import tsa.pipeline.run, tsa.pipeline.encoders, tsa.train.loop, tsa.cli")
    # What each kind of process the suite starts imports before it does any work:
    with Measure("a decode child's imports (tsa.pipeline.decode_proc)"):
        python("import tsa.pipeline.decode_proc")
    with Measure("a decode task worker's imports (ray, tsa.pipeline.prepare)"):
        python("import ray, ray.data, tsa.pipeline.prepare")
    with Measure("a model actor's imports (ray, encoders, the VAE, T5)"):
        python("import ray, ray.data, tsa.pipeline.encoders; from diffusers import AutoencoderKLCogVideoX; "
               "from transformers import T5EncoderModel")
    with Measure("a Ray Train worker's imports (ray.train.torch, tsa.train.launch, the student)"):
        python("import ray.train.torch, tsa.train.launch; from diffusers import CogVideoXTransformer3DModel")


class Idle:
    def ready(self) -> bool:
        return True


def actor_processes(n: int = 8) -> None:
    import ray

    with Measure(f"a Ray actor process that imports nothing (total for {n})"):
        actors = [ray.remote(num_cpus=0)(Idle).remote() for _ in range(n)]
        ray.get([a.ready.remote() for a in actors])
        for a in actors:
            ray.kill(a)


class Noop:
    def __call__(self, batch):
        return batch


class TorchNoop:
    def __init__(self):
        import torch  # noqa: F401

    def __call__(self, batch):
        return batch


def ray_data_stages() -> None:
    import ray
    from ray.data import ActorPoolStrategy

    ray.data.DataContext.get_current().enable_progress_bars = False

    def stages(cls, n: int) -> None:
        ds = ray.data.from_items([{"a": i} for i in range(2)])
        for _ in range(n):
            ds = ds.map_batches(cls, compute=ActorPoolStrategy(size=1), num_cpus=0.25, batch_format="numpy")
        list(ds.iter_rows())

    with Measure("Ray Data's first execution in a new Ray (1 no-op actor)"):
        stages(Noop, 1)
    with Measure("3 no-op actor stages, 2 rows"):
        stages(Noop, 3)
    with Measure("3 actor stages that import torch, 2 rows"):
        stages(TorchNoop, 3)


def tiny_runs(work: Path) -> tuple[Path, Path]:
    from typer.testing import CliRunner

    from tsa.cli import app
    from tsa.configs import load_config
    from tsa.pipeline.run import run_preprocess
    from tsa.testing.sample_clips import make_sample_clips
    from tsa.testing.synthetic import make_synthetic_dataset

    clips = make_sample_clips(work / "clips", n=2, broken=False)
    runs = [("separate", "tiny preprocess of 2 clips, Ray already up (first; three actor pools)")]
    runs += [(how, f"the same again (warm workers), model_actors={how}") for how in ("separate", "shared") * 2]
    for how, what in runs:
        shutil.rmtree(work / "out", ignore_errors=True)
        with Measure(what):
            run_preprocess(clips, work / "out", load_config("tiny", [f"preprocess.model_actors={how}"]))
    shards = make_synthetic_dataset(work / "ds", load_config("tiny"), n=8, seed=3)
    for i in range(2):
        shutil.rmtree(work / "run", ignore_errors=True)
        with Measure(f"tsa train --workers 2 --max-steps 2 (Ray Train, Ray up, run {i + 1})"):
            res = CliRunner().invoke(app, ["train", "--shards", str(shards), "--out", str(work / "run"),
                                           "--config", "tiny", "--workers", "2", "--max-steps", "2"])
            assert res.exit_code == 0, res.output
    return clips, shards


def cli_runs(work: Path, clips: Path, shards: Path) -> None:
    tsa = [sys.executable, "-m", "tsa"]
    with Measure("python -m tsa preprocess, 2 clips (its own Ray)"):
        subprocess.run([*tsa, "preprocess", "--src", str(clips), "--out", str(work / "cli_out"), "--config", "tiny",
                        "--no-progress"], check=True, capture_output=True)
    with Measure("python -m tsa train --workers 2 --max-steps 2 (its own Ray)"):
        subprocess.run([*tsa, "train", "--shards", str(shards), "--out", str(work / "cli_run"), "--config", "tiny",
                        "--workers", "2", "--max-steps", "2"], check=True, capture_output=True)


def main() -> None:
    import ray

    work = Path(tempfile.mkdtemp(prefix="tsa-suite-costs-"))
    os.environ.setdefault("TSA_CACHE", str(work / "cache"))
    try:
        imports()
        with Measure("ray.init (local, 2 CPUs)"):
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"TSA_CACHE": os.environ["TSA_CACHE"]}})
        with Measure("an idle local Ray for 30 s"):
            time.sleep(30)
        actor_processes()
        ray_data_stages()
        clips, shards = tiny_runs(work)
        ray.shutdown()
        cli_runs(work, clips, shards)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
