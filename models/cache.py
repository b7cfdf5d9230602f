"""$TSA_CACHE (default ~/.cache/tsa): the tiny models' folder and the weight-hash cache, and the
streaming sha256 of weight files and folders that dataset.json records."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TSA_CACHE", Path.home() / ".cache" / "tsa"))


_BIG = 64 << 20  # files above this size have their hash cached (T5-XXL is ~10 GB: ~20 s to hash)


def _hash_cache_path() -> Path:
    return cache_root() / "sha256_cache.json"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file; for big files remembered per (path, size, mtime) in $TSA_CACHE, so a
    resumed run does not hash the weights again."""
    path = Path(path).resolve()
    st = path.stat()
    tag = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _hash_cache_path()
    cache: dict[str, str] = {}
    if st.st_size > _BIG and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (json.JSONDecodeError, OSError):
            cache = {}
        if tag in cache:
            return cache[tag]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    if st.st_size > _BIG:
        cache[tag] = digest
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(cache_file.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, sort_keys=True))
            os.replace(tmp, cache_file)
        except OSError:  # a read-only cache only costs time
            pass
    return digest


def folder_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no files to hash")
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
