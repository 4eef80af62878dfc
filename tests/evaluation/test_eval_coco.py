"""COCO results and mask AP, checked against direct pycocotools runs on generated ground truth."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from dgseg.pipeline.evaluation.coco_eval import MAIN_METRICS, coco_from_dict, evaluate_segm, format_table, save_metrics
from dgseg.pipeline.evaluation.evaluator import Evaluator
from dgseg.pipeline.evaluation.results import (
    category_names,
    contiguous_category_ids,
    decode_masks,
    encode_masks,
    load_results,
    prediction_to_results,
    save_results,
)
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

CATEGORIES = [{"id": 9, "name": "cup"}, {"id": 1, "name": "box"}, {"id": 5, "name": "ball"}]  # unsorted on purpose
SIZES = [(160, 200), (120, 96), (200, 180), (64, 80), (150, 150), (100, 140)]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major mask, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random ellipse or rectangle, from tiny (small) to most of the image (large)."""
    side = rng.choice([rng.uniform(4, 14), rng.uniform(18, 45), rng.uniform(100, 160)])
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = side * rng.uniform(0.6, 1.4) / 2, side * rng.uniform(0.6, 1.4) / 2
    yy, xx = np.mgrid[:h, :w]
    if rng.random() < 0.5:
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    else:
        m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    if m.sum() < 3:
        m[int(min(cy, h - 1)), int(min(cx, w - 1))] = True
    return m


def make_gt(seed: int = 0, crowd: bool = True) -> tuple[COCO, dict[int, list[tuple[np.ndarray, int]]]]:
    """A small COCO ground truth (RLE masks, all three area ranges, one crowd region) and the
    non-crowd instances per image as (mask, contiguous label)."""
    rng = np.random.default_rng(seed)
    sorted_ids = sorted(c["id"] for c in CATEGORIES)
    images, anns, inst = [], [], {}
    for i, (h, w) in enumerate(SIZES):
        img_id = 100 + 7 * i
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id}.png"})
        inst[img_id] = []
        for _ in range(rng.integers(2, 7)):
            m = _blob(rng, h, w)
            label = int(rng.integers(0, len(sorted_ids)))
            rle = encode_masks(m[None])[0]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": sorted_ids[label],
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
            inst[img_id].append((m, label))
        if crowd and i == 0:
            m = np.zeros((h, w), bool)
            m[5:40, 120:190] = True
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": sorted_ids[0],
                    "segmentation": _uncompressed_rle(m),
                    "area": float(m.sum()),
                    "bbox": [120.0, 5.0, 70.0, 35.0],
                    "iscrowd": 1,
                }
            )
    return coco_from_dict({"images": images, "annotations": anns, "categories": CATEGORIES}), inst


def _prediction(masks: list[np.ndarray], scores: list[float], labels: list[int], shape) -> dict:
    m = np.stack(masks) if masks else np.zeros((0, *shape), bool)
    boxes = []
    for x in m:
        ys, xs = np.nonzero(x)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if ys.size else [0, 0, 0, 0])
    return {
        "masks": torch.from_numpy(m),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
    }


def gt_predictions(coco: COCO, inst) -> dict[int, dict]:
    return {
        img_id: _prediction(
            [m for m, _ in v],
            [1.0] * len(v),
            [lab for _, lab in v],
            (coco.imgs[img_id]["height"], coco.imgs[img_id]["width"]),
        )
        for img_id, v in inst.items()
    }


def perturbed_predictions(coco: COCO, inst, seed: int = 1) -> dict[int, dict]:
    """Ground truth degraded: dilated/eroded/shifted masks, dropped instances, wrong classes,
    duplicates, false positives, random scores."""
    rng = np.random.default_rng(seed)
    out = {}
    for img_id, v in inst.items():
        h, w = coco.imgs[img_id]["height"], coco.imgs[img_id]["width"]
        masks, scores, labels = [], [], []
        for m, lab in v:
            if rng.random() < 0.15:
                continue
            op = rng.integers(0, 4)
            if op == 0:
                p = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 4)))
            elif op == 1:
                p = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 3)))
            elif op == 2:
                p = np.roll(m, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
            else:
                p = m.copy()
            if rng.random() < 0.1:
                lab = int(rng.integers(0, 3))
            masks.append(p)
            scores.append(float(rng.random()))
            labels.append(lab)
            if rng.random() < 0.2:  # a duplicate, lower-scored
                masks.append(np.roll(p, 2, axis=1))
                scores.append(float(rng.random()) * 0.5)
                labels.append(lab)
        for _ in range(int(rng.integers(0, 4))):
            masks.append(_blob(rng, h, w))
            scores.append(float(rng.random()))
            labels.append(int(rng.integers(0, 3)))
        out[img_id] = _prediction(masks, scores, labels, (h, w))
    return out


def _to_results(coco: COCO, preds: dict[int, dict]) -> list[dict]:
    cats = contiguous_category_ids(coco)
    return [r for img_id, p in preds.items() for r in prediction_to_results(str(img_id), p, cats)]


def _rle(m: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _direct_cocoeval(coco: COCO, results: list[dict], img_ids=None, cat_ids=None) -> np.ndarray:
    """pycocotools straight, on a JSON round trip of the results without their boxes."""
    dets = json.loads(json.dumps([{k: v for k, v in r.items() if k != "bbox"} for r in results]))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), iouType="segm")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_category_mapping_is_sorted_ids():
    coco, _ = make_gt()
    assert contiguous_category_ids(coco) == [1, 5, 9]
    assert category_names(coco) == ["box", "ball", "cup"]


