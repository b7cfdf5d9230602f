"""Cut the `preview.jpg` sprite (SPEC section 4) into its per-time-slot tiles."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from tsa.view.maps import ViewError


def preview_tile_size(teacher_input: tuple[int, int, int]) -> tuple[int, int]:
    """(h, w) of one preview tile: half the teacher input size, e.g. (80, 120)."""
    _, h, w = teacher_input
    return (h // 2, w // 2)


def split_preview(jpeg: bytes, n_tiles: int, tile_hw: tuple[int, int], where: str = "preview.jpg") -> np.ndarray:
    """Tiles [F, h, w, 3] uint8 of a sprite laid out row-major in time, as many tiles a row
    as fit its width. `where` names the sample in errors."""
    try:
        sprite = Image.open(io.BytesIO(jpeg))
        sprite = np.asarray(sprite.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ViewError(f"{where}: not a readable JPEG ({e})") from None
    th, tw = tile_hw
    cols = sprite.shape[1] // tw
    rows = -(-n_tiles // cols) if cols else 0
    if cols == 0 or sprite.shape[0] < rows * th:
        raise ViewError(f"{where}: sprite is {sprite.shape[1]}x{sprite.shape[0]} pixels, too small for "
                        f"{n_tiles} tiles of {tw}x{th}")
    tiles = [sprite[(i // cols) * th:(i // cols + 1) * th, (i % cols) * tw:(i % cols + 1) * tw]
             for i in range(n_tiles)]
    return np.stack(tiles)
