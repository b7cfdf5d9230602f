"""The wheel a user installs: one top-level import name, `tsa`, that shares nothing with
HuggingFace `evaluate` (or any other package named after a room), holds every file tsa reads at
run time, and works from outside the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HF_EVALUATE_TOP_LEVEL = {"evaluate", "evaluate_cli"}  # evaluate 0.4.x: its top_level.txt


def _source_copy(dst: Path) -> Path:
    """The checkout's files (tracked and untracked, not ignored) copied to dst, so the build
    leaves nothing in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                 "demo_out", "runs"))
        return dst
    for rel in listed.stdout.splitlines():
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the dev extra brings setuptools, so the build needs no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    (whl,) = out.glob("tsa-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_has_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"tsa"}, sorted(top)
    assert not (top & HF_EVALUATE_TOP_LEVEL)
    (info,) = dist_info
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "tsa = tsa.cli:main" in entry_points
    # the rooms, and nothing of the repository that is not the package
    for module in ("tsa/__init__.py", "tsa/__main__.py", "tsa/cli.py", "tsa/core/correspondence.py",
                   "tsa/shards/reader.py", "tsa/pipeline/run.py", "tsa/train/loop.py", "tsa/view/gallery.py",
                   "tsa/evaluate/sample.py", "tsa/models/family.py", "tsa/media/mp4.py", "tsa/testing/synthetic.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith(("tsa/tests/", "tsa/bench/", "tsa/docs/", "tsa/tsa_core/"))]


@pytest.mark.slow
def test_wheel_carries_the_files_read_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in (ROOT / "configs").rglob("*"):
        if p.is_file() and p.suffix in (".yaml", ".txt"):
            assert f"tsa/configs/{p.relative_to(ROOT / 'configs').as_posix()}" in names, p
    # the benchmark prompt sets of `tsa sample --benchmark` and their sources and licenses
    shipped = {"videophy_prompts.csv", "videophy_upsampled_prompts.csv", "videophy2_test_prompts.csv",
               "vbench_prompts.csv", "README.md"}
    assert {p.name for p in (ROOT / "evaluate" / "prompt_sets").iterdir()} == shipped
    for name in shipped:
        assert f"tsa/evaluate/prompt_sets/{name}" in names, name


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    code = ("import tsa, tsa.core; from tsa.configs.schema import load_config;"
            "from tsa.train.validate import validation_prompts;"
            "cfg = load_config('tiny'); assert validation_prompts(cfg), 'no bundled validation prompts';"
            "from tsa.evaluate.benchmarks import BENCHMARKS, benchmark_prompts;"
            "assert [len(benchmark_prompts(b)) for b in BENCHMARKS.values()] == [344, 591, 946];"
            "print(tsa.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(target)
    version = subprocess.run([sys.executable, "-m", "tsa", "--version"], cwd=tmp_path, env=env, capture_output=True,
                             text=True)
    assert version.returncode == 0 and version.stdout.startswith("tsa "), version.stderr