def test_rle_round_trip_and_json_safe(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 53)) < 0.3
    masks[2] = False
    masks[3] = True
    rles = encode_masks(torch.from_numpy(masks))
    assert encode_masks(masks) == rles  # numpy input, same strings
    assert all(isinstance(r["counts"], str) for r in rles)
    assert np.array_equal(decode_masks(rles), masks)
    # the per-mask encoding of pycocotools gives the same strings
    for m, r in zip(masks, rles, strict=True):
        ref = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ref["counts"].decode() == r["counts"] and list(ref["size"]) == list(r["size"])
    results = [
        {"image_id": 1, "category_id": 3, "segmentation": r, "score": 0.5, "bbox": [0.0, 0.0, 1.0, 1.0]} for r in rles
    ]
    path = save_results(results, tmp_path / "res.json")
    back = load_results(path)
    assert back == results
    assert np.array_equal(decode_masks([r["segmentation"] for r in back]), masks)


def test_prediction_to_results_fields_threshold_and_topk():
    coco, inst = make_gt()
    img_id = 100
    pred = gt_predictions(coco, inst)[img_id]
    n = pred["scores"].shape[0]
    pred["scores"] = torch.linspace(0.1, 0.9, n)
    res = prediction_to_results(str(img_id), pred, contiguous_category_ids(coco), score_threshold=0.3, max_detections=2)
    assert len(res) == 2
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
    assert res[0]["score"] == pytest.approx(0.9)
    last = n - 1
    m, lab = inst[img_id][last]
    assert res[0]["image_id"] == img_id and res[0]["category_id"] == [1, 5, 9][lab]
    assert np.array_equal(decode_masks([res[0]["segmentation"]])[0], m)
    x0, y0, w, h = res[0]["bbox"]
    ys, xs = np.nonzero(m)
    assert (x0, y0, x0 + w, y0 + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    json.dumps(res)  # JSON-safe
    # every kept instance carries its own mask, whatever the reordering by score
    res = prediction_to_results(img_id, pred, contiguous_category_ids(coco), score_threshold=0.3)
    kept = [k for k in range(n) if float(pred["scores"][k]) >= 0.3][::-1]
    assert len(res) == len(kept)
    for r, k in zip(res, kept, strict=True):
        assert np.array_equal(decode_masks([r["segmentation"]])[0], inst[img_id][k][0])
        assert r["category_id"] == [1, 5, 9][inst[img_id][k][1]]


def test_prediction_to_results_rejects_bad_labels_and_ids():
    coco, inst = make_gt()
    pred = gt_predictions(coco, inst)[100]
    pred["labels"][0] = 3
    with pytest.raises(ValueError, match="contiguous class indices"):
        prediction_to_results(100, pred, contiguous_category_ids(coco))
    with pytest.raises(ValueError, match="not a COCO image id"):
        prediction_to_results("a3f9", pred, contiguous_category_ids(coco))


def test_ground_truth_as_predictions_gives_ap_100():
    coco, inst = make_gt()
    m = evaluate_segm(coco, _to_results(coco, gt_predictions(coco, inst)))
    for name in MAIN_METRICS:
        assert math.isnan(m[name]) or m[name] == pytest.approx(100.0), name
    assert m["AP"] == pytest.approx(100.0)
    assert set(m["per_class_AP"]) == {"box", "ball", "cup"}
    assert all(v == pytest.approx(100.0) for v in m["per_class_AP"].values())
    # all three area ranges occur in the generated ground truth
    assert not any(math.isnan(m[k]) for k in ("APs", "APm", "APl"))


@pytest.mark.parametrize("seed", [0, 3])
def test_perturbed_matches_pycocotools_exactly(seed):
    coco, inst = make_gt(seed)
    results = _to_results(coco, perturbed_predictions(coco, inst, seed + 1))
    m = evaluate_segm(coco, results)
    ref = _direct_cocoeval(coco, results)
    ours = np.array([m[k] for k in MAIN_METRICS])
    expected = np.where(ref[:6] > -1, ref[:6] * 100, np.nan)
    np.testing.assert_array_equal(ours, expected)
    assert 5 < m["AP"] < 95  # really perturbed, really scoring something
    # per-class AP equals pycocotools restricted to that category
    for cat_id, name in zip([1, 5, 9], ["box", "ball", "cup"], strict=True):
        ref_k = _direct_cocoeval(coco, results, cat_ids=[cat_id])[0]
        assert m["per_class_AP"][name] == pytest.approx(ref_k * 100, abs=1e-12)
    # a results file read by pycocotools itself (bbox kept) agrees on the area-free metrics
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose([m["AP"], m["AP50"], m["AP75"]], ev.stats[:3] * 100, rtol=0, atol=1e-12)
    assert len(results) == m["num_detections"]
    assert [r["image_id"] for r in results] == [r["image_id"] for r in json.loads(json.dumps(results))]


def test_class_agnostic_ap_scores_masks_apart_from_their_classes():
    coco, inst = make_gt()
    # every instance's true mask under another class: no per-class hit, every class-agnostic one
    wrong = {i: [(m, (lab + 1) % 3) for m, lab in v] for i, v in inst.items()}
    results = _to_results(coco, gt_predictions(coco, wrong))
    assert evaluate_segm(coco, results)["AP"] < 5  # (a wrong-class mask may cover another instance)
    agnostic = evaluate_segm(coco, results, class_agnostic=True)
    assert agnostic["AP"] == pytest.approx(100.0) and agnostic["per_class_AP"] == {}
    # and it is pycocotools' useCats = 0 on perturbed predictions
    results = _to_results(coco, perturbed_predictions(coco, inst, 2))
    dets = json.loads(json.dumps([{k: v for k, v in r.items() if k != "bbox"} for r in results]))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), iouType="segm")
        ev.params.useCats = 0
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert evaluate_segm(coco, results, class_agnostic=True)["AP"] == pytest.approx(ev.stats[0] * 100, abs=1e-12)


