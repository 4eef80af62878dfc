"""Bind every cache entry to the content of the file it was computed from.

Entries are found by image id, and ids collide (a val JSON numbered like the train JSON, two
datasets on one cache root, two splits reusing a file name). So precompute records, per entry,
the source file's fingerprint: its resolved path, size, mtime and `sha`, the sha256 of the size
and 16 KiB at the start, the middle and the end (the whole file up to 48 KiB). Whoever uses an
entry for a file checks it (`check_file`): same path, size and mtime -> accepted from one `stat`
(the fast path: the file the entry was made from, untouched); otherwise the sizes must agree and
the `sha` is recomputed (a copied or moved dataset costs a 48 KiB read per image).

What is guaranteed: a different file under a cached id is refused, unless it has the same size
and the same three sampled blocks (for compressed images: not in practice, since a local change
alters the size or the rest of the stream; an uncompressed BMP/TIFF edited in place between the
blocks can slip through), or it was rewritten at the same path with the same size within the
filesystem's mtime granularity.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

# bytes hashed at the start, the middle and the end of the file: 3 x 16 KiB cost 0.21 ms per image
# on this CPU against 0.41 ms for 2 x 64 KiB (sha256 at ~0.5 GB/s; `bench cache --fingerprints`)
SAMPLE = 16 * 1024


def content_sha(path: str | Path, size: int) -> str:
    """sha256 (first 32 hex digits) of the size and SAMPLE bytes at the start, middle and end."""
    digest = hashlib.sha256(str(size).encode() + b":")
    with open(path, "rb") as f:
        if size <= 3 * SAMPLE:
            digest.update(f.read())
        else:
            for start in (0, (size - SAMPLE) // 2, size - SAMPLE):
                f.seek(start)
                digest.update(f.read(SAMPLE))
    return digest.hexdigest()[:32]


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What a cache entry records about its source file (JSON-able)."""
    st = os.stat(path)
    # stem: of the name as listed (a `files` map is found by it, even when the image is a symlink)
    return {"path": os.path.realpath(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
            "sha": content_sha(path, st.st_size), "stem": Path(path).stem}  # fmt: skip


def check_file(path: str | Path, recorded: dict[str, Any]) -> str | None:
    """None when `path` is the file `recorded` describes, else why not (for an error message)."""
    try:
        st = os.stat(path)
    except OSError as err:
        return f"cannot read it ({err.strerror or err})"
    if int(st.st_size) != int(recorded["size"]):
        return f"{st.st_size} bytes, the cached entry's file had {recorded['size']}"
    if int(st.st_mtime_ns) == int(recorded["mtime_ns"]) and (
        os.path.abspath(path) == recorded["path"] or os.path.realpath(path) == recorded["path"]
    ):  # abspath first: realpath costs an lstat per component of the path
        return None  # the very file the entry was made from, untouched since
    if content_sha(path, st.st_size) != recorded["sha"]:
        return "same size, different content"
    return None


def describe(recorded: dict[str, Any]) -> str:
    return f"{recorded['path']} ({recorded['size']} bytes, sha {recorded['sha'][:12]})"


def check_files(files: dict[str, str], sources: dict[str, dict[str, Any]]) -> tuple[list[str], int]:
    """{image id: file} against the entries' fingerprints: one problem per file that is not the one its
    entry was computed from (naming both files), and how many ids have no recorded fingerprint."""
    problems, unbound = [], 0
    for image_id, path in files.items():
        recorded = sources.get(image_id)
        if recorded is None:
            unbound += 1
            continue
        why = check_file(path, recorded)
        if why is not None:
            problems.append(f"image id {image_id}: {path} is not the file its cache entry was computed "
                            f"from, {describe(recorded)}: {why}")  # fmt: skip
    return problems, unbound


class IdCollisionError(ValueError):
    """An image id (or a `files` depth map) that would serve one file's depth for another file."""


def check_cached_ids(files: list[tuple[str, str]], sources: dict[str, dict[str, Any]], where: str) -> None:
    """`files`: (id, path) of images whose id already has an entry; `sources`: the entries' fingerprints.
    Raises naming both files for every id cached for another file."""
    problems = []
    for image_id, path in files:
        recorded = sources.get(image_id)
        if recorded is not None and (why := check_file(path, recorded)) is not None:
            problems.append(f"id {image_id}: {path} ({why}) is cached from {describe(recorded)}")
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise IdCollisionError(
            f"{where}: {len(problems)} image ids already have a cache entry made from another file:\n  {shown}\n"
            "ids must be unique among all images that share a cache root (e.g. renumber the val ids after the "
            "train ids), or use another depth.cache.root for this dataset"
        )


def check_stems(files: list[tuple[str, str]], sources: dict[str, dict[str, Any]], depth_dir: str) -> None:
    """`files` source: maps are found by image file stem, so two different images with one stem (in this
    job, or one cached before) would get one map. Raises naming both images; the same file listed twice,
    or an identical copy, is fine. Hashes only files whose stem is shared by several paths."""
    by_stem: dict[str, dict[str, str | None]] = {}  # stem -> resolved path -> sha (None: not computed yet)
    for src in sources.values():
        by_stem.setdefault(src.get("stem") or Path(src["path"]).stem, {})[src["path"]] = src["sha"]
    for _, path in files:
        by_stem.setdefault(Path(path).stem, {}).setdefault(os.path.realpath(path), None)
    problems = []
    for stem, paths in by_stem.items():
        if len(paths) < 2:
            continue
        shas = {p: sha if sha is not None else (content_sha(p, os.path.getsize(p)) if os.path.isfile(p) else p)
                for p, sha in paths.items()}  # fmt: skip
        if len(set(shas.values())) > 1:
            problems.append(f"{stem}: {' and '.join(list(shas)[:3])}")
    if problems:
        raise IdCollisionError(
            f"`files` source: depth maps in {depth_dir} are found by image file name, and {len(problems)} names "
            f"belong to different images: {'; '.join(problems[:10])}. Give each split its own depth folder "
            "(and so its own cache key), or distinct file names"
        )
