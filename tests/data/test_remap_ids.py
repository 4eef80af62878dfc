"""remap-ids: train and val JSONs numbered alike get ids unique across both; annotations follow; nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dgseg.depth_cache.images import merge_records, records_from_json
from dgseg.pipeline.data.coco import DataError, load_coco
from dgseg.pipeline.data.remap_ids import remap_ids

REPO = Path(__file__).resolve().parents[2]


def _coco(path: Path, names: list[str], with_anns: bool = True) -> Path:
    images = [{"id": i + 1, "file_name": n, "height": 4, "width": 4} for i, n in enumerate(names)]
    anns = [{"id": 10 + i, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 16, "bbox": [0, 0, 4, 4],
             "segmentation": {"size": [4, 4], "counts": [0, 16]}} for i in range(len(names))] if with_anns else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {"v": 1}, "images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "person"}]}))
    return path


@pytest.fixture
def pair(tmp_path):
    train = _coco(tmp_path / "ann" / "train.json", ["a.jpg", "b.jpg", "c.jpg"])
    val = _coco(tmp_path / "ann" / "val.json", ["x.jpg", "y.jpg"])
    return train, val


def test_overlapping_ids_are_an_error_that_points_to_remap_ids(pair, tmp_path):
    train, val = pair
    with pytest.raises(ValueError, match=r"image id 1 names two files.*cli\.py remap-ids"):
        merge_records([records_from_json(train, tmp_path / "train"), records_from_json(val, tmp_path / "val")])


def test_remap_keeps_the_first_file_and_moves_only_repeated_ids(pair, tmp_path):
    train, val = pair
    before = (train.read_text(), val.read_text())
    result = remap_ids([train, val], tmp_path / "out")
    assert (train.read_text(), val.read_text()) == before  # the inputs are never changed
    new_train, new_val = load_coco(result.outputs[0]), load_coco(result.outputs[1])
    assert [r["id"] for r in new_train.images] == [1, 2, 3]  # its cache entries stay valid
    assert [r["id"] for r in new_val.images] == [4, 5]
    assert json.loads(result.outputs[1].read_text())["info"] == {"v": 1}  # other keys kept
    # annotations follow their image
    by_file = {r["id"]: r["file_name"] for r in new_val.images}
    assert {by_file[a["image_id"]] for anns in new_val.anns_by_image.values() for a in anns} == {"x.jpg", "y.jpg"}
    assert json.loads(result.map_path.read_text())[str(val)] == {"output": str(result.outputs[1]),
                                                                 "changed": {"1": 4, "2": 5}}
    assert json.loads(result.map_path.read_text())[str(train)]["changed"] == {}
    merged = merge_records([records_from_json(result.outputs[0], tmp_path / "train"),
                            records_from_json(result.outputs[1], tmp_path / "val")])
    assert len(merged) == 5  # one cache id per image now


def test_free_ids_are_kept_and_new_ids_never_collide(tmp_path):
    a = _coco(tmp_path / "a.json", ["1.jpg", "2.jpg"])  # ids 1, 2
    b = tmp_path / "b.json"  # ids 2, 7: 7 is free and stays, 2 moves above every id (8)
    b.write_text(json.dumps({"images": [{"id": 2, "file_name": "p.jpg", "height": 4, "width": 4},
                                        {"id": 7, "file_name": "q.jpg", "height": 4, "width": 4}]}))
    result = remap_ids([a, b], tmp_path / "out")
    assert [r["id"] for r in json.loads(result.outputs[1].read_text())["images"]] == [8, 7]


def test_bad_inputs_are_refused_before_anything_is_written(pair, tmp_path):
    train, val = pair
    with pytest.raises(DataError, match="overwrite the input"):
        remap_ids([train, val], train.parent)
    other = _coco(tmp_path / "other" / "train.json", ["z.jpg"])
    with pytest.raises(DataError, match="several inputs are named train.json"):
        remap_ids([train, other], tmp_path / "out")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [{"id": "x", "file_name": "a", "height": 1, "width": 1}]}))
    with pytest.raises(DataError, match=r"broken\.json: image ids must be integers"):
        remap_ids([train, broken], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_remap_ids_command(pair, tmp_path):
    train, val = pair
    proc = subprocess.run([sys.executable, "cli.py", "remap-ids", str(train), str(val), "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{tmp_path / 'o' / 'val.json'}: 2 ids changed" in proc.stdout
    assert (tmp_path / "o" / "id_map.json").is_file()
