"""`tsa preprocess --out s3://bucket/prefix` (or `gs://`, or any URL fsspec knows).

An object store has no rename, so the commit point of a shard is its marker's existence:

    build the shard in a local staging folder exactly as for a local --out
    -> put the complete tar (one upload: an object appears only when its upload completes)
    -> put the `.json` marker (the commit) -> delete the local tar

A tar without its marker is garbage: the next run deletes it and writes that shard again.
Replacing a finished shard (`--retry-failed`) deletes its marker first, so a kill midway
leaves a tar without a marker, which the next run redoes in full (as on local disk).
`dataset.json` goes up before any shard; `subset.txt`, `manifest.parquet` and `masks.h5` are
uploaded whole after the last shard.

The staging folder (`DIR/tsa-staging-<hash of the URL>` for `--staging DIR`, default DIR: $TMPDIR) is
emptied at the start of each run and holds dataset.json, then manifest.parquet and masks.h5
before their upload; the shards are assembled by the writer actors (pipeline/writers.py), each
in `writer-<n>/` under the same folder name on its own node, with their spill files; each tar is
deleted once uploaded, and the folders are removed when the run ends. `--retry-failed` copies the kept rows of
a rebuilt shard from its tar in the bucket with ranged GETs (no tar is downloaded whole).
"""
from __future__ import annotations

import hashlib
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from tsa.shards.layout import DATASET_JSON, MANIFEST, MASKS, SHARDS_DIR, SUBSET_FILE, TMP_SUFFIX, shard_name
from tsa.shards.storage import RemoteStore, StorageError, _filesystem_class, resolve


class RemoteOutputError(RuntimeError):
    """The bucket cannot be used (missing, access denied, backend missing); names the URL."""


def staging_folder(url: str, parent: Optional[str | Path] = None) -> Path:
    """`<parent>/tsa-staging-<hash of the URL>` (parent: $TMPDIR by default): our own subfolder,
    since it is emptied at the start of a run."""
    base = Path(parent).expanduser().resolve() if parent else Path(tempfile.gettempdir())
    return base / f"tsa-staging-{hashlib.sha1(url.encode()).hexdigest()[:12]}"


class RemoteOutput:
    """The bucket side of a preprocess output at `url`, with its local staging folder."""

    def __init__(self, url: str, staging: Optional[str | Path] = None):
        self.url = resolve(url)
        self.staging_parent = str(staging) if staging is not None else None  # --staging, for the writers
        self.staging = staging_folder(self.url, staging)
        try:
            self.store = RemoteStore(self.url)
            _filesystem_class(self.store.scheme, self.url)
        except StorageError as e:  # MissingExtra: one line naming `pip install 'tsa[s3]'`
            raise RemoteOutputError(str(e)) from None
        self.listing: dict[str, int] = {}  # shards/ name -> size, as found at the start

    # -- locations ---------------------------------------------------------------------------
    def where(self, *parts: str) -> str:
        return posixpath.join(self.url, *parts)

    def _key(self, location: str) -> str:
        return self.store._key(location)

    def _fail(self, location: str, e: BaseException) -> RemoteOutputError:
        err = e if isinstance(e, StorageError) else self.store._error(location, e)
        return RemoteOutputError(f"--out {self.url}: {err}")

    # -- start of a run ----------------------------------------------------------------------
    def check(self) -> None:
        """Read access to the bucket and the prefix (a missing bucket, bad credentials: one clear
        error naming the URL), before anything is written."""
        bucket = self._key(self.url).split("/", 1)[0]
        fs = self.store.fs
        try:
            fs.ls(bucket, refresh=True)
        except Exception as e:  # noqa: BLE001 (reported with the URL)
            raise self._fail(f"{self.store.scheme}://{bucket}", e) from None
        try:
            self.listing = self.store.list_sizes(self.where(SHARDS_DIR))
        except StorageError as e:
            raise self._fail(self.where(SHARDS_DIR), e) from None

    def pull(self) -> None:
        """Empty the staging folder, then fetch `dataset.json` (if any) into it. The shards' state
        is the listing taken by `check` (no marker is read: a resume needs only which shards are
        complete; `--retry-failed` and finalize read the markers they need from the bucket)."""
        if self.staging.exists():
            shutil.rmtree(self.staging)
        (self.staging / SHARDS_DIR).mkdir(parents=True)
        try:
            if self.store.fs.exists(self._key(self.where(DATASET_JSON))):
                (self.staging / DATASET_JSON).write_bytes(self.store.read_bytes(self.where(DATASET_JSON)))
        except StorageError as e:
            raise self._fail(self.url, e) from None

    def has_stray_files(self) -> bool:
        """Files under shards/ (a tar without marker counts) but no dataset.json."""
        return bool(self.listing) and not (self.staging / DATASET_JSON).exists()

    def clear(self) -> None:
        """--overwrite: delete what a previous run wrote under the prefix (our files only)."""
        names = [DATASET_JSON, MANIFEST, MASKS, SUBSET_FILE]
        names += [posixpath.join(SHARDS_DIR, n) for n in self.listing]
        self._rm([self.where(n) for n in names], missing_ok=True)
        self.listing = {}

    def remove_partial(self) -> int:
        """Delete tars without a marker and temporary names; returns how many."""
        stray = [n for n in self.listing if n.endswith(TMP_SUFFIX)
                 or (n.endswith(".tar") and n[:-len(".tar")] + ".json" not in self.listing)]
        self._rm([self.where(SHARDS_DIR, n) for n in stray], missing_ok=True)
        return len(stray)

    # -- during and at the end of a run ------------------------------------------------------
    def put_file(self, name: str) -> None:
        """Upload staging/<name> (relative, posix) whole to <url>/<name>."""
        self._put(self.staging / name, self.where(name))

    def publish(self, marker: dict[str, Any]) -> None:
        """Commit a shard that the writer has just published in staging: drop the old marker
        (a replaced shard), put the tar, put the marker (the commit), delete the local tar."""
        name = shard_name(int(marker["shard"]))
        tar = self.staging / SHARDS_DIR / f"{name}.tar"
        self._rm([self.where(SHARDS_DIR, f"{name}.json")], missing_ok=True)
        self._put(tar, self.where(SHARDS_DIR, f"{name}.tar"))
        self._put(self.staging / SHARDS_DIR / f"{name}.json", self.where(SHARDS_DIR, f"{name}.json"))
        tar.unlink()

    def cleanup(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    # -- primitives --------------------------------------------------------------------------
    def _put(self, local: Path, location: str) -> None:
        try:
            self.store.fs.put_file(str(local), self._key(location))
        except Exception as e:  # noqa: BLE001
            raise self._fail(location, e) from None

    def _rm(self, locations: list[str], missing_ok: bool = False) -> None:
        for loc in locations:
            try:
                self.store.fs.rm_file(self._key(loc))
            except FileNotFoundError:
                if not missing_ok:
                    raise self._fail(loc, FileNotFoundError(loc)) from None
            except Exception as e:  # noqa: BLE001
                raise self._fail(loc, e) from None

