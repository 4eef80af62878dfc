"""Shard claims: how precompute jobs on one cache key split the work, and take over a dead job's shards.

Before a job computes the images of shard k it claims k: it creates `claims/<k>.<gen>.json`
(owner, its image ids, expiry) with an exclusive create, which exactly one job can win. The claim
is a lease: a heartbeat thread renews its expiry every `lease_s / 4`; after writing the shard and
its done marker, the owner deletes the claim. A job that is killed leaves its claims; once they
expire (`lease_s` after the last heartbeat), another job takes the shard over by creating the
next generation `<k>.<gen+1>.json` (again exclusive: of several successors one wins). The
current owner of k is the holder of its highest generation, and a job writes a shard only while
that is still its own claim (checked just before writing), so a stalled job that lost its lease
drops its shard instead of overwriting the successor's. A claim won for a shard that already
has a marker (its owner finished just before) is given back at once.

What holds on which storage: on local and POSIX network filesystems (NFSv3+, Lustre, GPFS) the
exclusive create is `link(2)` of a complete temporary file, atomic, so no two jobs ever claim one
shard. fsspec stores use `open(mode="xb")` where the filesystem implements it (conditional
writes, e.g. recent s3fs / gcsfs versions); elsewhere the claim falls back to write-then-read-back,
which narrows the race to the store's write latency but cannot close it: a collision then shows
up as a checksum problem in `cache verify` (never as a silently wrong entry read without error
from a verified cache). Expiry compares wall clocks: the machines must keep their clocks in sync
(NTP) to well under `lease_s`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from dgseg.depth_cache.store import MARKER_DIR, CacheStore, create_exclusive

CLAIM_DIR = "claims"


@dataclass
class Claim:
    shard: int
    gen: int
    owner: str
    expires: float
    images: list[str]

    def live(self, now: float | None = None) -> bool:
        return self.expires > (time.time() if now is None else now)


class ShardClaims:
    """This job's claims on the shards of one cache (thread-safe; heartbeat on a daemon thread)."""

    def __init__(self, store: CacheStore, lease_s: float = 120.0, owner: str | None = None):
        if not lease_s > 0:
            raise ValueError(f"depth.cache.lease_s must be > 0 seconds, got {lease_s}")
        self.store, self.lease_s = store, float(lease_s)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: dict[int, tuple[int, list[str]]] = {}  # shard -> (gen, image ids)
        self.lost: list[int] = []  # shards whose claim another job took over before we wrote them
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- files
    def _dir(self) -> str:
        return f"{self.store.path}/{CLAIM_DIR}"

    def _path(self, shard: int, gen: int) -> str:
        return f"{self._dir()}/{shard:06d}.{gen}.json"

    def _body(self, shard: int, gen: int, images: list[str]) -> bytes:
        return json.dumps({"shard": shard, "gen": gen, "owner": self.owner, "expires": time.time() + self.lease_s,
                           "images": images}).encode()  # fmt: skip

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        ok = create_exclusive(self.store, path, data)
        if ok is None:  # no exclusive create on this store: best effort, see the module docstring
            time.sleep(0.2)
            try:
                return json.loads(self.store.fs.cat_file(path)).get("owner") == self.owner
            except (FileNotFoundError, ValueError):
                return False
        return ok

    def _write(self, path: str, data: bytes) -> None:
        if self.store.local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.store.fs.pipe_file(path, data)

    def _remove(self, path: str) -> None:
        try:
            self.store.fs.rm(path)
        except FileNotFoundError:
            pass

    def _read(self, name: str) -> Claim | None:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        parts = base.split(".")
        if len(parts) != 3 or parts[2] != "json" or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        shard, gen = int(parts[0]), int(parts[1])
        try:
            data: Any = json.loads(self.store.fs.cat_file(f"{self._dir()}/{base}"))
            return Claim(shard, gen, str(data["owner"]), float(data["expires"]), list(data["images"]))
        except FileNotFoundError:
            return None  # released meanwhile
        except (ValueError, KeyError, TypeError):
            # being written (stores without atomic create): live for a lease from now, never ours
            return Claim(shard, gen, "?", time.time() + self.lease_s, [])

    def current(self) -> dict[int, Claim]:
        """The claim of every claimed shard (its highest generation), live or expired."""
        try:
            names = self.store.fs.ls(self._dir(), detail=False)
        except FileNotFoundError:
            return {}
        out: dict[int, Claim] = {}
        for name in names:
            claim = self._read(name)
            if claim is not None and (claim.shard not in out or claim.gen > out[claim.shard].gen):
                out[claim.shard] = claim
        return out

    def _has_marker(self, shard: int) -> bool:
        return self.store.fs.exists(f"{self.store.path}/{MARKER_DIR}/{shard:06d}.json")

    # ---------------------------------------------------------------- claiming
    def try_claim(self, shard: int, images: list[str], current: dict[int, Claim] | None = None) -> bool:
        """Claim `shard` for `images`: True when this job now owns it (free, or its claim expired)."""
        claim = (self.current() if current is None else current).get(shard)
        if claim is not None and claim.live():
            return False
        gen = 0 if claim is None else claim.gen + 1
        if not self._create_exclusive(self._path(shard, gen), self._body(shard, gen, images)):
            return False
        if self._has_marker(shard):  # finished by its previous owner just before we claimed it
            self._remove(self._path(shard, gen))
            return False
        for old in range(gen):  # the dead owner's generations (best effort; the highest wins anyway)
            self._remove(self._path(shard, old))
        with self._lock:
            self.held[shard] = (gen, list(images))
        self._start_heartbeat()
        return True

    def still_mine(self, shard: int) -> bool:
        """Whether this job still owns `shard` (no successor took it over after our lease lapsed)."""
        with self._lock:
            held = self.held.get(shard)
        if held is None:
            return False
        claim = self.current().get(shard)
        return claim is not None and claim.gen == held[0] and claim.owner == self.owner

    def release(self, shard: int) -> None:
        with self._lock:  # with the heartbeat's lock, so a beat never re-creates a released claim
            held = self.held.pop(shard, None)
            if held is not None:
                self._remove(self._path(shard, held[0]))

    def lose(self, shard: int) -> None:
        with self._lock:
            self.held.pop(shard, None)
            self.lost.append(shard)

    def close(self) -> None:
        """Stop the heartbeat and give back every claim still held (unfinished shards)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for shard in list(self.held):
            self.release(shard)

    # ---------------------------------------------------------------- heartbeat
    def _start_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            for shard in list(self.held):
                with self._lock:
                    if shard not in self.held:
                        continue  # released meanwhile
                    gen, images = self.held[shard]
                    try:
                        claim = self.current().get(shard)
                        if claim is None or claim.gen != gen or claim.owner != self.owner:
                            continue  # taken over: the writer checks before writing
                        self._write(self._path(shard, gen), self._body(shard, gen, images))
                    except OSError:
                        continue  # a storage hiccup: the next beat tries again (a lease is 4 beats long)


class ClaimingSampler:
    """DataLoader sampler over `ids` (one per dataset item) that claims a shard before yielding its
    items, so the loader's prefetch never runs ahead of what this job owns.

    Each shard gets the next `shard_size` ids that are neither handled (in a done marker: finished or
    failed) nor in another job's live claim, and the lowest shard number without a marker or a live
    claim. `where[index] = (shard, slot)` for every yielded item. Ends when nothing is left to
    claim; ids held by other jobs' live claims are then `waiting()`."""

    def __init__(self, ids: list[str], claims: ShardClaims, shard_size: int, handled: set[str]):
        self.ids, self.claims, self.shard_size = ids, claims, int(shard_size)
        self.handled = handled  # updated in place from new markers
        self.where: dict[int, tuple[int, int]] = {}
        self._marked: set[int] = set()

    def refresh(self) -> dict[int, Claim]:
        """Read markers written since the last look (their ids become handled) and the current claims."""
        for shard, base in self.claims.store.marker_names().items():
            if shard in self._marked:
                continue
            marker = self.claims.store.read_json(f"{MARKER_DIR}/{base}")
            self._marked.add(shard)  # even unreadable (verify reports it): its number is never reused
            if marker is not None:
                self.handled.update(img[0] for img in marker["images"])
                self.handled.update(marker.get("failed", {}))
        return self.claims.current()

    def mark_known(self, shards: set[int]) -> None:
        """Shards already read (e.g. from index.json) whose ids the caller put in `handled`."""
        self._marked |= set(shards)

    def busy(self, current: dict[int, Claim]) -> set[str]:
        """Ids in live claims of other jobs."""
        now = time.time()
        return {i for c in current.values() if c.live(now) and c.owner != self.claims.owner for i in c.images}

    def waiting(self) -> list[str]:
        """Ids of `ids` not handled, all held by other jobs' live claims (after a fresh look)."""
        current = self.refresh()
        busy = self.busy(current)
        return [i for i in dict.fromkeys(self.ids) if i not in self.handled and i in busy]

    def todo(self) -> list[int]:
        """Indices of ids neither handled nor held by another job (after a fresh look)."""
        busy = self.busy(self.refresh())
        return [n for n, i in enumerate(self.ids) if i not in self.handled and i not in busy]

    def __iter__(self):
        pending = [n for n, i in enumerate(self.ids) if i not in self.handled]
        mine: set[str] = set()  # ids this job claimed in this pass (they stay out of `pending`)
        while pending:
            current = self.refresh()
            busy = self.busy(current)
            pending = [n for n in pending if self.ids[n] not in self.handled and self.ids[n] not in busy
                       and self.ids[n] not in mine]  # fmt: skip
            if not pending:
                return
            group = pending[: self.shard_size]
            taken = self._marked | {k for k, c in current.items() if c.live()}
            shard = 0
            while shard in taken:
                shard += 1
            if not self.claims.try_claim(shard, [self.ids[n] for n in group], current):
                continue  # another job won it: look again
            for slot, n in enumerate(group):
                self.where[n] = (shard, slot)
                mine.add(self.ids[n])
                yield n
            pending = pending[len(group) :]
