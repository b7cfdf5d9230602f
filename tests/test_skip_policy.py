"""The skip policy (tests/allowed_skips.txt): under CI a skip that is not on the allow-list fails
the run, an allowed one does not, and a broken import of a test helper fails instead of skipping."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(tmp_path: Path, body: str, ci: bool = True) -> subprocess.CompletedProcess:
    for name in ("conftest.py", "allowed_skips.txt"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_x.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TSA_STRICT_SKIPS", "PYTEST_ADDOPTS")}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)


def test_an_unlisted_skip_fails_under_ci(tmp_path):
    out = _run(tmp_path, "import pytest\ndef test_a():\n    pytest.skip('the helper did not import')\n")
    assert out.returncode == 1, out.stdout
    assert "NOT ALLOWED: test_x.py::test_a: the helper did not import" in out.stdout


def test_an_unlisted_skip_is_reported_but_passes_outside_ci(tmp_path):
    out = _run(tmp_path, "import pytest\ndef test_a():\n    pytest.skip('no reason')\n", ci=False)
    assert out.returncode == 0, out.stdout
    assert "a CI run fails on them" in out.stdout


def test_an_allowed_skip_passes_under_ci(tmp_path):
    out = _run(tmp_path, "import pytest\ndef test_a():\n    pytest.skip('/usr/bin/chromium is missing (apt-get install chromium)')\n")
    assert out.returncode == 0, out.stdout
    assert "allowed: test_x.py::test_a" in out.stdout


def test_a_module_level_importorskip_fails_under_ci(tmp_path):
    out = _run(tmp_path, "import pytest\nhelper = pytest.importorskip('no_such_helper_module')\n"
                         "def test_a():\n    pass\n")
    assert out.returncode == 1, out.stdout
    assert "NOT ALLOWED" in out.stdout and "no_such_helper_module" in out.stdout


def test_a_broken_helper_import_is_an_error_not_a_skip(tmp_path):
    (tmp_path / "helper_mod.py").write_text("raise ImportError('broken on purpose')\n")
    out = _run(tmp_path, "import helper_mod\ndef test_a():\n    pass\n", ci=False)
    assert out.returncode != 0 and "broken on purpose" in out.stdout