def test_instance_class_hits_tell_missed_instances_from_wrong_classes():
    from dgseg.pipeline.evaluation.class_hits import instance_class_hits

    coco, inst = make_gt()
    n = sum(len(v) for v in inst.values())
    right = instance_class_hits(coco, _to_results(coco, gt_predictions(coco, inst)))
    assert right == {"instances": n, "found": 1.0, "right_class": 1.0}
    wrong = {i: [(m, (lab + 1) % 3) for m, lab in v] for i, v in inst.items()}
    assert instance_class_hits(coco, _to_results(coco, gt_predictions(coco, wrong)))["right_class"] == 0.0
    assert instance_class_hits(coco, [])["found"] == 0.0

    # two separate squares: one found under its class, one missed; then a better-scored wrong label
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 12:18, 12:18] = True
    gt = coco_from_dict({"images": [{"id": 1, "height": 20, "width": 20}], "categories": CATEGORIES,
                         "annotations": [{"id": k + 1, "image_id": 1, "category_id": [1, 5][k], "iscrowd": 0,
                                          "area": 36.0, "bbox": [0, 0, 1, 1],
                                          "segmentation": _rle(masks[k])} for k in range(2)]})  # fmt: skip
    near = masks[0].copy()
    near[2, 2:8] = False  # IoU 30/36: found
    res = [{"image_id": 1, "category_id": 1, "segmentation": _rle(near), "score": 0.5}]
    assert instance_class_hits(gt, res) == {"instances": 2, "found": 0.5, "right_class": 1.0}
    res.append({"image_id": 1, "category_id": 9, "segmentation": _rle(masks[0]), "score": 0.6})
    assert instance_class_hits(gt, res)["right_class"] == 0.0


def test_restricted_image_ids_match_pycocotools():
    coco, inst = make_gt()
    results = _to_results(coco, perturbed_predictions(coco, inst))
    subset = [100, 114, 128]
    m = evaluate_segm(coco, results, image_ids=subset)
    ref = _direct_cocoeval(coco, results, img_ids=subset)
    np.testing.assert_array_equal([m[k] for k in MAIN_METRICS], np.where(ref[:6] > -1, ref[:6] * 100, np.nan))
    assert m["num_images"] == 3
    assert m["AP"] != evaluate_segm(coco, results)["AP"]


def test_empty_results_give_ap_zero():
    coco, _ = make_gt()
    m = evaluate_segm(coco, [])
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["num_detections"] == 0
    assert m["per_class_AP"] == {"box": 0.0, "ball": 0.0, "cup": 0.0}


