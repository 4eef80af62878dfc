"""Depth sources as the precompute job drives them: load in workers, compute in batches, return maps.

`make_runner(source, ...)` wraps a network `DepthEstimator` or the `files` source (maps read in
workers). `runner.run(inputs, frames)` returns, per image, the maps to store at their final
resolution: {"depth": (1, h/ds, w/ds) normalised, level: (C, h/s, w/s)} as CPU tensors (float32, or
float16 when precompute sets a network runner's `map_dtype` for an fp16 cache),
plus `runner.calls` counting images that went through the source.

For a network, the loader workers read and decode the images (`depth_cache.decode`); with the
`nvjpeg` decoder they only read JPEGs and `runner.prepare(items)` decodes the batch's on the device in one
call; resize, normalisation and inference run batched on the device (autocast and channels-last
on CUDA, optionally `torch.compile`d). `run_async` queues a batch's results into pinned host
buffers with non-blocking copies and returns a `wait` callable instead of blocking, so the job
hands the shard to a writer thread (which waits) and feeds the GPU the next shard meanwhile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from dgseg.depth_cache.decode import EncodedImage, decode_batch, load_image
from dgseg.depth_cache.entry import normalise_depth, pool_to_stride
from dgseg.depth_cache.estimators.base import DepthEstimator
from dgseg.depth_cache.estimators.files import FilesDepth
from dgseg.depth_cache.geometry import grid_for_stride
from dgseg.depth_cache.images import ImageRecord, image_size

Maps = dict[str, torch.Tensor]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on CUDA, fp32 elsewhere (CPU autocast is slower than fp32 for these models)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def run_network(estimator: Callable, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, Maps]:
    """x (B, 3, H, W) normalised on the estimator's device -> (depth (B, H, W), {level: (B, C, h, w)}) float32.
    `estimator` is the module or its `torch.compile`d form."""
    cuda = x.device.type == "cuda"
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(x.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with torch.inference_mode(), amp:
        out = estimator(x)
    return out.depth.float(), {k: v.float() for k, v in out.features.items()}


def prepare_images(images: torch.Tensor, frame: tuple[int, int], estimator: DepthEstimator) -> torch.Tensor:
    """(B, 3, H, W) uint8 or [0, 1] float -> (B, 3, *frame) normalised network input (bicubic on floats,
    as the official preprocessing; see estimators/preprocess.py)."""
    from dgseg.depth_cache.estimators.preprocess import prepare_batch

    return prepare_batch(images, frame, estimator.preprocess)


def check_size(record: ImageRecord, img: torch.Tensor) -> None:
    if record.size is not None and tuple(img.shape[-2:]) != tuple(record.size):
        raise ValueError(f"{record.path}: image is {tuple(img.shape[-2:])}, the JSON says {record.size}")


class ImageLoader:
    """Worker-side loading for networks: the decoded image checked against the JSON's size, or
    (`defer_jpeg`, for a GPU) a JPEG's bytes, decoded and checked by `NetworkRunner.prepare`."""

    def __init__(self, decoder: str = "torchvision", defer_jpeg: bool = False):
        self.decoder, self.defer_jpeg = decoder, defer_jpeg

    def __call__(self, record: ImageRecord) -> torch.Tensor | EncodedImage:
        img = load_image(record.path, self.decoder, self.defer_jpeg)
        if isinstance(img, torch.Tensor):
            check_size(record, img)
        return img


