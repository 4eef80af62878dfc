"""Gradient accumulation (`train.accumulate`): one optimiser update from a batch seen in micro-batches.

The batch the loader gives is split on the host into `n` micro-batches (same padding as the whole
batch, so every image's output is the one it has in the whole batch); each is moved to the device,
its loss computed and back-propagated, and its activations freed before the next. The criterion
normalises each term over the batch it is given, so a micro-batch's terms are rescaled by their
share of the whole batch's normaliser; the summed gradients are then those of the whole batch:

- mask terms (`loss_mask*`, `loss_dice*`): the number of target masks M (over all processes, as the
  criterion counts it) -> share m_i / M;
- class terms (`loss_ce*`): the class-weight sum W = sum over images of k + eos (Q - k), k = min(n, Q)
  matched queries of Q -> share W_i / W.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from dgseg.pipeline.data.collate import Batch
from dgseg.pipeline.engine.step_timer import StepTimer
from torch import Tensor, nn

ReduceSum = Callable[[dict[str, float]], dict[str, float]]


def split_batch(batch: Batch, n: int) -> list[Batch]:
    """`n` consecutive micro-batches of a collated batch (views of its tensors, its padding kept)."""
    if n < 1:
        raise ValueError(f"train.accumulate must be >= 1, got {n}")
    if n == 1:
        return [batch]
    size = len(batch)
    if size % n:
        raise ValueError(f"train.accumulate={n} does not divide a batch of {size} images "
                         "(train.batch_size / semi.unlabeled_batch_size per process)")
    m = size // n

    def part(i: int) -> Batch:
        s = slice(i * m, (i + 1) * m)
        return Batch(images=batch.images[s], valid=batch.valid[s],
                     depth=None if batch.depth is None else batch.depth[s],
                     features={k: v[s] for k, v in batch.features.items()},
                     targets=batch.targets[s], image_ids=batch.image_ids[s], orig_sizes=batch.orig_sizes[s])

    return [part(i) for i in range(n)]


def normalisers(targets: list[dict], num_queries: int, no_object_weight: float) -> dict[str, float]:
    """The criterion's normaliser of each kind of term for these targets (before any clamping)."""
    counts = [len(t["labels"]) for t in targets]
    matched = [min(c, num_queries) for c in counts]
    return {"masks": float(sum(counts)),
            "class": float(sum(k + no_object_weight * (num_queries - k) for k in matched))}


def term_kind(name: str) -> str:
    """Which normaliser a criterion term's name (with its layer / view / set suffixes) divides by."""
    for prefix, kind in (("loss_ce", "class"), ("loss_mask", "masks"), ("loss_dice", "masks")):
        if name.startswith(prefix):
            return kind
    raise ValueError(f"train.accumulate: no normaliser known for loss term {name!r}; a new criterion term "
                     "needs its share of the batch in pipeline/engine/accumulate.py")


def shares(parts: list[list[dict]], num_queries: int, no_object_weight: float,
           reduce_sum: ReduceSum | None = None) -> list[dict[str, float]]:
    """Per micro-batch, its share of the whole batch's normaliser of each kind. `reduce_sum` sums the
    mask counts over processes (the criterion divides by the mean over processes, so the shares do)."""
    per = [normalisers(t, num_queries, no_object_weight) for t in parts]
    if len(per) == 1:
        return [dict.fromkeys(per[0], 1.0)]
    masks = {f"m{i}": p["masks"] for i, p in enumerate(per)}
    if reduce_sum is not None:
        masks = reduce_sum(masks)
    total = {k: sum(p[k] for p in per) for k in per[0]}
    total["masks"] = sum(masks.values())
    out = []
    for i, p in enumerate(per):
        # the criterion clamps its normaliser at 1; a part with no mask has zero mask terms anyway
        s = {k: max(p[k], 1.0) / max(total[k], 1.0) for k in p if k != "masks"}
        s["masks"] = max(masks[f"m{i}"], 1.0) / max(total["masks"], 1.0)
        out.append(s)
    return out


def scale_terms(losses: dict[str, Tensor], share: dict[str, float]) -> dict[str, Tensor]:
    """Each term times its micro-batch's share of the whole batch's normaliser."""
    if all(v == 1.0 for v in share.values()):
        return losses
    return {k: v * share[term_kind(k)] for k, v in losses.items()}


def no_sync(model: nn.Module, last: bool):
    """DDP all-reduces gradients once, in the last micro-batch's backward."""
    if last or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def add_detached(totals: dict[str, Tensor], losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """Running sums of the terms on the device (no host sync until they are logged)."""
    for k, v in losses.items():
        d = v.detach()
        totals[k] = totals[k] + d if k in totals else d
    return totals


def micro_steps(model: nn.Module, parts: list[Batch], loss_fn: Callable[[int, Batch], dict[str, Tensor]],
                part_shares: list[dict[str, float]], timer: StepTimer | None = None) -> dict[str, Tensor]:
    """Back-propagate every micro-batch's rescaled loss (`loss_fn(i, part)`); returns the summed terms
    (the whole batch's, detached). Gradients add up in `.grad`: zero them before, step after."""
    timer = timer or StepTimer()
    totals: dict[str, Tensor] = {}
    for i, part in enumerate(parts):
        with no_sync(model, i == len(parts) - 1):
            losses = scale_terms(loss_fn(i, part), part_shares[i])
            with timer("backward_step"):
                sum(losses.values()).backward()
        add_detached(totals, losses)
    return totals
