"""Where an image lands in the cache: its frame (the size the source computed at) and the canvas.

Every array of a cache has one fixed per-image shape, the *canvas*: `short x long` frame pixels
in landscape orientation, `short` = the network input's short side (518 for DAv2 at 518) and
`long` = `short * CANVAS_ASPECT` (1036). An image is computed at its *frame*: the official
network input size (short side `input_size`, sides multiples of 14) or, for the `files` source,
its own size. Portrait frames are stored transposed, so one landscape canvas holds both
orientations; a frame that does not fit (aspect above 2, or a `files` map larger than the
canvas) is scaled down to fit, keeping its aspect. Every map is stored at the top-left of its
canvas grid; the rest is zero padding (compressed to almost nothing). The per-image `Geometry`
records all of it, so the reader crops each map back to exactly the image's extent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Canvas:
    """The fixed per-image area in frame pixels, landscape: `short <= long`."""

    short: int
    long: int


def make_canvas(short_side: int, aspect: float, multiple_of: int = 1) -> Canvas:
    """Canvas whose short side is `short_side` and long side `aspect` times it (rounded up to `multiple_of`)."""
    long = math.ceil(short_side * aspect / multiple_of) * multiple_of
    return Canvas(short=int(short_side), long=int(long))


@dataclass(frozen=True)
class Geometry:
    """How one image maps to its stored maps.

    orig_size: (H, W) of the image; frame_size: (h, w) the source computed at (image orientation);
    transposed: stored as (w, h); extents: map name -> (gh, gw) grid of that map for this image,
    in image orientation (the reader crops `[:gh, :gw]` of the stored grid, transposed back)."""

    orig_size: tuple[int, int]
    frame_size: tuple[int, int]
    transposed: bool
    extents: dict[str, tuple[int, int]]

    def to_json(self, names: list[str]) -> list:
        """Compact list form for the shard markers (names fix the order of `extents`)."""
        return [*self.orig_size, *self.frame_size, int(self.transposed), [list(self.extents[n]) for n in names]]

    @classmethod
    def from_json(cls, data: list, names: list[str]) -> Geometry:
        h, w, fh, fw, tr, ext = data
        extents = {n: (int(a), int(b)) for n, (a, b) in zip(names, ext, strict=True)}
        return cls((int(h), int(w)), (int(fh), int(fw)), bool(tr), extents)


def fit_frame(frame: tuple[int, int], canvas: Canvas, multiple_of: int = 1) -> tuple[tuple[int, int], bool]:
    """The frame actually used (scaled down to fit the canvas if needed) and whether it is stored transposed."""
    h, w = frame
    transposed = h > w
    short, long = (w, h) if transposed else (h, w)
    if short > canvas.short or long > canvas.long:
        scale = min(canvas.short / short, canvas.long / long)
        short = max(multiple_of, math.floor(short * scale / multiple_of) * multiple_of)
        long = max(multiple_of, math.floor(long * scale / multiple_of) * multiple_of)
    return ((long, short) if transposed else (short, long)), transposed


def grid_for_stride(size: tuple[int, int], stride: float) -> tuple[int, int]:
    """Grid of a map at `stride` over a `size` area: ceil of each side over the stride."""
    return math.ceil(size[0] / stride - 1e-9), math.ceil(size[1] / stride - 1e-9)
