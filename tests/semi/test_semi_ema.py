from __future__ import annotations

import pytest
import torch
from dgseg.pipeline.semi.ema import copy_student_to_teacher, ema_update, make_teacher
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(2, width)
        self.bn = nn.BatchNorm1d(width)  # float buffers + an int64 num_batches_tracked


def _tiny_pair(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    teacher, student = Tiny().to(dtype), Tiny().to(dtype)
    with torch.no_grad():
        for m in (teacher, student):
            m.bn.running_mean.normal_()
            m.bn.running_var.uniform_(0.5, 2.0)
        student.bn.num_batches_tracked.fill_(7)
    return teacher, student


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_one_update_is_decay_weighted_mean():
    teacher, student = _tiny_pair()
    t0, s = _state(teacher), _state(student)
    decay = 0.9
    ema_update(teacher, student, decay)
    after = teacher.state_dict()
    for k, v in after.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, decay * t0[k] + (1 - decay) * s[k], rtol=0, atol=1e-15)
        else:
            assert torch.equal(v, s[k])  # integer buffer copied
    # the student is untouched
    for k, v in student.state_dict().items():
        assert torch.equal(v, s[k])


def test_k_updates_with_constant_student_closed_form():
    teacher, student = _tiny_pair()
    t0, s = _state(teacher), _state(student)
    decay, k = 0.7, 13
    for _ in range(k):
        ema_update(teacher, student, decay)
    for name, v in teacher.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, s[name] + decay**k * (t0[name] - s[name]), rtol=0, atol=1e-12)


def test_decay_edges_and_float32():
    teacher, student = _tiny_pair(dtype=torch.float32)
    t0 = _state(teacher)
    ema_update(teacher, student, 1.0)
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, t0[k])
    ema_update(teacher, student, 0.0)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, student.state_dict()[k])
    with pytest.raises(ValueError, match="decay"):
        ema_update(teacher, student, 1.5)


def test_buffer_copy_mode():
    teacher, student = _tiny_pair()
    t0, s = _state(teacher), _state(student)
    ema_update(teacher, student, 0.5, buffers="copy")
    assert torch.equal(teacher.bn.running_mean, s["bn.running_mean"])
    torch.testing.assert_close(teacher.lin.weight, 0.5 * t0["lin.weight"] + 0.5 * s["lin.weight"], rtol=0, atol=1e-15)


def test_copy_student_to_teacher_and_make_teacher():
    teacher, student = _tiny_pair()
    copy_student_to_teacher(teacher, student)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, student.state_dict()[k])
    fresh = make_teacher(nn.DataParallel(student))
    assert not fresh.training and all(not p.requires_grad for p in fresh.parameters())
    assert all(p.requires_grad for p in student.parameters())
    # a copy, not an alias
    with torch.no_grad():
        student.lin.weight.add_(1.0)
    assert not torch.equal(fresh.lin.weight, student.lin.weight)


def test_architecture_mismatch_names_the_tensor():
    teacher = Tiny(width=3)
    student = Tiny(width=4)
    with pytest.raises(ValueError, match="lin.weight"):
        ema_update(teacher, student, 0.9)
    other = nn.Sequential(nn.Linear(2, 3))
    with pytest.raises(ValueError, match="only in teacher"):
        copy_student_to_teacher(teacher, other)
