from __future__ import annotations

import itertools

import pytest
import torch
from dgseg.pipeline.config import TrainConfig
from dgseg.pipeline.engine.checkpoint import (
    CheckpointError,
    last_checkpoint,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from dgseg.pipeline.engine.optim import lr_factor
from dgseg.pipeline.engine.sampler import ResumableBatchSampler, SeededDataset


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resume_continues_the_same_stream():
    full = take(ResumableBatchSampler(10, 4, seed=3), 9)
    resumed = take(ResumableBatchSampler(10, 4, seed=3, start_iter=5), 4)
    assert resumed == full[5:]


def test_each_epoch_is_a_permutation_and_seeds_differ():
    batches = take(ResumableBatchSampler(12, 4, seed=0), 6)  # two epochs
    idx = [i for b in batches for i, _ in b]
    assert sorted(idx[:12]) == list(range(12)) and sorted(idx[12:]) == list(range(12))
    assert idx[:12] != idx[12:]
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)


def test_ranks_partition_the_global_batch():
    one = take(ResumableBatchSampler(9, 4, seed=1), 5)
    r0 = take(ResumableBatchSampler(9, 4, seed=1, rank=0, world_size=2), 5)
    r1 = take(ResumableBatchSampler(9, 4, seed=1, rank=1, world_size=2), 5)
    for g, a, b in zip(one, r0, r1, strict=True):
        assert sorted(a + b) == sorted(g) and not set(a) & set(b)
    with pytest.raises(ValueError, match="divisible"):
        ResumableBatchSampler(9, 3, seed=0, world_size=2)


def test_seeded_dataset_is_reproducible_and_leaves_main_rng_alone():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.rand(3)

    ds = SeededDataset(Noisy())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = ds[(2, 77)], ds[(2, 77)]
    assert torch.equal(a, b) and not torch.equal(a, ds[(2, 78)])
    assert torch.equal(torch.get_rng_state(), before)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path, 7, {"model": model.state_dict()})
    assert last_checkpoint(tmp_path) == path and not list(tmp_path.glob("*.tmp"))
    ckpt = load_checkpoint(path)
    assert ckpt["iteration"] == 7
    other = torch.nn.Linear(3, 2)
    load_model_state(other, ckpt["model"], str(path))
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model_state(torch.nn.Linear(4, 2), ckpt["model"], str(path))
    with pytest.raises(CheckpointError, match="missing"):
        load_model_state(torch.nn.Sequential(torch.nn.Linear(3, 2)), ckpt["model"], str(path))
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(tmp_path / "bad.pth")


class Evil:
    pass


def test_checkpoint_refuses_pickled_objects(tmp_path):
    torch.save({"obj": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pth")


def test_lr_schedule():
    cfg = TrainConfig(max_iter=100, warmup_iters=10, schedule="poly")
    assert lr_factor(0, cfg) == pytest.approx(0.001)
    assert lr_factor(10, cfg) == pytest.approx((1 - 0.1) ** 0.9)
    assert lr_factor(100, cfg) == 0
    step = TrainConfig(max_iter=100, warmup_iters=0, schedule="step", steps=[50, 80], gamma=0.1)
    assert [lr_factor(s, step) for s in (0, 49, 50, 80)] == pytest.approx([1, 1, 0.1, 0.01])


def test_periodic_work_schedule():
    from dgseg.pipeline.engine.trainer import due

    assert [s for s in range(1, 11) if due(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if due(s, 0, 10)] == [10]  # period 0 = only at the end, no crash
