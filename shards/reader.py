"""The one reader of a `tsa preprocess` output (SPEC section 4), for `tsa train` and `tsa view`.

`open_output(location)` opens a local folder or an `s3://`/`gs://` prefix (shards/storage.py):
it parses `dataset.json` and lists `shards/` once (names and sizes). Only complete shards
(those with a `.json` done marker) are ever read. A sample is read at the byte offsets its
shard's marker records, with one ranged read per run of neighbouring members, and the 512-byte
tar header in front of each member must name that member with the recorded size, so a tar
rewritten behind its marker is caught rather than misread. `check_sizes()` compares every
shard's size with the end of the last member its marker records, so a shard truncated after
preprocessing is found before any sample is read.
"""
from __future__ import annotations

import difflib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from tsa.shards.layout import DATASET_JSON, MANIFEST, SHARDS_DIR, shard_name
from tsa.shards.storage import (NotFound, Store, StorageError, basename, is_url, join, open_store, ranges_for,
                              resolve)

# Members of one sample closer than this are fetched in one read (the bytes between are
# small members the caller did not ask for, e.g. motion.npy between teacher.npy and mask.npy).
MERGE_GAP = 256 * 1024


class NotAnOutput(FileNotFoundError):
    """The folder is not a `tsa preprocess` output."""


class DataError(RuntimeError):
    """A shard or sample cannot be used; the message names the shard and the key."""


class NotUsable(ValueError):
    """dataset.json lacks what a reader needs, or has another format version."""


# What `tsa train` and `tsa view` need from dataset.json before reading any shard.
REQUIRED_KEYS = ["format_version", "geometry", "latents", "teacher_dtype", "mask_ratio", "members"]


def read_markers(store: Store, shards_dir: str, shards: Sequence[int],
                 parse: Optional[Callable[[int, bytes], dict[str, Any]]] = None,
                 chunk: int = 256) -> Iterator[tuple[int, dict[str, Any]]]:
    """(shard, marker) for `shards` in the given order, read from `shards_dir` `chunk` at a time
    (a bucket's concurrently) and not kept: memory holds one chunk, whatever the output's size.
    `parse(shard, raw)`: how a marker is read (default: plain JSON)."""
    for a in range(0, len(shards), chunk):
        ids = shards[a:a + chunk]
        raws = store.read_many([join(shards_dir, f"{shard_name(s)}.json") for s in ids])
        for s, raw in zip(ids, raws):
            yield s, parse(s, raw) if parse is not None else json.loads(raw)


@dataclass(frozen=True)
class SampleRef:
    """One sample of a complete shard: where its members are, from the shard's marker."""

    shard: str  # tar location (path or URL)
    key: str
    entry: tuple[tuple[str, int, int], ...]  # (member, offset, size) from the marker

    def member(self, name: str) -> Optional[tuple[int, int]]:
        for n, off, size in self.entry:
            if n == name:
                return off, size
        return None


def _header_name(member: str) -> str:
    # What tarfile's PAX writer puts in the ustar name field: ASCII, at most 100 bytes.
    return member.encode("ascii", "replace")[:tarfile.LENGTH_NAME].decode("ascii")


