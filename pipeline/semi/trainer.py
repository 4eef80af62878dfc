"""Depth-guided teacher-student training (both stages), after Guided Distillation.

Timeline, in iterations of one resumable loop:
- stage A, [0, teacher_iters): the teacher-to-be trains on labelled batches only; with depth
  pseudo-labels on, every labelled batch is seen as the RGB view and as the depth view, so the
  teacher can segment either;
- stage B, [teacher_iters, max_iter): the teacher is frozen and a student (the teacher's weights,
  or afresh) trains on labelled batches plus unlabelled batches. After `burn_in_iter` stage-B
  steps the teacher becomes a copy of the student and then follows it as an EMA.

Each stage-B step: the teacher (no grad) predicts on the weak RGB view and on the depth view of
the unlabelled batch -> RGB and depth pseudo-label sets; the student sees the strong view (same
geometry, photometric augmentation) with Depth Fusion, and its losses against both sets are mixed
by the Depth Controller's weight w: unsup_weight * ((1 - w) L_rgb + w L_depth).
"""

from __future__ import annotations

import dataclasses
import time

import torch
from dgseg.pipeline.config import Config, TrainConfig
from dgseg.pipeline.engine.checkpoint import load_checkpoint, load_model_state
from dgseg.pipeline.engine.context import RunContext, build_context, check_finite, train_loader
from dgseg.pipeline.engine.distributed import all_reduce_sum, broadcast_buffers
from dgseg.pipeline.engine.optim import base_lr, build_optimizer, build_scheduler, stage_schedule
from dgseg.pipeline.engine.step_timer import StepTimer
from dgseg.pipeline.engine.trainer import (
    LoaderClock,
    due,
    main_loss_terms,
    optimizer_step,
    periodic_eval,
    restore,
    save_final,
    save_run_checkpoint,
    wrap_ddp,
)
from dgseg.pipeline.semi.depth_controller import (
    build_controller,
    finish_measurements,
    measure_step,
    reduce_measurements,
)
from dgseg.pipeline.semi.depth_view import render_depth_view
from dgseg.pipeline.semi.ema import copy_student_to_teacher, ema_update, make_teacher
from dgseg.pipeline.semi.losses import combine_unsup_losses
from dgseg.pipeline.semi.pseudo_labels import PseudoLabeler
from torch import nn
from tqdm import tqdm


def _forward(ctx: RunContext, model: nn.Module, images: torch.Tensor, batch, targets=None) -> dict:
    """`targets`: ground truth for mask-piloted queries (labelled batches only: one unlabelled output
    is compared with two pseudo-label sets, so it must not be piloted by either)."""
    with ctx.autocast:
        return model(images, batch.features if ctx.use_depth else None, ~batch.valid, targets=targets)


