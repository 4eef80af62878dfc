"""The supervised training loop (labels only): the baseline and the teacher-only stage.

Kept flat in the manner of torchvision's detection references: build, (resume), loop over
iterations, log, checkpoint, evaluate. Its helpers (`due`, `optimizer_step`, `restore`, the
checkpoint state, `periodic_eval`) are the loop skeleton the teacher-student trainer
(`pipeline.semi.trainer`) builds on; `pipeline.train` chooses between the two, so this lower
layer never imports the higher one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from dgseg.pipeline.config import Config
from dgseg.pipeline.config.loading import to_dict
from dgseg.pipeline.engine.accumulate import micro_steps, shares, split_batch
from dgseg.pipeline.engine.checkpoint import (
    last_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    save_final_weights,
    set_rng_state,
)
from dgseg.pipeline.engine.context import RunContext, build_context, check_finite, train_loader
from dgseg.pipeline.engine.distributed import all_gather_objects
from dgseg.pipeline.engine.inference import evaluate_model
from dgseg.pipeline.engine.optim import base_lr
from dgseg.pipeline.engine.tb_log import LOGGER, val_pictures
from torch import nn
from tqdm import tqdm


def due(step: int, period: int, last: int) -> bool:
    """Periodic work (log, checkpoint, evaluation) runs every `period` steps (never if period <= 0)
    and at the last step."""
    return step == last or (period > 0 and step % period == 0)


class LoaderClock:
    """Seconds the loop has waited for batches since it started (detectron2's `data_time`): when
    it grows like the step time, the DataLoader, not the model, sets the pace."""

    def __init__(self) -> None:
        self.waited = 0.0

    def next(self, iterator):
        t = time.perf_counter()
        batch = next(iterator)
        self.waited += time.perf_counter() - t
        return batch


def wrap_ddp(model: nn.Module, ctx: RunContext) -> nn.Module:
    if ctx.dist.world_size == 1:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def main_loss_terms(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """The total and the last decoder layer's terms (aux layers only add noise to a log)."""
    out = {"loss": float(sum(v.detach() for v in losses.values()))}
    out.update({k: float(v.detach()) for k, v in losses.items() if not k[-1].isdigit()})
    return out


def optimizer_step(ctx: RunContext, params) -> None:
    """Clip and apply the gradients back-propagated since the last `zero_grad` (one per step)."""
    if ctx.cfg.train.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(params, ctx.cfg.train.clip_grad)
    ctx.optimizer.step()
    ctx.scheduler.step()


def batch_shares(ctx: RunContext, targets: list[dict], n: int) -> list[dict[str, float]]:
    """The shares of the batch's loss normalisers held by each of its `n` micro-batches."""
    from dgseg.pipeline.engine.distributed import all_reduce_sum

    m, size = ctx.cfg.model, max(len(targets) // n, 1)
    return shares([targets[i * size:(i + 1) * size] for i in range(n)], m.num_queries, m.no_object_weight,
                  lambda v: all_reduce_sum(v, ctx.device))


def restore(ctx: RunContext, extra_models: dict[str, nn.Module] | None = None) -> tuple[int, dict]:
    """Load the run's last checkpoint into the context; returns (iteration, the raw checkpoint)."""
    path = last_checkpoint(ctx.out_dir)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ctx.out_dir} (no '{ctx.out_dir}/last_checkpoint')")
    ckpt = load_checkpoint(path)
    load_model_state(ctx.model, ckpt["model"], str(path))
    for name, module in (extra_models or {}).items():
        load_model_state(module, ckpt[name], f"{path} [{name}]")
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    ctx.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(process_rng(ckpt, ctx.dist.rank, ctx.dist.world_size))
    ctx.log.truncate_after(ckpt["iteration"])
    return int(ckpt["iteration"]), ckpt


def process_rng(ckpt: dict, rank: int, world_size: int) -> dict:
    """This process's RNG state from a checkpoint: its own when the checkpoint holds one per process
    (resume is then exact under torchrun), else the one state saved (single-process checkpoints)."""
    per_rank = ckpt.get("rng_per_rank")
    if per_rank and len(per_rank) == world_size:
        return per_rank[rank]
    if world_size > 1:
        import warnings

        saved = len(per_rank) if per_rank else 1
        warnings.warn(f"resuming {world_size} processes from a checkpoint of {saved}: the RNG streams "
                      "of processes other than rank 0 are derived afresh, so their augmentations will not repeat",
                      stacklevel=2)
        return ckpt["rng"] if rank == 0 else _offset_rng(ckpt["rng"], rank)
    return ckpt["rng"]


def _offset_rng(state: dict, rank: int) -> dict:
    """A distinct, reproducible RNG state for `rank` derived from a saved one (no per-rank state saved)."""
    g = torch.Generator()
    g.set_state(state["torch"])
    g.manual_seed(int(torch.randint(0, 2**31, (), generator=g)) + rank)
    return {**state, "torch": g.get_state()}


def save_run_checkpoint(ctx: RunContext, step: int, **extra) -> None:
    """Every process calls this: rank 0 writes the checkpoint with each process's RNG state."""
    rngs = all_gather_objects(rng_state())
    if ctx.dist.is_main:
        save_checkpoint(ctx.out_dir, step, checkpoint_state(ctx, rng_per_rank=rngs, **extra),
                        keep=ctx.cfg.train.keep_checkpoints)


def save_final(ctx: RunContext, teacher: nn.Module | None = None) -> None:
    """The finished run's weights alone (`model_final.pth`, `.safetensors`): what evaluate and predict read."""
    if ctx.dist.is_main:
        models = {"model": ctx.model.state_dict(), **({"teacher": teacher.state_dict()} if teacher else {})}
        paths = save_final_weights(ctx.out_dir, models, to_dict(ctx.cfg), ctx.cfg.train.max_iter)
        LOGGER.info("final weights (%s): %s", ", ".join(models), ", ".join(str(p) for p in paths))
    ctx.log.close()


def checkpoint_state(ctx: RunContext, **extra) -> dict:
    return {
        "model": ctx.model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "config": to_dict(ctx.cfg),
        **extra,
    }


def final_eval_dir(out_dir: Path, prefix: str = "val") -> Path:
    """Where a run's evaluation at its last step keeps its val predictions (`coco_results.json`) and metrics."""
    return out_dir / ("final_eval" if prefix == "val" else f"final_eval_{prefix}")


def periodic_eval(ctx: RunContext, model: nn.Module, iteration: int, prefix: str = "val") -> dict:
    # the last step's predictions are kept, so nothing has to predict the val set again to inspect them
    keep = final_eval_dir(ctx.out_dir, prefix) if iteration == ctx.cfg.train.max_iter else None
    metrics = evaluate_model(model, ctx.val_loader, ctx.coco_val, ctx.device, ctx.provider, ctx.cfg.eval,
                             ctx.use_depth, show_progress=False, output_dir=keep)
    record = {"iter": iteration}
    record.update({f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    ctx.log.write(record)
    if ctx.dist.is_main:
        from dgseg.pipeline.evaluation.visualize import plot_curves

        plot_curves(ctx.log.path, ctx.out_dir / "curves.png")
        if ctx.log.writer is not None:
            names = [str(c.get("name", c["id"])) for c in sorted(ctx.coco_val.cats.values(), key=lambda c: c["id"])]
            ctx.log.images(f"{prefix}/predictions", val_pictures(model, ctx.val_loader, ctx.device, ctx.provider,
                                                                 ctx.cfg.eval, ctx.use_depth, names), iteration)
    return metrics


def train_supervised(cfg: Config, resume: bool = False) -> dict:
    from dgseg.pipeline.data.dataset import build_train_dataset

    ctx = build_context(cfg)
    start = restore(ctx)[0] if resume else 0
    labeled = build_train_dataset(cfg, ctx.reader)
    loader = iter(train_loader(labeled, cfg, ctx.dist, cfg.train.batch_size, start))
    model = wrap_ddp(ctx.model, ctx)
    model.train()
    metrics: dict = {}
    t0, clock = time.perf_counter(), LoaderClock()
    bar = tqdm(range(start, cfg.train.max_iter), initial=start, total=cfg.train.max_iter,
               desc="train", disable=not ctx.dist.is_main)
    for it in bar:
        batch = clock.next(loader)

        def micro_loss(_: int, part, it=it) -> dict[str, torch.Tensor]:
            part = part.to(ctx.device, non_blocking=True)
            ctx.provider.fill(part)
            with ctx.autocast:
                outputs = model(part.images, part.features if ctx.use_depth else None, ~part.valid)
            losses = ctx.criterion(outputs, part.targets)
            check_finite(losses, it, ctx.out_dir)
            return losses

        lr = base_lr(ctx.scheduler, cfg.train)  # the rate this step uses
        ctx.optimizer.zero_grad(set_to_none=True)
        losses = micro_steps(model, split_batch(batch, cfg.train.accumulate), micro_loss,
                             batch_shares(ctx, batch.targets, cfg.train.accumulate))
        optimizer_step(ctx, model.parameters())
        step = it + 1
        if due(step, cfg.train.log_period, cfg.train.max_iter):
            terms = main_loss_terms(losses)
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
            ctx.log.write({"iter": step, **terms, "lr": lr,
                           "time": time.perf_counter() - t0, "data_time": clock.waited})
        if due(step, cfg.train.checkpoint_period, cfg.train.max_iter):
            save_run_checkpoint(ctx, step)
        if due(step, cfg.train.eval_period, cfg.train.max_iter):
            metrics = periodic_eval(ctx, ctx.model, step)
    save_final(ctx)
    return metrics