def read_entry(store: Store, ref: SampleRef, names: Optional[Sequence[str]] = None) -> dict[str, bytes]:
    """Raw bytes of the members `names` (default: all) of one sample, each checked against the
    tar header in front of it. Raises DataError naming the shard, the key and the member."""
    where = f"{basename(ref.shard)}: sample {ref.key!r}"
    wanted = list(names) if names is not None else [n for n, _, _ in ref.entry]
    spans = {}
    for name in wanted:
        span = ref.member(name)
        if span is None:
            raise DataError(f"{where} has no member {name}")
        spans[name] = span
    if not spans:
        return {}
    blocks = ranges_for([(off - tarfile.BLOCKSIZE, off + size) for off, size in spans.values()], MERGE_GAP)
    try:
        data = store.read_ranges(ref.shard, blocks)
    except StorageError as e:
        raise DataError(f"{where}: {e}") from None
    out = {}
    for name in wanted:
        offset, size = spans[name]
        start = offset - tarfile.BLOCKSIZE
        i = next(i for i, (s, e) in enumerate(blocks) if s <= start and offset + size <= e)
        block = data[i][start - blocks[i][0]:offset + size - blocks[i][0]]
        if len(block) < tarfile.BLOCKSIZE + size:
            got = blocks[i][0] + len(data[i])
            raise DataError(f"{where} member {name}: shard is truncated (member ends at byte {offset + size}, "
                            f"the shard ends at byte {got})")
        try:
            header = tarfile.TarInfo.frombuf(block[:tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
        except tarfile.TarError as e:
            raise DataError(f"{where} member {name}: no tar header at the marker's offset ({e})") from None
        if header.name != _header_name(f"{ref.key}.{name}") or header.size != size:
            raise DataError(f"{where} member {name}: the tar holds {header.name!r} ({header.size} bytes) at "
                            f"the marker's offset; the tar does not match its .json marker")
        out[name] = block[tarfile.BLOCKSIZE:]
    return out


def decode_member(name: str, data: bytes) -> Any:
    """.npy -> np.ndarray (allow_pickle=False), .json -> dict, anything else -> bytes."""
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if name.endswith(".json"):
        return json.loads(data)
    return data


def marker_end(marker: dict[str, Any]) -> int:
    """The byte where the last member recorded in a marker ends: the least size of its tar."""
    return max((int(off) + int(size) for entry in marker["index"].values() for off, size in entry.values()),
               default=0)


class OutputInfo:
    """An opened preprocess output. `root` is the resolved location (absolute path or URL);
    markers and the manifest are read when first needed, then kept."""

    def __init__(self, location: str | Path, list_shards: bool = True):
        """`list_shards=False` (a worker told which shard holds each key) skips the listing of
        shards/: `shard_ids` stays empty and samples are read with `read_sample(..., shard=)`."""
        self.root = resolve(location)
        self.store = open_store(self.root)
        ds = join(self.root, DATASET_JSON)
        try:
            raw = self.store.read_bytes(ds)
        except NotFound as e:
            why = str(e) if is_url(self.root) else f"no {DATASET_JSON}"  # a URL's may be: no such bucket
            raise NotAnOutput(f"{self.root} is not a tsa preprocess output ({why})") from None
        try:
            self.dataset: dict[str, Any] = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NotAnOutput(f"{ds}: not valid JSON ({e})") from None
        listing = self.store.list_sizes(join(self.root, SHARDS_DIR)) if list_shards else {}
        self.shard_ids: list[int] = []
        self.tar_sizes: dict[int, int] = {}
        for name in sorted(listing):
            if name.startswith("shard-") and name.endswith(".json") and name[:-5] + ".tar" in listing:
                try:
                    shard = int(name[len("shard-"):-5])
                except ValueError:
                    continue
                self.shard_ids.append(shard)
                self.tar_sizes[shard] = listing[name[:-5] + ".tar"]
        self._markers: dict[int, dict[str, Any]] = {}
        self._manifest: Any = None
        self._manifest_read = False
        self._lookup: Optional[dict[str, tuple[str, Optional[str], Optional[int]]]] = None

    def where(self, *parts: str) -> str:
        """The location of a file of the output, for messages."""
        return join(self.root, *parts)

    def tar(self, shard: int) -> str:
        return join(self.root, SHARDS_DIR, f"{shard_name(shard)}.tar")

    @property
    def shards(self) -> list[str]:
        """Complete shard tars, in shard order."""
        return [self.tar(s) for s in self.shard_ids]

    # -- markers ---------------------------------------------------------------------------
    def _parse_marker(self, shard: int, raw: bytes) -> dict[str, Any]:
        path = join(self.root, SHARDS_DIR, f"{shard_name(shard)}.json")
        try:
            marker = json.loads(raw)
            if not isinstance(marker.get("index"), dict) or not isinstance(marker.get("rows"), list):
                raise KeyError("index or rows")
            for entry in marker["index"].values():
                for off, size in entry.values():
                    int(off), int(size)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: unreadable shard marker ({type(e).__name__}: {e})") from None
        return marker

    def load_markers(self) -> list[dict[str, Any]]:
        """Every complete shard's marker, in shard order (remote ones fetched concurrently)."""
        missing = [s for s in self.shard_ids if s not in self._markers]
        self._markers.update(read_markers(self.store, join(self.root, SHARDS_DIR), missing, self._parse_marker,
                                          chunk=max(1, len(missing))))
        return [self._markers[s] for s in self.shard_ids]

    def marker(self, shard: int) -> dict[str, Any]:
        if shard not in self._markers:
            path = join(self.root, SHARDS_DIR, f"{shard_name(shard)}.json")
            self._markers[shard] = self._parse_marker(shard, self.store.read_bytes(path))
        return self._markers[shard]

    def refs(self, shard: int, marker: Optional[dict[str, Any]] = None) -> tuple[SampleRef, ...]:
        """The samples of one complete shard, in marker order (`marker`: the shard's, if at hand)."""
        tar = self.tar(shard)
        index = (marker if marker is not None else self.marker(shard))["index"]
        return tuple(SampleRef(tar, key, tuple((name, int(off), int(size)) for name, (off, size) in entry.items()))
                     for key, entry in index.items())

    def iter_markers(self, chunk: int = 256) -> Iterator[tuple[int, dict[str, Any]]]:
        """(shard, marker) of every complete shard in order, read `chunk` at a time (a bucket's
        concurrently) and not kept: memory holds one chunk of markers, whatever the output's size."""
        for a in range(0, len(self.shard_ids), chunk):
            ids = self.shard_ids[a:a + chunk]
            got = dict(read_markers(self.store, join(self.root, SHARDS_DIR), [s for s in ids if s not in self._markers],
                                    self._parse_marker, chunk))
            for s in ids:
                yield s, got[s] if s in got else self._markers[s]

    def check_sizes(self, visit: Optional[Callable[[int, dict[str, Any]], None]] = None) -> None:
        """DataError naming every shard whose tar is shorter than the end of the last member its
        marker records (one listing gave all sizes; the markers are streamed, not kept).
        `visit(shard, marker)` sees every marker on the way (the trainer takes its samples)."""
        short = []
        for s, marker in self.iter_markers():
            end = marker_end(marker)
            if self.tar_sizes[s] < end:
                short.append((s, self.tar_sizes[s], end))
            if visit is not None:
                visit(s, marker)
        if short:
            lines = [f"{self.tar(s)}: {size} bytes, but its marker {shard_name(s)}.json records members up to "
                     f"byte {end}" for s, size, end in short[:10]]
            more = f" (and {len(short) - 10} more)" if len(short) > 10 else ""
            raise DataError(f"{len(short)} truncated shard(s){more}: " + "; ".join(lines) +
                            ". Copy the shard again, or delete its .tar and .json and run the same "
                            "`tsa preprocess` command to write it again (docs/storage.md)")

    def check_usable(self, visit: Optional[Callable[[int, dict[str, Any]], None]] = None) -> None:
        """The up-front check of `tsa train` and `tsa view`: dataset.json has the keys readers
        need and this format version (NotUsable), and no complete shard is shorter than its
        marker says (DataError, `check_sizes`)."""
        from tsa.shards.layout import FORMAT_VERSION

        ds = self.where(DATASET_JSON)
        missing = [k for k in REQUIRED_KEYS if k not in self.dataset]
        if missing:
            raise NotUsable(f"{ds}: missing key(s) {', '.join(missing)}")
        if self.dataset["format_version"] != FORMAT_VERSION:
            raise NotUsable(f"{ds}: format_version={self.dataset['format_version']}, this version of tsa reads "
                            f"format_version={FORMAT_VERSION}")
        self.check_sizes(visit)

    # -- manifest, rows, keys -----------------------------------------------------------------
    @property
    def manifest(self) -> Optional[Any]:
        """pyarrow.Table of manifest.parquet (None while a run is going)."""
        if not self._manifest_read:
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                raw = self.store.read_bytes(self.where(MANIFEST))
            except NotFound:
                raw = None
            self._manifest = pq.read_table(pa.BufferReader(raw)) if raw is not None else None
            self._manifest_read = True
        return self._manifest

    def rows(self) -> list[dict[str, Any]]:
        """Manifest rows (from manifest.parquet, or from the shard markers if it is not written yet)."""
        if self.manifest is not None:
            return self.manifest.to_pylist()
        return [r for m in self.load_markers() for r in m["rows"]]

    def _key_shards(self) -> list[tuple[str, int]]:
        return [(r["key"], m["shard"]) for m in self.load_markers() for r in m["rows"] if r["status"] == "ok"]

    @property
    def keys(self) -> list[str]:
        """Keys of the readable samples, in input order."""
        return [k for k, _ in self._key_shards()]

    def _shard_for_key(self, key: str) -> int:
        if self.manifest is not None:
            if self._lookup is None:
                t = self.manifest.select(["key", "status", "error", "shard"]).to_pydict()
                self._lookup = {k: (s, e, sh) for k, s, e, sh in zip(t["key"], t["status"], t["error"], t["shard"])}
            hit = self._lookup.get(key)
            if hit is not None:
                status, error, shard = hit
                if status != "ok":
                    raise KeyError(f"{key!r} is a {status} clip in {self.root}: {error}")
                return int(shard)
            known = list(self._lookup)
        else:
            for m in self.load_markers():
                if key in m["index"]:
                    return int(m["shard"])
                for r in m["rows"]:
                    if r["key"] == key:
                        raise KeyError(f"{key!r} is a {r['status']} clip in {self.root}: {r['error']}")
            known = self.keys
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise KeyError(f"no sample {key!r} in {self.root}{hint}")

    def ref(self, key: str, shard: Optional[int] = None) -> SampleRef:
        """The sample `key`; `shard` when the caller knows it (no manifest lookup, no listing)."""
        if shard is None:
            shard = self._shard_for_key(key)
            if shard not in self.tar_sizes:
                raise KeyError(f"{key!r}: its shard {shard_name(shard)}.tar is not complete in {self.root}")
        entry = self.marker(shard)["index"].get(key)
        if entry is None:
            raise KeyError(f"{key!r}: not in the index of {shard_name(shard)}.tar in {self.root}")
        return SampleRef(self.tar(shard), key, tuple((n, int(o), int(s)) for n, (o, s) in entry.items()))

    def read_sample(self, key: str, names: Optional[list[str]] = None, decode: bool = True,
                    shard: Optional[int] = None) -> dict[str, Any]:
        """Member name -> decoded value for one sample (np.ndarray for .npy, dict for .json, bytes
        for .jpg). `names` limits which members are read; members the sample lacks are left out.
        Unknown key: KeyError with close matches; a damaged shard: DataError. `shard`: the
        sample's shard when known (see `ref`)."""
        ref = self.ref(key, shard)
        present = [n for n, _, _ in ref.entry if names is None or n in names]
        raw = read_entry(self.store, ref, present)
        return {n: decode_member(n, b) for n, b in raw.items()} if decode else raw

    def close(self) -> None:
        self.store.close()


def open_output(out: str | Path) -> OutputInfo:
    return OutputInfo(out)


def iter_shard_paths(out: str | Path) -> Iterator[Path]:
    """Complete shard tars of a local output (those whose `.json` done marker exists), in order."""
    d = Path(out) / SHARDS_DIR
    if not d.is_dir():
        return
    for marker in sorted(d.glob("shard-*.json")):
        tar = marker.with_suffix(".tar")
        if tar.is_file():
            yield tar


def read_marker(out: str | Path, shard: int) -> dict[str, Any]:
    """One shard's marker, read now."""
    store = open_store(out)
    path = join(store.root, SHARDS_DIR, f"{shard_name(shard)}.json")
    return json.loads(store.read_bytes(path))


def read_members(tar_path: str | Path, entry: dict[str, list[int]], names: Optional[list[str]] = None,
                 decode: bool = True, key: Optional[str] = None) -> dict[str, Any]:
    """Read members of one sample by their recorded [offset, size] in `tar_path`, with the same
    header checks as training. Without `key` it is taken from the first member's tar header."""
    tar = resolve(tar_path)
    store = open_store(tar)
    try:
        if key is None and entry:
            off = min(int(o) for o, _ in entry.values())
            head = store.read_ranges(tar, [(off - tarfile.BLOCKSIZE, off)])[0]
            try:
                hname = tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape").name
            except tarfile.TarError as e:
                raise DataError(f"{basename(tar)}: no tar header at the marker's offset {off} ({e})") from None
            key = hname.split(".", 1)[0]  # keys hold no dots (layout.base_key); a long name is cut at 100
        ref = SampleRef(tar, key or "", tuple((n, int(o), int(s)) for n, (o, s) in entry.items()))
        wanted = [n for n in entry if names is None or n in names]
        raw = read_entry(store, ref, wanted)
    finally:
        store.close()
    return {n: decode_member(n, b) for n, b in raw.items()} if decode else raw


def read_sample(out: str | Path, key: str, names: Optional[list[str]] = None) -> dict[str, Any]:
    """`open_output(out).read_sample(key, names)`."""
    info = open_output(out)
    try:
        return info.read_sample(key, names)
    finally:
        info.close()
