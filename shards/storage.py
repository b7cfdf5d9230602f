"""Where a preprocess output lives: a local folder, or an object-store prefix (`s3://`, `gs://`).

`open_store(location)` gives a `Store` with the few operations the shard reader needs: read a
small file whole, read byte ranges of a large one, and list a folder with file sizes. Local
folders keep plain files (`os.pread` on cached descriptors); URLs go through fsspec with s3fs
or gcsfs (the `tsa[s3]` / `tsa[gcs]` extras), which read ranges with HTTP `Range` requests,
so reading one sample never downloads a whole tar.

Credentials and endpoints come from the standard places of each backend (`AWS_*` variables
including `AWS_ENDPOINT_URL`, `~/.aws` profiles, instance roles; `GOOGLE_APPLICATION_CREDENTIALS`,
gcloud's defaults): tsa has no settings of its own (docs/storage.md).

A store is per process: after a fork (DataLoader workers) it opens its own descriptors and
its own fsspec filesystem (an fsspec async filesystem cannot cross a fork).
"""
from __future__ import annotations

import os
import posixpath
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

# URL scheme -> (fsspec protocol, package, tsa extra)
BACKENDS = {"s3": ("s3", "s3fs", "s3"), "s3a": ("s3", "s3fs", "s3"),
            "gs": ("gcs", "gcsfs", "gcs"), "gcs": ("gcs", "gcsfs", "gcs")}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
MAX_OPEN = 16  # cached local descriptors per process


class StorageError(OSError):
    """A location cannot be read; the message names the URL or path and the reason."""


class NotFound(StorageError):
    """The file (or, for a URL, its bucket) does not exist."""


class MissingExtra(StorageError):
    """The backend of a URL is not installed (`pip install 'tsa[s3]'`)."""


def is_url(location: str | os.PathLike) -> bool:
    """True for `scheme://...` other than `file://`."""
    m = _URL.match(str(location))
    return bool(m) and m.group(1).lower() != "file"


def resolve(location: str | os.PathLike) -> str:
    """An absolute local path (`~` expanded, `file://` dropped), or the URL without a trailing
    slash. Done on the driver, so that workers with another working directory find it."""
    text = str(location)
    if is_url(text):
        scheme, rest = _URL.match(text).groups()
        return f"{scheme.lower()}://{rest.rstrip('/')}"
    if text.lower().startswith("file://"):
        text = text[len("file://"):]
    return str(Path(text).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    return posixpath.join(location, *parts) if is_url(location) else os.path.join(location, *parts)


def parent(location: str) -> str:
    return posixpath.dirname(location) if is_url(location) else os.path.dirname(location)


def basename(location: str) -> str:
    return posixpath.basename(location) if is_url(location) else os.path.basename(location)


class Store:
    """Reads under one root; every path argument is a full location (see `join`)."""

    def __init__(self, root: str):
        self.root = root

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def read_many(self, paths: Sequence[str]) -> list[bytes]:
        """Several small files (markers); remote stores fetch them concurrently."""
        return [self.read_bytes(p) for p in paths]

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Bytes [start, end) of `path` for each range; a short result means the file ends there."""
        raise NotImplementedError

    def list_sizes(self, folder: str) -> dict[str, int]:
        """File name -> size in bytes of the files directly in `folder` ({} if it is absent)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])