class NetworkRunner:
    """A network estimator in the precompute job."""

    flip_exact = False  # a network is not flip-equivariant: caching the flipped view can matter

    def __init__(self, estimator: DepthEstimator, depth_stride: int, device: str = "auto", precision: str = "auto",
                 batch_size: int = 8, decoder: str = "torchvision", compile: bool = False):  # fmt: skip
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.estimator = estimator.to(self.device).eval()
        # compiled once per input shape (frames vary with the aspect ratio; torch falls back to eager
        # after its recompile limit); the uncompiled module stays for `describe` and `probe`
        self.forward = torch.compile(self.estimator) if compile else self.estimator
        self.compiled = bool(compile)
        if decoder == "nvjpeg" and self.device.type != "cuda":
            raise ValueError(f"depth.cache.decode=nvjpeg decodes JPEGs on the GPU, but the estimator runs on "
                             f"{self.device}: use torchvision or pil (the same pixels, host-independent)")
        self.decoder = decoder
        # nvjpeg: JPEGs are decoded on the GPU in `prepare`; the workers only read them
        self.defer_jpeg = decoder == "nvjpeg"
        self.depth_stride, self.batch_size = depth_stride, batch_size
        self.levels = [fi.name for fi in estimator.feature_info]
        self.multiple_of = estimator.preprocess.multiple_of
        self.short_side = estimator.preprocess.input_size
        self.calls = 0
        self.progress: Callable[[int], None] | None = None  # told the images of every finished batch
        # float16 (set by precompute for an fp16 cache): maps are clipped and cast on the device, so the copy
        # to the host moves half the bytes and the writer casts nothing (the same values as casting there)
        self.map_dtype = torch.float32

    def describe(self) -> dict[str, Any]:
        pre = self.estimator.preprocess
        return {"name": self.estimator.name, "device": str(self.device), "precision": str(self.dtype),
                "input_size": pre.input_size, "multiple_of": pre.multiple_of, "mean": list(pre.mean),
                "std": list(pre.std), "resize": "bicubic on float, align_corners=False",
                "decoder": self.decoder, "compiled": self.compiled}  # fmt: skip

    def natural_frame(self, size: tuple[int, int]) -> tuple[int, int]:
        from dgseg.depth_cache.estimators.preprocess import target_size

        return target_size(size[0], size[1], self.short_side, self.multiple_of)

    def loader(self) -> ImageLoader:
        return ImageLoader(self.decoder, defer_jpeg=self.defer_jpeg)

    @property
    def pin_memory(self) -> bool:
        """Whether the loader should pin what it hands over (decoded images then copy without blocking)."""
        return self.device.type == "cuda"

    def prepare(self, items: list[dict]) -> None:
        """Decode the items' deferred JPEGs on the device in one batch (in place); an image that
        cannot be decoded, or whose size differs from the JSON's, becomes the item's error."""
        ok = [it for it in items if "error" not in it]
        if not ok:
            return
        decoded = decode_batch([it["input"] for it in ok], self.device)
        for it, img in zip(ok, decoded, strict=True):
            try:
                if isinstance(img, Exception):
                    raise img
                check_size(it["record"], img)
                it["input"] = img
            except (OSError, ValueError) as err:
                del it["input"]
                it["error"] = str(err) or type(err).__name__

    def input_size(self, item: torch.Tensor) -> tuple[int, int]:
        return tuple(item.shape[-2:])

    def run(self, inputs: list[torch.Tensor], frames: list[tuple[int, int]]) -> list[Maps]:
        maps, wait = self.run_async(inputs, frames)
        wait()
        return maps

    def run_async(self, inputs: list[torch.Tensor],
                  frames: list[tuple[int, int]]) -> tuple[list[Maps], Callable[[], None]]:  # fmt: skip
        """`run` without waiting: on CUDA the maps are pinned host tensors still being filled by
        non-blocking copies, valid once `wait()` returned (on a CPU `wait` does nothing)."""
        out: list[Maps | None] = [None] * len(inputs)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, f in enumerate(frames):  # one forward per frame size: batches need one shape
            groups[tuple(f)].append(i)
        cuda = self.device.type == "cuda"
        for frame, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start : start + self.batch_size]
                x = self._inputs([inputs[i] for i in part], frame)
                depth, feats = run_network(self.forward, x, self.dtype)
                self.calls += len(part)
                depth = pool_to_stride(normalise_depth(depth), self.depth_stride)
                batch = {"depth": depth[:, None], **feats}
                if self.map_dtype == torch.float16:
                    fp16_max = torch.finfo(torch.float16).max
                    batch = {k: v.float().clamp(-fp16_max, fp16_max).half() for k, v in batch.items()}
                if cuda:  # one copy per map per batch, into page-locked memory, without blocking
                    host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in batch.items()}
                    for k, v in batch.items():
                        host[k].copy_(v, non_blocking=True)
                    batch = host
                for j, i in enumerate(part):
                    out[i] = {k: v[j] for k, v in batch.items()}
                if self.progress is not None:  # the forward is done (copies may still be in flight)
                    self.progress(len(part))
        if not cuda:
            return out, _nothing  # type: ignore[return-value]
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return out, done.synchronize  # type: ignore[return-value]

    def _inputs(self, images: list[torch.Tensor], frame: tuple[int, int]) -> torch.Tensor:
        """Network input of images of one frame: those of one original size are resized in one call."""
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for j, img in enumerate(images):
            by_size[tuple(img.shape)].append(j)
        parts: list[torch.Tensor | None] = [None] * len(images)
        for js in by_size.values():
            batch = torch.stack([images[j] for j in js]).to(self.device, non_blocking=True)
            x = prepare_images(batch, frame, self.estimator)
            for k, j in enumerate(js):
                parts[j] = x[k : k + 1]
        return torch.cat(parts)  # type: ignore[arg-type]

    def probe(self, frame: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """(C, h, w) of every stored map for a `frame` input (sizes the canvas arrays), from
        `feature_info` rather than a forward pass (a vitg forward on a CPU takes a while)."""
        shapes = {"depth": (1, *grid_for_stride(frame, self.depth_stride))}
        for fi in self.estimator.feature_info:
            shapes[fi.name] = (fi.channels, *grid_for_stride(frame, fi.stride))
        return shapes


def _nothing() -> None:
    return None


class DepthFileLoader:
    """Worker-side loading for `files`: the raw map at the image's size."""

    def __init__(self, source: FilesDepth):
        self.source = source

    def __call__(self, record: ImageRecord) -> torch.Tensor:
        size = record.size
        if size is None and record.path:
            try:
                size = image_size(record.path)
            except OSError:
                size = None  # no readable image: the map's own size is the image size
        return self.source.load(record.stem, size)


class FilesRunner:
    """The `files` source in the precompute job: no network; maps larger than the canvas are shrunk."""

    flip_exact = True  # flipping a stored map gives exactly the map of the flipped image
    maps_by_stem = True  # maps are found by image file stem: two images with one stem would share one

    def __init__(self, source: FilesDepth, depth_stride: int, short_side: int):
        self.source, self.depth_stride, self.short_side = source, depth_stride, short_side
        self.levels = [fi.name for fi in source.feature_info]
        self.multiple_of = 1
        self.calls = 0
        self.progress: Callable[[int], None] | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": "files", "depth_dir": str(self.source.depth_dir), "depth_kind": self.source.kind,
                "resize": "none; maps larger than the canvas: area"}  # fmt: skip

    def natural_frame(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(size)

    def loader(self) -> DepthFileLoader:
        return DepthFileLoader(self.source)

    pin_memory = False

    def prepare(self, items: list[dict]) -> None:
        """Nothing to do: the workers read the maps."""

    def input_size(self, item: torch.Tensor) -> tuple[int, int]:
        return tuple(item.shape[-2:])

    def run_async(self, inputs: list[torch.Tensor],
                  frames: list[tuple[int, int]]) -> tuple[list[Maps], Callable[[], None]]:  # fmt: skip
        return self.run(inputs, frames), _nothing

    def run(self, inputs: list[torch.Tensor], frames: list[tuple[int, int]]) -> list[Maps]:
        out = []
        for raw, frame in zip(inputs, frames, strict=True):
            inv = self.source.inverse_depth(raw.float())
            if tuple(inv.shape) != tuple(frame):
                inv = F.interpolate(inv[None, None], size=tuple(frame), mode="area")[0, 0]
            res = self.source.from_inverse(inv)
            self.calls += 1
            maps = {"depth": pool_to_stride(res.depth, self.depth_stride)}
            maps.update({k: v[0] for k, v in res.features.items()})
            out.append(maps)
            if self.progress is not None:
                self.progress(1)
        return out

    def probe(self, frame: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        zeros = torch.zeros(frame)
        shapes = {"depth": (1, *pool_to_stride(zeros, self.depth_stride).shape)}
        shapes.update({fi.name: (1, *pool_to_stride(zeros, fi.stride).shape) for fi in self.source.feature_info})
        return shapes


def make_runner(source, depth_stride: int, short_side: int, device: str = "auto", precision: str = "auto",
                batch_size: int = 8, decoder: str = "torchvision", compile: bool = False):  # fmt: skip
    """The precompute adapter of a built source (`estimators.build_source`)."""
    if isinstance(source, FilesDepth):
        return FilesRunner(source, depth_stride, short_side)
    if isinstance(source, DepthEstimator):
        return NetworkRunner(source, depth_stride, device=device, precision=precision, batch_size=batch_size,
                             decoder=decoder, compile=compile)
    raise TypeError(f"not a depth source: {type(source).__name__}")
