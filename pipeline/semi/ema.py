"""The teacher as an exponential moving average (EMA) of the student, after Guided Distillation.

Stage B of the teacher-student recipe keeps the teacher frozen until the burn-in step, then copies
the student into it (`copy_student_to_teacher`) and from then on moves it towards the student after
every optimiser step (`ema_update`):

    t <- decay * t + (1 - decay) * s        for every parameter and floating-point buffer

Buffers: floating-point buffers are *averaged* like the parameters (timm's `ModelEmaV2` and Guided
Distillation's EMA do the same over the whole state dict). For the frozen-BatchNorm backbone of
Mask2Former the running statistics are identical in teacher and student, so averaging them is a
no-op; for a BatchNorm that does train, averaging gives the teacher statistics that match its own
averaged weights rather than the student's latest batch. Integer buffers (`num_batches_tracked`)
cannot be averaged and are copied. `buffers="copy"` copies every buffer instead.

Both functions check that teacher and student have the same parameter and buffer names and
shapes, and name the first mismatch (a teacher of another architecture is an error, not a silent
partial update). A student wrapped in `DistributedDataParallel`/`DataParallel` is unwrapped.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

BufferMode = Literal["average", "copy"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a `DistributedDataParallel`/`DataParallel` wrapper (or the model itself)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of the student with gradients off and in eval mode (the teacher never trains)."""
    teacher = copy.deepcopy(unwrap(student))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _paired(
    teacher: nn.Module, student: nn.Module
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """(teacher, student) tensor pairs for parameters and for buffers, checked name by name."""
    teacher, student = unwrap(teacher), unwrap(student)
    pairs = []
    for kind, t_named, s_named in (
        ("parameter", dict(teacher.named_parameters()), dict(student.named_parameters())),
        ("buffer", dict(teacher.named_buffers()), dict(student.named_buffers())),
    ):
        if t_named.keys() != s_named.keys():
            only_t = sorted(set(t_named) - set(s_named))[:5]
            only_s = sorted(set(s_named) - set(t_named))[:5]
            raise ValueError(
                f"teacher and student differ in their {kind}s: only in teacher {only_t}, only in student {only_s}"
            )
        for name, t in t_named.items():
            s = s_named[name]
            if t.shape != s.shape or t.dtype != s.dtype:
                raise ValueError(
                    f"teacher and student differ at {kind} '{name}': teacher {tuple(t.shape)} {t.dtype}, "
                    f"student {tuple(s.shape)} {s.dtype}"
                )
        pairs.append([(t_named[n], s_named[n]) for n in t_named])
    return pairs[0], pairs[1]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, buffers: BufferMode = "average") -> None:
    """In place: `t = decay * t + (1 - decay) * s` over parameters and floating-point buffers.

    `decay` in [0, 1]: 1 keeps the teacher, 0 copies the student. Integer buffers are copied;
    `buffers="copy"` copies all buffers.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    if buffers not in ("average", "copy"):
        raise ValueError(f"buffers must be 'average' or 'copy', got {buffers!r}")
    params, bufs = _paired(teacher, student)
    averaged = list(params)
    for t, s in bufs:
        if buffers == "average" and t.is_floating_point():
            averaged.append((t, s))
        else:
            t.copy_(s)
    if averaged:
        ts, ss = [t for t, _ in averaged], [s for _, s in averaged]
        # the docstring's formula term by term (tests check it exactly); foreach: a few kernels, not 2 per tensor
        torch._foreach_mul_(ts, decay)
        torch._foreach_add_(ts, ss, alpha=1.0 - decay)


@torch.no_grad()
def copy_student_to_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """In place: every teacher parameter and buffer becomes a copy of the student's (the burn-in step)."""
    params, bufs = _paired(teacher, student)
    for t, s in params + bufs:
        t.copy_(s)
