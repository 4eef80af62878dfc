"""Image decoding for the precompute job, chosen by `depth.cache.decode`.

- `torchvision` (default): a JPEG (recognised by its magic bytes, not its name) is decoded by
  `torchvision.io.decode_jpeg` on the host, in the DataLoader workers (libjpeg-turbo); PNG and every
  other format, any JPEG that torchvision refuses (e.g. a truncated file) and any JPEG that carries an
  EXIF rotation (the one decoder, `images.decode_rgb`, applies it) go through PIL.
- `pil`: every image through PIL in the workers (the reference path).
- `nvjpeg`: as `torchvision`, but the workers only read a JPEG's bytes (`EncodedImage`) and the main
  process decodes a whole batch on the estimator's GPU in one call, so decoding needs neither host
  cores nor a host-to-device copy of pixels. Needs a CUDA estimator.

The cached depth must not depend on the host: `torchvision` and `pil` give identical pixels (both
libjpeg-turbo, islow IDCT, fancy upsampling; measured: 0 differing values over baseline JPEGs at quality
75/95, 4:4:4 and 4:2:0, greyscale and CMYK; tests/depth_cache/test_decode.py asserts it), on a GPU host as
on a CPU host, so they share a cache key. nvjpeg rounds differently (on an H200: up to 39 levels, 90 % of
values differ), so `nvjpeg` is a cache key field (`jpeg_decoder`) and its caches are never mixed with the
others. `bench cache` prints how far the pixels, depth and features of two decodes are apart.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from dgseg.depth_cache.images import decode_image, to_rgb_array
from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"
DECODERS = ("torchvision", "pil", "nvjpeg")


@dataclass
class EncodedImage:
    """A JPEG file's bytes, read in a worker, to be decoded in a batch on the estimator's device."""

    data: torch.Tensor  # (n,) uint8
    path: str


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise OSError(f"{path}: cannot read image ({err})") from err


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def decode_pil_bytes(data: bytes, path: str) -> torch.Tensor:
    """(3, H, W) uint8 RGB by PIL, exactly as `images.decode_image` decodes the file."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.array(to_rgb_array(im, path), copy=True)
    except Exception as err:  # PIL raises many types for corrupt files
        raise OSError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _plain_orientation(data: bytes) -> bool:
    """Whether the JPEG needs no EXIF rotation (nvjpeg ignores EXIF; `images.decode_rgb` applies it)."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only
            return im.getexif().get(0x0112, 1) in (0, 1)
    except Exception:  # unreadable header: torchvision tries, then PIL names the error
        return True


def _decode_jpeg(data: torch.Tensor | list[torch.Tensor], device: torch.device | str):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision >= 0.29 points to torchcodec (not a dependency here); decode_jpeg still works
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def load_image(path: str, decoder: str = "torchvision", defer_jpeg: bool = False) -> torch.Tensor | EncodedImage:
    """Worker side: the decoded (3, H, W) uint8 image, or with `defer_jpeg` (the `nvjpeg` decoder's data flow)
    a JPEG's bytes to decode later in a batch."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown image decoder {decoder!r}; expected one of {DECODERS}")
    if decoder == "pil":
        return decode_image(path)
    data = read_file(path)
    if not is_jpeg(data) or not _plain_orientation(data):
        return decode_pil_bytes(data, path)
    if defer_jpeg:
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), path)
    try:
        return _decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), "cpu")
    except RuntimeError:  # a JPEG libjpeg-turbo via torchvision refuses: PIL decides (and names the error)
        return decode_pil_bytes(data, path)


def decode_batch(images: list[torch.Tensor | EncodedImage], device: torch.device) -> list[torch.Tensor | Exception]:
    """Decoded images on `device` (uint8 (3, H, W)), or the error of one that cannot be decoded.

    Encoded JPEGs are decoded together in one call on `device`; when that call fails (one bad file
    fails the whole batch), each is retried alone, then through PIL on the host. Images already
    decoded (PIL in the workers) are copied to `device` without blocking (pinned by the loader)."""
    out: list[torch.Tensor | Exception | None] = [None] * len(images)
    enc = [i for i, x in enumerate(images) if isinstance(x, EncodedImage)]
    for i, x in enumerate(images):
        if not isinstance(x, EncodedImage):
            out[i] = x.to(device, non_blocking=True)
    if enc:
        try:
            decoded = _decode_jpeg([images[i].data for i in enc], device)
        except RuntimeError:
            decoded = [_decode_one(images[i], device) for i in enc]
        for i, img in zip(enc, decoded, strict=True):
            out[i] = img
    return out  # type: ignore[return-value]


def _decode_one(img: EncodedImage, device: torch.device) -> torch.Tensor | Exception:
    try:
        return _decode_jpeg(img.data, device)
    except RuntimeError:
        try:
            return decode_pil_bytes(img.data.numpy().tobytes(), img.path).to(device)
        except OSError as err:
            return err


def default_workers(device: torch.device | str, world_size: int = 1, cores: int | None = None) -> int:
    """Decoding workers per process when `depth.cache.num_workers` is not set.

    On CUDA the GPU decodes JPEGs and the workers mostly read files, but PNGs (and the `pil`
    decoder) still decode there: all cores of this process's share but one (the main process feeds
    the GPU), at most 16. On a CPU the estimator needs cores as much as decoding: half the share."""
    cores = cores or os.cpu_count() or 1
    share = max(1, cores // max(1, world_size))
    if torch.device(device).type == "cuda":
        return max(1, min(16, share - 1))
    return max(1, share // 2)
