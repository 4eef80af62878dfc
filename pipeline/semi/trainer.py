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

import time

import torch
from dgseg.pipeline.config import Config, TrainConfig
from dgseg.pipeline.engine.accumulate import micro_steps, scale_terms, shares, split_batch
from dgseg.pipeline.engine.checkpoint import load_checkpoint, load_model_state
from dgseg.pipeline.engine.context import RunContext, build_context, check_finite, train_loader
from dgseg.pipeline.engine.distributed import all_reduce_sum, broadcast_buffers
from dgseg.pipeline.engine.optim import base_lr, build_optimizer, build_scheduler, stage_schedule
from dgseg.pipeline.engine.step_timer import StepTimer
from dgseg.pipeline.engine.trainer import (
    LoaderClock,
    batch_shares,
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


def _forward(ctx: RunContext, model: nn.Module, images: torch.Tensor, batch) -> dict:
    with ctx.autocast:
        return model(images, batch.features if ctx.use_depth else None, ~batch.valid)


def supervised_losses(ctx: RunContext, model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """Labelled loss on the RGB view, plus `semi.depth_view_weight` x the loss on the depth view when
    the teacher must read depth (the depth view would otherwise double the supervised loss)."""
    losses = ctx.criterion(_forward(ctx, model, batch.images, batch), batch.targets)
    if ctx.cfg.semi.depth_pseudo_labels:
        view = render_depth_view(batch.depth, batch.valid)
        depth_losses = ctx.criterion(_forward(ctx, model, view, batch), batch.targets)
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
            view = render_depth_view(batch.depth, batch.valid)
            out_depth = _forward(ctx, teacher, view, batch)
        with timer("pseudo_labels"):
            depth = label(out_depth, size, batch.valid)
    return rgb, depth


def labelled_micro_steps(ctx: RunContext, model: nn.Module, batch, timer: StepTimer, it: int) -> dict:
    """Back-propagate the labelled loss of `batch` in `train.accumulate` micro-batches; its summed terms."""
    n = ctx.cfg.train.accumulate

    def loss(_: int, part) -> dict[str, torch.Tensor]:
        part = part.to(ctx.device, non_blocking=True)
        with timer("depth"):
            ctx.provider.fill(part)
        with timer("labelled"):
            losses = supervised_losses(ctx, model, part)
        check_finite(losses, it, ctx.out_dir)
        return losses

    return micro_steps(model, split_batch(batch, n), loss, batch_shares(ctx, batch.targets, n), timer)


def unlabelled_micro_steps(ctx: RunContext, model: nn.Module, teacher: nn.Module, ub, w: float, augment,
                           timer: StepTimer, it: int) -> tuple[dict, dict, list[dict], list[dict] | None]:
    """The unlabelled half of a stage-B step in `train.accumulate` micro-batches: the teacher labels every
    part first (the pseudo-label counts of the whole batch normalise each part's loss), then the student
    learns from each part. Returns (summed unsup terms, the Depth Controller's raw measurements summed
    over the parts ({} without depth pseudo-labels), the RGB and the depth pseudo-label sets)."""
    semi, n, m = ctx.cfg.semi, ctx.cfg.train.accumulate, ctx.cfg.model
    parts = [p.to(ctx.device, non_blocking=True) for p in split_batch(ub, n)]
    for p in parts:
        with timer("depth"):
            ctx.provider.fill(p)
    labels = [teacher_pseudo_labels(ctx, teacher, p, timer) for p in parts]
    reduce = lambda v: all_reduce_sum(v, ctx.device)  # noqa: E731
    rgb_shares = shares([lab[0] for lab in labels], m.num_queries, m.no_object_weight, reduce)
    depth_shares = (shares([lab[1] for lab in labels], m.num_queries, m.no_object_weight, reduce)
                    if semi.depth_pseudo_labels else None)
    raw: dict[str, float] = {}

    def loss(i: int, part) -> dict[str, torch.Tensor]:
        rgb_pl, depth_pl = labels[i]
        with timer("augment"):
            strong = strong_view(part.images, part.valid, augment)
        with timer("student_forward"):
            out = _forward(ctx, model, strong, part)
        with timer("unsup_loss"):
            loss_rgb = scale_terms(ctx.criterion(out, rgb_pl), rgb_shares[i])
            loss_depth = scale_terms(ctx.criterion(out, depth_pl), depth_shares[i]) if depth_pl is not None else None
        if depth_pl is not None:
            with timer("controller"):
                c = semi.controller
                for k, v in measure_step(rgb_pl, depth_pl, loss_rgb, loss_depth, iou_threshold=c.agreement_iou,
                                         class_aware=c.agreement_class_aware).items():
                    raw[k] = raw.get(k, 0.0) + v
        unsup = combine_unsup_losses(loss_rgb, loss_depth, w, semi.unsup_weight)
        check_finite(unsup, it, ctx.out_dir)
        return unsup

    terms = micro_steps(model, parts, loss, [{}] * n, timer)  # each set's terms are rescaled in `loss`
    rgb = [p for lab in labels for p in lab[0]]
    depth = [p for lab in labels for p in lab[1]] if semi.depth_pseudo_labels else None
    return terms, raw, rgb, depth


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
    # a run may be stage A alone (start_b == end: a later run's stage B starts from its checkpoint);
    # semi.teacher_iters beyond train.max_iter is refused at load time (pipeline/config/checks.py)
    start_b, end = stage_b_start(cfg), cfg.train.max_iter
    out = {}
    if start_b > 0:
        out["A"] = stage_schedule(cfg.train, 0, start_b)
    if start_b < end:
        out["B"] = stage_schedule(cfg.train, start_b, end)
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
        lr = base_lr(ctx.scheduler, schedules["B" if in_b else "A"])  # the rate this step uses
        ctx.optimizer.zero_grad(set_to_none=True)
        losses = labelled_micro_steps(ctx, model, clock.next(lab_iter), timer, it)
        if in_b:
            if unl_iter is None:
                unl_iter = iter(train_loader(unlabeled, cfg, ctx.dist, semi.unlabeled_batch_size,
                                             it - start_b, seed_offset=1))
            # w comes from the measurements up to the last step: one update per step, whatever the micro-batches
            w = controller.weight
            unsup, raw, rgb_pl, depth_pl = unlabelled_micro_steps(ctx, model, teacher, clock.next(unl_iter), w,
                                                                  augment, timer, it)
            with timer("controller"):
                stats = finish_measurements(reduce_measurements(
                    raw, lambda v: all_reduce_sum(v, ctx.device), ctx.dist.world_size)) if raw else {}
                controller.update(it - start_b, stats)
            record = {"loss_sup": sum(losses.values()), "loss_unsup": sum(unsup.values()),
                      "pseudo/rgb_per_image": sum(len(p["labels"]) for p in rgb_pl) / len(rgb_pl)}
            if depth_pl is not None:  # the weight only means something when there are depth pseudo-labels
                record["controller/weight"] = w
                record["pseudo/depth_per_image"] = sum(len(p["labels"]) for p in depth_pl) / len(depth_pl)
                record["pseudo/agreement"] = stats["agreement"]
            losses = {**losses, **unsup}
        with timer("backward_step"):
            optimizer_step(ctx, model.parameters())
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
            record = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in record.items()}
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