def test_class_absent_from_evaluated_images_is_nan_and_null_in_json(tmp_path):
    coco, inst = make_gt()
    # the first generated image that lacks a class (seed 0 has some; crowd regions do not count as
    # ground truth for AP, so look at the non-crowd instances)
    img_id, absent = next(
        (i, [n for k, n in enumerate(["box", "ball", "cup"]) if k not in {lab for _, lab in v}])
        for i, v in inst.items()
        if len({lab for _, lab in v}) < 3
    )
    m = evaluate_segm(coco, _to_results(coco, gt_predictions(coco, inst)), image_ids=[img_id])
    assert math.isnan(m["per_class_AP"][absent[0]])
    saved = json.loads(save_metrics(m, tmp_path / "m.json").read_text())
    assert saved["per_class_AP"][absent[0]] is None
    assert saved["AP"] == pytest.approx(100.0)


def test_unknown_result_image_id_is_a_clear_error():
    coco, inst = make_gt()
    results = _to_results(coco, gt_predictions(coco, inst))
    results[0] = {**results[0], "image_id": 99999}
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_segm(coco, results)


def test_format_table_lists_metrics_and_classes():
    coco, inst = make_gt()
    text = format_table(evaluate_segm(coco, _to_results(coco, perturbed_predictions(coco, inst))))
    lines = text.splitlines()
    assert lines[0].split() == list(MAIN_METRICS)
    assert len(lines[1].split()) == 6
    for name in ("box", "ball", "cup"):
        assert any(line.split()[0] == name for line in lines[2:] if line.strip())


def test_evaluator_over_batches_equals_evaluate_segm(tmp_path):
    coco, inst = make_gt()
    preds = perturbed_predictions(coco, inst)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(coco.dataset))
    ev = Evaluator(gt_path, output_dir=tmp_path / "out")
    ids = list(preds)
    for start in range(0, len(ids), 4):  # batches of 4, string ids as the pipeline passes them
        batch = ids[start : start + 4]
        ev.process([str(i) for i in batch], [preds[i] for i in batch])
    ev.process([str(ids[0])], [gt_predictions(coco, inst)[ids[0]]])  # repeated image: ignored
    m = ev.evaluate()
    ref = evaluate_segm(coco, _to_results(coco, preds))
    assert m == ref
    assert load_results(tmp_path / "out" / "coco_results.json") == ev.results
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["AP"] == pytest.approx(m["AP"])


def test_evaluator_restricts_to_processed_images_and_handles_no_detections():
    coco, inst = make_gt()
    preds = gt_predictions(coco, inst)
    ev = Evaluator(coco)
    ev.process([100, 107], [preds[100], preds[107]])
    m = ev.evaluate()
    assert m["AP"] == pytest.approx(100.0) and m["num_images"] == 2
    # the same predictions, evaluated over all ground-truth images, miss the others' instances
    ev_all = Evaluator(coco, restrict_to_processed=False)
    ev_all.process([100, 107], [preds[100], preds[107]])
    assert ev_all.evaluate()["AP"] < 100.0
    # every image processed, none detected: AP 0, no crash
    ev_empty = Evaluator(coco)
    empty = {"masks": torch.zeros(0, 10, 10, dtype=torch.bool), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    ev_empty.process(list(preds), [empty] * len(preds))
    m = ev_empty.evaluate()
    assert m["AP"] == 0.0 and m["num_images"] == len(preds)
    with pytest.raises(ValueError, match="not in the ground-truth"):
        ev_empty.process([5], [empty])


def _distributed_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        coco, inst = make_gt()
        preds = perturbed_predictions(coco, inst)
        ids = list(preds)
        # DistributedSampler style: strided shards, the last one padded with another rank's image
        shard = ids[rank::world] + ([ids[0]] if rank == world - 1 else [])
        ev = Evaluator(coco)
        ev.process([str(i) for i in shard], [preds[i] for i in shard])
        metrics = ev.evaluate()
        with open(f"{out_file}.{rank}", "w") as f:
            json.dump(metrics, f)
    finally:
        dist.destroy_process_group()


def test_evaluator_gathers_results_across_processes(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_distributed_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "m")), nprocs=world)
    coco, inst = make_gt()
    ref = evaluate_segm(coco, _to_results(coco, perturbed_predictions(coco, inst)))
    assert json.loads((tmp_path / "m.0").read_text()) == json.loads(json.dumps(ref))
    assert json.loads((tmp_path / "m.1").read_text()) == {}


def test_malformed_files_are_clear_errors(tmp_path):
    from dgseg.pipeline.evaluation.coco_eval import load_coco_gt

    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1,')
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_results(bad)
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_coco_gt(bad)
    no_seg = tmp_path / "noseg.json"
    no_seg.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5}]))
    with pytest.raises(ValueError, match=r"noseg.json: result 0 lacks \['segmentation'\]"):
        load_results(no_seg)
    not_coco = tmp_path / "notcoco.json"
    not_coco.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="notcoco.json: a COCO annotation file needs"):
        load_coco_gt(not_coco)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_gt(tmp_path / "missing.json")
