"""`masks.h5` (SPEC section 4): motion maps and cached masks of every ok clip, found by key
without touching the tars."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from tsa.shards.storage import is_url
from tsa.view.maps import ViewError

if TYPE_CHECKING:
    from tsa.shards.reader import OutputInfo

MASKS_FILE = "masks.h5"
CHUNK = 4096  # rows per h5 read when scanning motion for means


class MaskAtlas:
    """Read-only view of OUT/masks.h5: `keys` [n], `motion` [n, F, H, W], `mask` [n, F, H, W]."""

    def __init__(self, path: Path, grid: tuple[int, int, int], index: bool = True):
        """`index=False` (a gallery worker, told each clip's row): the keys are not read, so
        opening costs the same for 100 or 1M clips; use `row(i, key)`."""
        import h5py

        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise ViewError(f"{self.path}: cannot open as HDF5 ({e})") from None
        for name in ("keys", "motion", "mask"):
            if name not in self._h5:
                self.close()
                raise ViewError(f"{self.path}: no dataset {name!r} (expected keys, motion, mask)")
        n = self._h5["keys"].shape[0]
        for name in ("motion", "mask"):
            shape = tuple(self._h5[name].shape)
            if shape != (n, *grid):
                self.close()
                raise ViewError(f"{self.path}: dataset {name!r} has shape {list(shape)}, expected "
                                f"[{n}, {', '.join(map(str, grid))}] (dataset.json geometry.teacher_grid)")
        keys = self._h5["keys"].asstr()[()] if n and index else []
        self.index = {str(k): i for i, k in enumerate(keys)}
        self.size = n

    @classmethod
    def open_if_present(cls, out: "OutputInfo | Path", grid: tuple[int, int, int]) -> Optional["MaskAtlas"]:
        """The atlas of a local output folder, or None while a preprocess run has not written it
        yet. An output in object storage has none: each clip's motion.npy and mask.npy come with
        the one ranged read of its sample, so fetching masks.h5 would only add requests."""
        root = out if isinstance(out, (str, Path)) else out.root  # (a Path has a .root too: "/")
        if is_url(root):
            return None
        path = Path(root) / MASKS_FILE
        return cls(path, grid) if path.is_file() else None

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def motion(self, key: str) -> np.ndarray:
        """[F, H, W] float32 motion map (Eq. 11) of one clip."""
        return self._h5["motion"][self.index[key]].astype(np.float32)

    def mask(self, key: str) -> np.ndarray:
        """[F, H, W] bool top-k mask cached at the preprocess ratio."""
        return self._h5["mask"][self.index[key]].astype(bool)

    def row(self, i: int, key: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(motion float32, mask bool) of row `i` if it holds `key`, else None."""
        if not 0 <= i < self.size or self._h5["keys"].asstr()[i] != key:
            return None
        return self._h5["motion"][i].astype(np.float32), self._h5["mask"][i].astype(bool)

    def mean_motion(self, keys: Iterable[str]) -> dict[str, float]:
        """Mean motion per clip for the given keys that the atlas holds, read in chunks."""
        wanted = sorted({self.index[k] for k in keys if k in self.index})
        inverse = {i: k for k, i in self.index.items()}
        out: dict[str, float] = {}
        motion = self._h5["motion"]
        pos = 0
        while pos < len(wanted):
            start = wanted[pos]
            block = motion[start:start + CHUNK]  # contiguous slices: h5py reads them fastest
            while pos < len(wanted) and wanted[pos] < start + CHUNK:
                i = wanted[pos]
                out[inverse[i]] = float(block[i - start].astype(np.float64).mean())
                pos += 1
        return out

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "MaskAtlas":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
