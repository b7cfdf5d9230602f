"""The tiny models are the same bytes on every machine and run (issue 10): two processes with
different caches and thread counts build them, and every file hashes the same."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = "from tsa.configs import load_config; from tsa.models.tiny import materialize_tiny; " \
        "print(materialize_tiny(load_config('tiny')))"


def _build(cache: Path, threads: str) -> Path:
    env = dict(os.environ, TSA_CACHE=str(cache), OMP_NUM_THREADS=threads, RAYON_NUM_THREADS=threads,
               TOKENIZERS_PARALLELISM="true")
    out = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return Path(out.stdout.strip().splitlines()[-1])


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_tiny_models_are_bit_identical_across_caches_and_thread_counts(tmp_path):
    a, b = _build(tmp_path / "a", "1"), _build(tmp_path / "b", "2")
    assert a.name == b.name  # the same fingerprint folder
    ha, hb = _hashes(a), _hashes(b)
    assert "tokenizer/tokenizer.json" in ha and "transformer/diffusion_pytorch_model.safetensors" in ha
    assert ha == hb


def test_tiny_tokenizer_ids_are_fixed():
    """Pinned ids: a change to the vocabulary is a change of the tiny fingerprint version."""
    from tsa.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    ids = tok("a ball rolls across the wet table quickly").input_ids
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens(ids)[:7] == ["\u2581a", "\u2581ball", "\u2581rolls", "\u2581across",
                                                  "\u2581the", "\u2581wet", "\u2581table"]
    assert ids[-1] == 1
