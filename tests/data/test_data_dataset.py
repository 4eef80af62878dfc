"""Datasets: images + instances + cached depth/features by image id; bad input fails at construction."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dgseg.pipeline.config import Config
from dgseg.pipeline.data.coco import DataError, load_coco
from dgseg.pipeline.data.collate import collate
from dgseg.pipeline.data.dataset import (
    InstanceDataset,
    UnlabeledDataset,
    build_train_dataset,
    build_unlabeled_dataset,
    build_val_dataset,
)
from dgseg.pipeline.data.splits import make_splits
from dgseg.pipeline.data.synthetic import generate_dataset
from PIL import Image


@dataclass
class Entry:
    depth: torch.Tensor
    features: dict = field(default_factory=dict)
    orig_size: tuple = (0, 0)


class FakeReader:
    """Stands in for depth_cache's CacheReader: depth from the dataset's own maps + a coarse 'path_4'."""

    def __init__(self, root, ids=None, size_override=None):
        self.root, self.ids, self.size_override = root, ids, size_override
        self.by_id = {}
        for split in ("train", "val"):
            for rec in load_coco(root / "annotations" / f"{split}.json").images:
                self.by_id[str(rec["id"])] = rec["file_name"]

    def missing(self, ids):
        return [i for i in ids if i not in self.by_id or (self.ids is not None and i not in self.ids)]

    def get(self, image_id):
        mm = np.asarray(Image.open(self.root / "depth" / self.by_id[image_id]), dtype=np.float32)
        inv = 1000.0 / mm
        d = torch.from_numpy((inv - inv.min()) / (inv.max() - inv.min()))[None]
        feats = {"path_4": F.interpolate(d[None].repeat(1, 4, 1, 1), size=(5, 7), mode="area")[0],
                 "depth_s8": F.avg_pool2d(d[None], 8)[0]}  # fmt: skip
        size = self.size_override or tuple(mm.shape)
        return Entry(F.interpolate(d[None], scale_factor=0.5, mode="area")[0], feats, size)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_dataset(root, num_train=20, num_val=4, size=64, seed=1)
    make_splits(root / "annotations" / "train.json", root / "splits", percents=[10], seeds=[0])
    return root


def _cfg(root, **data):
    cfg = Config()
    d = cfg.data
    d.image_dir, d.val_image_dir = str(root / "images" / "train"), str(root / "images" / "val")
    d.train_json, d.val_json = (
        str(root / "splits" / "train_10pct_seed0_labeled.json"),
        str(root / "annotations" / "val.json"),
    )
    d.unlabeled_list = str(root / "splits" / "train_10pct_seed0_unlabeled.json")
    d.image_size, d.test_size, d.feature_stride = 64, 48, 8
    cfg.model.depth_fusion.sources = {"res4": "path_4"}
    for k, v in data.items():
        setattr(d, k, v)
    return cfg


def test_instance_sample_matches_annotations(root):
    ds = InstanceDataset(root / "images" / "train", root / "annotations" / "train.json", reader=FakeReader(root))
    assert len(ds) == 20 and ds.num_classes == 3
    s = ds[3]
    rec = ds.images[3]
    assert s.image_id == str(rec["id"]) and s.orig_size == (64, 64) and s.image.shape == (3, 64, 64)
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=rec["id"]))
    assert len(s.masks) == len(anns) and s.masks.dtype == torch.bool
    for m, lab, a in zip(s.masks, s.labels.tolist(), anns, strict=True):
        assert int(m.sum()) == a["area"] and lab == a["category_id"] - 1
    assert s.depth.shape == (1, 32, 32) and set(s.features) == {"path_4", "depth_s8"}
    assert s.valid.all()
    pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy


def test_without_reader_no_depth(root):
    ds = UnlabeledDataset(root / "images" / "train", root / "splits" / "train_10pct_seed0_unlabeled.json")
    s = ds[0]
    assert s.depth is None and s.features == {} and s.masks.shape == (0, 64, 64)
    assert len(ds) == 18


def test_missing_cache_entries(root):
    covered = {str(i) for i in range(1, 21)} - {"4", "9"}
    with pytest.raises(DataError, match=r"2 of 20 images have no depth cache entry \(ids 4, 9\)"):
        InstanceDataset(
            root / "images" / "train", root / "annotations" / "train.json", reader=FakeReader(root, covered)
        )
    with pytest.warns(UserWarning, match="skipping 2 of 20"):
        ds = InstanceDataset(root / "images" / "train", root / "annotations" / "train.json",
                             reader=FakeReader(root, covered), skip_missing_cache=True)  # fmt: skip
    assert len(ds) == 18 and {r["id"] for r in ds.images}.isdisjoint({4, 9})


def test_stale_entry_and_missing_level(root):
    ds = InstanceDataset(root / "images" / "train", root / "annotations" / "train.json",
                         reader=FakeReader(root, size_override=(48, 64)))  # fmt: skip
    with pytest.raises(DataError, match="stale"):
        ds[0]
    ds = InstanceDataset(root / "images" / "train", root / "annotations" / "train.json", reader=FakeReader(root),
                         feature_levels=["path_3"])  # fmt: skip
    with pytest.raises(DataError, match="path_3"):
        ds[0]


def test_corrupt_image_names_the_file(root, tmp_path):
    import shutil

    img_dir = tmp_path / "imgs"
    shutil.copytree(root / "images" / "train", img_dir)
    (img_dir / "train_000002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = InstanceDataset(img_dir, root / "annotations" / "train.json")
    ds[0]
    with pytest.raises(DataError, match="train_000002.png: unreadable image"):
        ds[2]
    (img_dir / "train_000005.png").unlink()
    with pytest.raises(DataError, match="1 .*train_000005.png.* missing"):
        InstanceDataset(img_dir, root / "annotations" / "train.json")


def test_build_from_config_and_collate(root):
    cfg = _cfg(root)
    reader = FakeReader(root)
    train = build_train_dataset(cfg, reader)
    assert len(train) == 2
    torch.manual_seed(0)
    batch = collate([train[0], train[1]])
    assert batch.images.shape == (2, 3, 64, 64) and batch.depth.shape == (2, 1, 64, 64)
    assert set(batch.features) == {"path_4"} and batch.features["path_4"].shape == (2, 4, 8, 8)
    assert [t["masks"].shape[-2:] for t in batch.targets] == [(64, 64), (64, 64)]
    assert batch.to("cpu").images.shape == batch.images.shape

    unl = build_unlabeled_dataset(cfg, reader)
    assert len(unl) == 18 and unl[0].image.shape == (3, 64, 64)

    val = build_val_dataset(cfg, reader)
    s = val[0]
    assert s.size == (48, 48) and s.depth.shape == (1, 48, 48) and s.features["path_4"].shape == (4, 6, 6)
    vb = collate([val[0], val[1]])
    assert vb.images.shape == (2, 3, 64, 64) and vb.features["path_4"].shape == (2, 4, 8, 8)
    assert not vb.valid[:, 48:].any() and vb.valid[:, :48, :48].all()
    assert vb.orig_sizes == [(64, 64), (64, 64)]
    assert len(val.coco.getImgIds()) == 4


def test_config_errors(root):
    with pytest.raises(DataError, match="num_classes is 5"):
        build_train_dataset(_cfg(root, num_classes=5))
    with pytest.raises(DataError, match="unlabeled_list"):
        build_unlabeled_dataset(_cfg(root, unlabeled_list=None))
