"""Tiny random-weight models for tests and the demo (no downloads possible or needed).

`models.X: tiny` in a config means: build the model from a small architecture derived
from `geometry` with a fixed seed, save it in the real on-disk layout (a diffusers pipeline
folder of the student family `models.family`, built by its adapter, plus a VideoMAEv2
checkpoint in the official key layout, or for `models.teacher.kind` dinov2 / vjepa2 a
transformers save_pretrained folder `teacher/`), and load it back through exactly the code
that loads real weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from tsa.configs.schema import Config
from tsa.models.cache import cache_root

TINY = "tiny"
TEACHER_FILE = "teacher.safetensors"
TEACHER_DIR = "teacher"  # kinds dinov2, vjepa2: a transformers save_pretrained folder


def tiny_teacher_name(cfg: Config) -> str:
    return TEACHER_DIR if cfg.models.teacher.kind in ("dinov2", "vjepa2") else TEACHER_FILE


_TOKENIZER_CORPUS = [
    "a ball rolls across the table and hits a glass of water",
    "honey pours slowly into warm milk",
    "a diver jumps from a high board into the pool with a splash",
    "a sailboat cuts through choppy sea waves under a grey sky",
    "a person throws a red frisbee to a running dog in the park",
    "two cars race side by side on a wet road at night",
    "snow falls on a quiet lake while a snowmobile drives past",
    "an archer draws a bow and releases the arrow at a target",
    "water flows from a tap into a white sink",
    "a paint roller applies a coat of brown paint to a wall",
]


_ADDED_GEOMETRY = {"student_patch_t": 1, "teacher_size": None}
_ADDED_TEACHER = {"kind": "videomaev2"}
_ADDED_TINY_STUDENT = {"use_rotary_positional_embeddings": False, "patch_bias": True,
                       "vae_scaling_factor": 1.15258426, "snr_shift_scale": 3.0}


def tiny_fingerprint(cfg: Config) -> str:
    """Hash of everything that shapes the tiny models: same config, same folder, same bytes."""
    g, m = cfg.geometry, cfg.models
    # Fields added after version 3 count only when set, so the tiny models of older configs keep
    # their folder (and dataset.json weight records) unchanged. Version 4: the tiny VAEs lost their
    # encoder resnets (models/cogvideox.py, models/wan.py), so every tiny model folder is new.
    geometry = {k: v for k, v in vars(g).items() if _ADDED_GEOMETRY.get(k, object()) != v}
    student = {k: v for k, v in vars(m.tiny_student).items() if _ADDED_TINY_STUDENT.get(k, object()) != v}
    teacher = {k: v for k, v in vars(m.teacher).items() if _ADDED_TEACHER.get(k, object()) != v}
    family = {} if m.family == "cogvideox" else {"family": m.family}
    blob = json.dumps(
        {"geometry": geometry, "tiny_student": student, "teacher": teacher | {"checkpoint": TINY},
         "seed": m.tiny_seed, "version": 4} | family,
        sort_keys=True, default=list,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tiny_vocab() -> list[tuple[str, float]]:
    """The tiny tokenizer's pieces and log-probabilities, written out rather than trained:
    `tokenizers`' UnigramTrainer is multi-threaded and gave different pieces on two machines
    (one token id apart), so text embeddings differed between caches. Specials first (T5 ids:
    pad 0, eos 1, unk 2), then every corpus word with its word-start marker, then single
    characters, each scored by how often it occurs."""
    words: dict[str, int] = {}
    chars: dict[str, int] = {}
    for line in _TOKENIZER_CORPUS:
        for word in line.split():
            words["\u2581" + word] = words.get("\u2581" + word, 0) + 1
            for ch in word:
                chars[ch] = chars.get(ch, 0) + 1
    chars["\u2581"] = sum(words.values())
    total = sum(words.values()) + sum(chars.values())
    pieces = sorted(words.items()) + sorted(chars.items())
    return ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
            + [(piece, round(math.log(n / total), 6)) for piece, n in pieces])


def build_tiny_tokenizer():
    """A T5-style unigram tokenizer from the fixed vocabulary above (pad=0, eos=1, unk=2 as in
    T5): the same token ids on every machine and every run."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram(tiny_vocab(), unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)


def build_tiny_pipeline(cfg: Config):
    """The family's pipeline (`models.family`) at tiny size, random weights from `models.tiny_seed`."""
    import torch

    from tsa.models.family import student_family

    torch.manual_seed(cfg.models.tiny_seed)
    return student_family(cfg).tiny_pipeline(cfg, build_tiny_tokenizer())


def save_tiny_models(cfg: Config, out: Path) -> Path:
    """Write the tiny pipeline (diffusers layout) and tiny teacher (official keys) to `out`."""
    from tsa.models.teacher import save_random_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_pipeline(cfg).save_pretrained(out, safe_serialization=True)
    save_random_checkpoint(cfg.models.teacher, cfg.geometry, out / tiny_teacher_name(cfg), seed=cfg.models.tiny_seed)
    return out


def materialize_tiny(cfg: Config) -> Path:
    """The cached folder of the tiny models for `cfg`, created atomically on first use."""
    final = cache_root() / "tiny" / tiny_fingerprint(cfg)
    if (final / "model_index.json").exists() and (final / tiny_teacher_name(cfg)).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        save_tiny_models(cfg, tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race: its folder is identical
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_tiny(cfg: Config) -> Config:
    """Replace every `tiny` model reference with the materialised folder (in place, returned)."""
    m = cfg.models
    names = ["student", "vae", "text_encoder", "tokenizer", "scheduler"]
    if any(getattr(m, n) == TINY for n in names) or m.teacher.checkpoint == TINY:
        root = materialize_tiny(cfg)
        for n in names:
            if getattr(m, n) == TINY:
                setattr(m, n, str(root))
        if m.teacher.checkpoint == TINY:
            m.teacher.checkpoint = str(root / tiny_teacher_name(cfg))
    return cfg