class LocalStore(Store):
    """Plain files; large reads with `os.pread` on a small LRU of open descriptors."""

    def __init__(self, root: str):
        super().__init__(root)
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():  # a forked child: the parent's descriptors are not ours to close
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.pop(path, None)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise StorageError(f"{path}: cannot open ({e.strerror})") from None
        self._fds[path] = fd
        while len(self._fds) > MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read_bytes(self, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{path}: not found") from None
        except OSError as e:
            raise StorageError(f"{path}: cannot read ({e.strerror or e})") from None

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        fd = self._fd(path)
        return [os.pread(fd, end - start, start) for start, end in ranges]

    def list_sizes(self, folder: str) -> dict[str, int]:
        try:
            with os.scandir(folder) as it:
                return {e.name: e.stat().st_size for e in it if e.is_file()}
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StorageError(f"{folder}: cannot list ({e.strerror})") from None

    def close(self) -> None:
        if self._pid == os.getpid():
            while self._fds:
                os.close(self._fds.popitem()[1])
        self._fds = OrderedDict()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _filesystem_class(scheme: str, url: str):
    """fsspec's class for a URL scheme; a missing backend is a one-line error naming the extra."""
    protocol, package, extra = BACKENDS.get(scheme, (scheme, None, None))
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a dependency of tsa
        raise MissingExtra(f"{url}: reading URLs needs fsspec: pip install fsspec") from None
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError:
        hint = f"pip install 'tsa[{extra}]'" if extra else f"install fsspec's backend for {scheme}://"
        raise MissingExtra(f"{url}: {scheme}:// needs {package or 'an fsspec backend'}: {hint}") from None
    except ValueError:
        raise StorageError(f"{url}: unknown storage scheme {scheme}:// (local paths, s3:// and gs:// "
                           "are supported)") from None
    return cls


_HINTS = {
    "s3": "credentials and endpoint come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
          "~/.aws, AWS_ENDPOINT_URL (docs/storage.md)",
    "gcs": "credentials come from GOOGLE_APPLICATION_CREDENTIALS or gcloud's default login (docs/storage.md)",
}


class RemoteStore(Store):
    """An fsspec filesystem (s3fs, gcsfs); ranges are concurrent `Range` requests."""

    def __init__(self, root: str):
        super().__init__(root)
        self.scheme = _URL.match(root).group(1).lower()
        self._fs = None
        self._pid = None

    @property
    def fs(self):
        if self._fs is None or self._pid != os.getpid():
            # A fresh instance: fsspec's instance cache would keep credentials read before a change.
            self._fs = _filesystem_class(self.scheme, self.root)(skip_instance_cache=True)
            self._pid = os.getpid()
        return self._fs

    def _key(self, path: str) -> str:
        return _URL.match(path).group(2)

    def _error(self, path: str, e: BaseException) -> StorageError:
        protocol = BACKENDS.get(self.scheme, (self.scheme,))[0]
        reason = str(e) or type(e).__name__
        if isinstance(e, PermissionError):
            return StorageError(f"{path}: access denied ({reason}); {_HINTS.get(protocol, '')}".rstrip("; "))
        if isinstance(e, FileNotFoundError):
            detail = "" if reason in (path, self._key(path)) else f" ({reason})"  # e.g. no such bucket
            return NotFound(f"{path}: not found{detail}")
        return StorageError(f"{path}: cannot read ({type(e).__name__}: {reason})")

    def read_bytes(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(self._key(path))
        except Exception as e:
            raise self._error(path, e) from None

    def read_many(self, paths: Sequence[str]) -> list[bytes]:
        if not paths:
            return []
        keys = [self._key(p) for p in paths]
        try:
            got = self.fs.cat(keys, on_error="return")
        except Exception as e:
            raise self._error(paths[0], e) from None
        out = []
        for p, k in zip(paths, keys):
            v = got.get(k) if isinstance(got, dict) else None
            if isinstance(v, BaseException) or v is None:
                raise self._error(p, v if isinstance(v, BaseException) else FileNotFoundError(p))
            out.append(v)
        return out

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        key = self._key(path)
        try:
            if len(ranges) == 1:
                (start, end), = ranges
                return [self.fs.cat_file(key, start=start, end=end)]
            return list(self.fs.cat_ranges([key] * len(ranges), [s for s, _ in ranges], [e for _, e in ranges]))
        except Exception as e:
            raise self._error(path, e) from None

    def list_sizes(self, folder: str) -> dict[str, int]:
        try:
            entries = self.fs.ls(self._key(folder), detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        except Exception as e:
            raise self._error(folder, e) from None
        return {posixpath.basename(e["name"].rstrip("/")): int(e["size"]) for e in entries
                if e.get("type") == "file"}

    def close(self) -> None:
        self._fs = None


def open_store(location: str | os.PathLike) -> Store:
    """The store of a resolved location (see `resolve`); checks that a URL's backend is installed."""
    root = resolve(location)
    if not is_url(root):
        return LocalStore(root)
    store = RemoteStore(root)
    _filesystem_class(store.scheme, root)  # MissingExtra / unknown scheme now, not at the first read
    return store


def ranges_for(spans: Sequence[tuple[int, int]], max_gap: int) -> list[tuple[int, int]]:
    """Merge sorted [start, end) spans whose gap is at most `max_gap` bytes: the members of one
    sample lie next to each other in its tar, so a sample is usually one request."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] <= max_gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]
