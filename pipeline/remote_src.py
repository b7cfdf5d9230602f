"""`tsa preprocess --src s3://bucket/openvid/` (or `gs://`): inputs in a bucket.

The CSV files (`SRC/*.csv`, else OpenVid's `SRC/data/train/*.csv`) are downloaded to a local
temporary folder and read as local ones; --subset, --where, --sample and --limit select rows
before any clip is touched. The selected `video` names are then looked up in one recursive
listing of each candidate folder (`SRC/videos/`, `SRC/video/`, `SRC/`: the first that has the
name), so a missing clip is a `failed` row "file not found" as locally, without one request
per clip. Each decode worker fetches its clip to a local temporary file (decord needs a local
file) and deletes it after decoding (`local_copy`).

Only the CSV layout is supported in a bucket (a folder of clips with .txt captions, `--csv`
and `--videos` are local options).
"""
from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

from tsa.pipeline.csv_table import CsvError
from tsa.pipeline.selection import SelectionError
from tsa.pipeline.sources import (OUTSIDE, Layout, Selection, SourceError, _check_found, _csv_entries, _escapes,
                                  _items, _openvid_pair, _read_subset, describe)
from tsa.shards.storage import RemoteStore, StorageError, _filesystem_class, is_url, resolve

_STORES: dict[str, RemoteStore] = {}  # scheme -> store, per process (a decode worker keeps its filesystem)


def _store(url: str) -> RemoteStore:
    scheme = url.split("://", 1)[0].lower()
    store = _STORES.get(scheme)
    if store is None:
        _filesystem_class(scheme, url)  # MissingExtra: one line naming the extra
        store = _STORES[scheme] = RemoteStore(url)
    return store


def _list_csvs(store: RemoteStore, url: str) -> list[str]:
    """SRC/*.csv, else SRC/data/train/*.csv; OpenVidHD.csv dropped next to OpenVid-1M.csv (as locally)."""
    for folder in (url, posixpath.join(url, "data", "train")):
        names = sorted(n for n in store.list_sizes(folder) if n.lower().endswith(".csv"))
        if names:
            kept, _ = _openvid_pair([PurePosixPath(n) for n in names])
            return [posixpath.join(folder, p.name) for p in kept]
    return []


def select_remote_inputs(src: str, subset, limit, *, csvs, videos, where, sample, seed):
    """`pipeline.inputs.select_inputs` for a `--src` URL (same arguments, same Selection)."""

    url = resolve(src)
    if csvs or videos:
        raise SourceError(f"--src {url}: --csv and --videos are local options; with a bucket --src the CSVs are "
                          f"found in it (SRC/*.csv or SRC/data/train/*.csv)")
    try:
        store = _store(url)
        found = _list_csvs(store, url)
    except StorageError as e:
        raise SourceError(f"--src {url}: {e}") from None
    if not found:
        raise SourceError(f"--src {url}: no *.csv in it nor in data/train/ (in a bucket, --src needs CSV files "
                          f"with video and caption columns)")
    dirs = [posixpath.join(url, "videos"), posixpath.join(url, "video"), url]
    tmp = Path(tempfile.mkdtemp(prefix="tsa-src-csv-"))
    try:
        local = []
        for i, csv_url in enumerate(found):
            path = tmp / f"{i:04d}" / posixpath.basename(csv_url)  # the name shows in error messages
            path.parent.mkdir()
            path.write_bytes(store.read_bytes(csv_url))
            local.append(path)
        layout = Layout(local, dirs)  # video_dirs hold URLs here; `resolver` looks them up
        keep = _read_subset(subset) if subset is not None else None
        seed = 0 if seed is None else seed
        where = list(where or [])
        entries = _csv_entries(layout, keep, where, sample, seed, limit, resolver=_Resolver(store, dirs))
        _check_found(entries, layout)
    except (CsvError, SelectionError) as e:
        raise SourceError(str(e)) from None
    except StorageError as e:
        raise SourceError(f"--src {url}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    chosen_by = describe(where, sample, seed) if (where or sample is not None) else None
    return Selection(_items(entries), url, chosen_by)


class _Resolver:
    """resolve_clip for folders in a bucket: one recursive listing per folder, on first use."""

    def __init__(self, store: RemoteStore, dirs: list[str]):
        self.store, self.dirs = store, dirs
        self.names: dict[str, set[str]] = {}

    def _names(self, folder: str) -> set[str]:
        if folder not in self.names:
            key = self.store._key(folder).rstrip("/") + "/"
            try:
                found = self.store.fs.find(key)
            except FileNotFoundError:
                found = []
            except Exception as e:  # noqa: BLE001
                raise self.store._error(folder, e) from None
            self.names[folder] = {f[len(key):] for f in found if f.startswith(key)}
        return self.names[folder]

    def __call__(self, dirs: Any, video: str) -> tuple[str, Optional[str]]:
        if _escapes(video):
            return "", f"{OUTSIDE}: {video}"
        tried = []
        for d in self.dirs:
            path = posixpath.join(d, video)
            if video in self._names(d):
                return path, None
            tried.append(path)
        return tried[0], f"file not found: tried {', '.join(tried)}"


@contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file for `path`: itself, or for a URL a temporary copy deleted on exit. A fetch
    that fails raises DecodeError (a failed row naming the URL)."""
    if not is_url(path):
        yield path
        return
    from tsa.pipeline.decode import DecodeError

    fd, tmp = tempfile.mkstemp(prefix="tsa-clip-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        store = _store(path)
        try:
            store.fs.get_file(store._key(path), tmp)
        except Exception as e:  # noqa: BLE001 (one clip's problem: a failed row)
            raise DecodeError(f"cannot fetch: {store._error(path, e)}") from None
        yield tmp
    finally:
        os.unlink(tmp)