def supervised_losses(ctx: RunContext, model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """Labelled loss on the RGB view, plus `semi.depth_view_weight` x the loss on the depth view when
    the teacher must read depth (the depth view would otherwise double the supervised loss)."""
    losses = ctx.criterion(_forward(ctx, model, batch.images, batch, batch.targets), batch.targets)
    if ctx.cfg.semi.depth_pseudo_labels:
        view = render_depth_view(batch.depth, batch.valid, colormap=ctx.cfg.semi.depth_view)
        depth_losses = ctx.criterion(_forward(ctx, model, view, batch, batch.targets), batch.targets)
        dw = ctx.cfg.semi.depth_view_weight
        losses = {**{f"{k}_rgbview": v for k, v in losses.items()},
                  **{f"{k}_depthview": dw * v for k, v in depth_losses.items()}}
    return losses


@torch.no_grad()
def teacher_pseudo_labels(ctx: RunContext, teacher: nn.Module, batch,
                          timer: StepTimer | None = None) -> tuple[list[dict], list[dict] | None]:  # fmt: skip
    """RGB and depth pseudo-label sets of an unlabelled batch (depth None when not used)."""
    semi = ctx.cfg.semi
    timer = timer or StepTimer()
    size = tuple(batch.images.shape[-2:])
    label = PseudoLabeler.from_config(semi)
    with timer("teacher"):
        out_rgb = _forward(ctx, teacher, batch.images, batch)
    with timer("pseudo_labels"):
        rgb = label(out_rgb, size, batch.valid)
    depth = None
    if semi.depth_pseudo_labels:
        with timer("teacher"):
            view = render_depth_view(batch.depth, batch.valid, colormap=semi.depth_view)
            out_depth = _forward(ctx, teacher, view, batch)
        with timer("pseudo_labels"):
            depth = label(out_depth, size, batch.valid)
    return rgb, depth


def controller_stats(ctx: RunContext, rgb_pl: list[dict], depth_pl: list[dict], loss_rgb: dict,
                     loss_depth: dict) -> dict:
    """The Depth Controller's measurements of this step, summed over every process (so all ranks
    update their controllers identically and keep the same w)."""
    c = ctx.cfg.semi.controller
    raw = measure_step(rgb_pl, depth_pl, loss_rgb, loss_depth, iou_threshold=c.agreement_iou,
                       class_aware=c.agreement_class_aware)
    reduced = reduce_measurements(raw, lambda v: all_reduce_sum(v, ctx.device), ctx.dist.world_size)
    return finish_measurements(reduced)


def strong_view(images: torch.Tensor, valid: torch.Tensor, augment) -> torch.Tensor:
    """Photometric augmentation per image; geometry (and so every pseudo-label) is unchanged."""
    return torch.stack([augment(img) for img in images]) * valid[:, None].to(images)


def stage_b_start(cfg: Config) -> int:
    """First iteration of stage B (0 when stage B starts from a given teacher checkpoint)."""
    return 0 if cfg.semi.teacher_checkpoint else cfg.semi.teacher_iters


def stage_schedules(cfg: Config) -> dict[str, TrainConfig]:
    """Each stage's schedule ("A" absent when there is no stage A, "B" absent when the run is stage A
    alone): a whole schedule per stage, as Guided Distillation trains its teacher and its student in
    two runs of the full recipe."""
    start_b, end = stage_b_start(cfg), cfg.train.max_iter
    # a run may be stage A alone (start_b == end: a later run's stage B starts from its checkpoint)
    if start_b > end or end <= 0:
        raise ValueError(f"semi: stage B would start at iteration {start_b} but train.max_iter is "
                         f"{end}; raise train.max_iter to semi.teacher_iters (stage A alone) or above")
    out = {}
    if start_b > 0:
        out["A"] = stage_schedule(cfg.train, 0, start_b)
    if start_b < end:
        # the student starts from a trained teacher: its peak rate may be lower than the teacher's
        b = stage_schedule(cfg.train, start_b, end)
        out["B"] = dataclasses.replace(b, lr=cfg.train.lr * cfg.semi.student_lr_mult)
    return out


def _stage_b_reset(ctx: RunContext, teacher: nn.Module, start_b: int) -> None:
    """Teacher := the trained stage-A model (frozen); fresh student, optimiser and schedule."""
    cfg = ctx.cfg
    broadcast_buffers(ctx.model)  # every process's teacher is the same model
    teacher.load_state_dict(ctx.model.state_dict())
    if cfg.semi.student_init == "scratch":
        from dgseg.pipeline.model.build import build_model

        fresh = build_model(cfg.model, cfg.data.num_classes, ctx.provider.channels).to(ctx.device)
        ctx.model.load_state_dict(fresh.state_dict())
    stage_b = stage_schedules(cfg)["B"]
    ctx.optimizer = build_optimizer(ctx.model, stage_b)
    ctx.scheduler = build_scheduler(ctx.optimizer, stage_b)


def train_semi(cfg: Config, resume: bool = False) -> dict:
    from dgseg.pipeline.data.dataset import build_train_dataset, build_unlabeled_dataset
    from dgseg.pipeline.data.photometric import StrongAugment

    semi = cfg.semi
    ctx = build_context(cfg)
    teacher = make_teacher(ctx.model)
    controller = build_controller(semi.controller)
    start_b = stage_b_start(cfg)
    schedules = stage_schedules(cfg)
    if semi.teacher_checkpoint and not resume:
        ckpt = load_checkpoint(semi.teacher_checkpoint)
        key = "teacher" if "teacher" in ckpt else "model"
        load_model_state(ctx.model, ckpt[key], f"{semi.teacher_checkpoint} [{key}]")
        _stage_b_reset(ctx, teacher, start_b)
    else:
        # stage A trains over its own schedule; stage B builds a new one at the boundary
        ctx.scheduler = build_scheduler(ctx.optimizer, schedules["A" if "A" in schedules else "B"])
    start = 0
    if resume:
        # a checkpoint from stage B carries the teacher; rebuild stage B's optimiser first so shapes match
        from dgseg.pipeline.engine.checkpoint import last_checkpoint

        path = last_checkpoint(ctx.out_dir)
        if path is not None and "teacher" in load_checkpoint(path):
            _stage_b_reset(ctx, teacher, start_b)
            start, ckpt = restore(ctx, {"teacher": teacher})
            controller.load_state_dict(ckpt["controller"])
        else:
            start, _ = restore(ctx)
    labeled = build_train_dataset(cfg, ctx.reader)
    unlabeled = build_unlabeled_dataset(cfg, ctx.reader)
    lab_iter = iter(train_loader(labeled, cfg, ctx.dist, cfg.train.batch_size, start))
    unl_iter = None
    augment = StrongAugment()
    timer = StepTimer(cfg.train.time_parts, ctx.device)
    ctx.criterion.matcher = timer.wrap(ctx.criterion.matcher, "matching")
    model = wrap_ddp(ctx.model, ctx)
    model.train()
    metrics: dict = {}
    t0, clock = time.perf_counter(), LoaderClock()
    bar = tqdm(range(start, cfg.train.max_iter), initial=start, total=cfg.train.max_iter,
               desc="train (teacher-student)", disable=not ctx.dist.is_main)
    for it in bar:
        if it == start_b and start_b > 0 and start <= start_b:
            _stage_b_reset(ctx, teacher, start_b)
            model = wrap_ddp(ctx.model, ctx)
        in_b = it >= start_b
        record: dict = {}
        batch = clock.next(lab_iter).to(ctx.device)
        with timer("depth"):
            ctx.provider.fill(batch)
        with timer("labelled"):
            losses = supervised_losses(ctx, model, batch)
        if in_b:
            if unl_iter is None:
                unl_iter = iter(train_loader(unlabeled, cfg, ctx.dist, semi.unlabeled_batch_size,
                                             it - start_b, seed_offset=1))
            ub = clock.next(unl_iter).to(ctx.device)
            with timer("depth"):
                ctx.provider.fill(ub)
            rgb_pl, depth_pl = teacher_pseudo_labels(ctx, teacher, ub, timer)
            with timer("augment"):
                strong = strong_view(ub.images, ub.valid, augment)
            with timer("student_forward"):
                out = _forward(ctx, model, strong, ub)
            with timer("unsup_loss"):
                loss_rgb = ctx.criterion(out, rgb_pl)
                loss_depth = ctx.criterion(out, depth_pl) if depth_pl is not None else None
            with timer("controller"):
                stats = controller_stats(ctx, rgb_pl, depth_pl, loss_rgb, loss_depth) if depth_pl is not None else {}
                w = controller.update(it - start_b, stats)
            unsup = combine_unsup_losses(loss_rgb, loss_depth, w, semi.unsup_weight)
            record = {"loss_sup": float(sum(v.detach() for v in losses.values())),
                      "loss_unsup": float(sum(v.detach() for v in unsup.values())),
                      "pseudo/rgb_per_image": sum(len(p["labels"]) for p in rgb_pl) / len(rgb_pl)}
            if depth_pl is not None:  # the weight only means something when there are depth pseudo-labels
                record["controller/weight"] = w
                record["pseudo/depth_per_image"] = sum(len(p["labels"]) for p in depth_pl) / len(depth_pl)
                record["pseudo/agreement"] = stats["agreement"]
            losses = {**losses, **unsup}
        check_finite(losses, it, ctx.out_dir)
        lr = base_lr(ctx.scheduler, schedules["B" if in_b else "A"])  # the rate this step uses
        with timer("backward_step"):
            optimizer_step(ctx, sum(losses.values()), model.parameters())
        if in_b:
            b_step = it + 1 - start_b
            with timer("ema"):
                if b_step >= semi.burn_in_iter:
                    broadcast_buffers(ctx.model)  # live BN statistics differ by process; the teachers must not
                if b_step == semi.burn_in_iter:
                    copy_student_to_teacher(teacher, ctx.model)
                elif b_step > semi.burn_in_iter:
                    ema_update(teacher, ctx.model, semi.ema_decay, buffers=semi.ema_buffers)
        step = it + 1
        if due(step, cfg.train.log_period, cfg.train.max_iter):
            terms = main_loss_terms(losses)
            bar.set_postfix(loss=f"{terms['loss']:.3f}", stage="B" if in_b else "A")
            ctx.log.write({"iter": step, "stage": "B" if in_b else "A", "loss": terms["loss"], **record,
                           "lr": lr, "time": time.perf_counter() - t0,
                           "data_time": clock.waited, **timer.log()})
        if due(step, cfg.train.checkpoint_period, cfg.train.max_iter):
            extra = {"teacher": teacher.state_dict(), "controller": controller.state_dict()} if in_b else {}
            save_run_checkpoint(ctx, step, **extra)
        if due(step, cfg.train.eval_period, cfg.train.max_iter):
            # the teacher is the model that is kept and reported in stage B (as in GD)
            metrics = periodic_eval(ctx, teacher if in_b else ctx.model, step)
            if in_b and step == cfg.train.max_iter:
                periodic_eval(ctx, ctx.model, step, prefix="student")
    save_final(ctx, teacher if cfg.train.max_iter > start_b else None)
    return metrics
