"""What a run folder holds (log.txt, TensorBoard events, a bounded number of checkpoints, final
weights) and how a notebook uses it (`Predictor.from_run`, depth in memory, numpy and COCO out)."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from dgseg.depth_cache.estimators.files import read_depth_file
from dgseg.pipeline.engine.checkpoint import (
    LAST,
    CheckpointError,
    load_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    save_final_weights,
)
from dgseg.pipeline.engine.metrics_log import MetricsLog
from dgseg.pipeline.engine.predictor import Predictor
from dgseg.pipeline.engine.tb_log import LOGGER, run_logging
from PIL import Image


def test_keeps_the_newest_checkpoints_and_never_the_marked_one(tmp_path):
    for it in (1, 2, 3, 4):
        save_checkpoint(tmp_path, it, {"x": torch.zeros(1)}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000003.pth", "model_0000004.pth"]
    (tmp_path / LAST).write_text("model_0000003.pth")  # e.g. the marker of a run rewound by hand
    save_checkpoint(tmp_path, 5, {"x": torch.zeros(1)}, keep=0)  # 0 keeps all
    (tmp_path / LAST).write_text("model_0000003.pth")
    assert [p.name for p in prune_checkpoints(tmp_path, 1)] == ["model_0000004.pth"]
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000003.pth", "model_0000005.pth"]


def test_final_weights_read_back_alike_from_pth_and_safetensors(tmp_path):
    models = {"model": {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}, "teacher": {"a.weight": torch.ones(3, 2)}}
    config = {"train": {"max_iter": 7}, "model": {"backbone": "resnet18"}}
    pth, st = save_final_weights(tmp_path, models, config, 7)
    for path in (pth, st):
        ckpt = load_checkpoint(path)
        assert ckpt["config"] == config and ckpt["iteration"] == 7 and "optimizer" not in ckpt
        for name, sd in models.items():
            assert sorted(ckpt[name]) == sorted(sd) and all(torch.equal(ckpt[name][k], v) for k, v in sd.items())
    assert resolve_checkpoint(tmp_path) == pth  # a run folder: the final weights before any checkpoint
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="foreign.safetensors.*dgseg"):
        load_checkpoint(tmp_path / "foreign.safetensors")


class _Pickled:
    pass


def test_a_pickled_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    torch.save({"model": {}, "extra": _Pickled()}, tmp_path / "obj.pth")
    with pytest.raises(CheckpointError, match="obj.pth") as err:
        load_checkpoint(tmp_path / "obj.pth")
    assert "_Pickled" in str(err.value) and "weights_only=False" not in str(err.value)


def test_log_file_per_run_and_tensorboard_off_said_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    handlers = list(LOGGER.handlers)
    with run_logging(tmp_path / "a"):
        log = MetricsLog(tmp_path / "a" / "metrics.jsonl")
        log.write({"iter": 1, "loss": 2.5})
        log.write({"iter": 2, "loss": 2.25})
        log.images("val/predictions", [np.zeros((4, 4, 3), np.uint8)], 2)
    with run_logging(tmp_path / "b"):
        LOGGER.info("only in b")
    assert LOGGER.handlers == handlers  # nothing left behind for the next run in this process
    text = (tmp_path / "a" / "log.txt").read_text()
    assert text.count("TensorBoard logging is off") == 1
    assert "iter: 1  loss: 2.5" in text and "iter: 2  loss: 2.25" in text and "only in b" not in text
    assert "only in b" in (tmp_path / "b" / "log.txt").read_text()
    assert not list((tmp_path / "a").glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def semi_run(tiny_cache, tmp_path_factory):
    """A finished teacher-student run: stage A 2 steps, stage B 2 steps, a checkpoint every step."""
    from dgseg.pipeline.train import train

    from tests.engine.conftest import _tiny_config

    run = tmp_path_factory.mktemp("run_outputs") / "run"
    cfg = _tiny_config(tiny_cache, run, "train.max_iter=4", "train.checkpoint_period=1", "train.keep_checkpoints=2",
                       "semi.enabled=true", "semi.teacher_iters=2", "semi.burn_in_iter=1",
                       "semi.score_threshold=0.0", "train.device=cpu")
    train(cfg)
    return run


def test_run_folder_holds_log_tensorboard_bounded_checkpoints_and_final_weights(semi_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert sorted(p.name for p in semi_run.glob("model_*.pth")) == ["model_0000003.pth", "model_0000004.pth",
                                                                     "model_final.pth"]
    last, final = load_checkpoint(semi_run / "model_0000004.pth"), load_checkpoint(semi_run / "model_final.safetensors")
    assert "optimizer" not in final and final["config"]["train"]["max_iter"] == 4
    for key in ("model", "teacher"):
        assert all(torch.equal(final[key][k], v) for k, v in last[key].items())
    log = (semi_run / "log.txt").read_text()
    assert "iter: 4" in log and "val/AP" in log and "model_final.safetensors" in log
    rows = [json.loads(s) for s in (semi_run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(semi_run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    numeric = {k for r in rows for k, v in r.items() if k != "iter" and isinstance(v, (int, float))}
    assert {"loss", "lr", "controller/weight", "pseudo/agreement", "pseudo/rgb_per_image", "val/AP",
            "student/AP"} <= numeric
    assert numeric <= tags  # every scalar of metrics.jsonl
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert {"val/predictions/0", "student/predictions/0"} <= set(events.Tags()["images"])


def test_notebook_predictor_from_run_with_depth_in_memory(semi_run, tiny_cache):
    from pycocotools.coco import COCO

    predictor = Predictor.from_run(semi_run)
    assert predictor.checkpoint.name == "model_final.pth" and predictor.which == "teacher"
    path = sorted((tiny_cache / "images/val").glob("*.png"))[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    depth = read_depth_file(next((tiny_cache / "depth").glob(f"{path.stem}.*")))
    result = predictor(rgb, depth=depth)
    by_file = predictor(path)  # the same map, read from the run's depth folder
    torch.testing.assert_close(result.scores, by_file.scores)
    assert torch.equal(result.masks, by_file.masks) and len(result) > 0
    arrays = result.to_numpy()
    assert arrays["masks"].dtype == bool and arrays["masks"].shape == (len(result), *rgb.shape[:2])
    assert arrays["scores"].shape == (len(result),) and arrays["boxes"].shape == (len(result), 4)
    assert list(arrays["category_ids"]) == result.category_ids
    gt = COCO(str(tiny_cache / "annotations/val.json"))
    image_id = next(i["id"] for i in gt.dataset["images"] if i["file_name"].endswith(path.name))
    dt = gt.loadRes(result.to_coco(image_id))  # what pycocotools reads
    assert len(dt.getAnnIds()) == len(result)
    student = Predictor.from_run(semi_run, which="student")
    pairs = zip(student.model.state_dict().values(), predictor.model.state_dict().values(), strict=True)
    assert student.which == "student" and any(not torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match=r"\(H, W\) map"):
        predictor(rgb, depth=np.zeros((2, 3, 4)))


def test_from_run_names_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        Predictor.from_run(tmp_path)


def test_logger_is_quiet_outside_a_run():
    assert not any(isinstance(h, logging.FileHandler) for h in LOGGER.handlers)
