"""timm backbone: levels, channels, strides, local weights and clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
from dgseg.pipeline.model.backbone import Backbone


def test_resnet18_levels_channels_and_strides():
    bb = Backbone("resnet18")
    assert bb.channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    assert bb.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    feats = bb(torch.randn(1, 3, 64, 96))
    for level, f in feats.items():
        s = bb.strides[level]
        assert f.shape == (1, bb.channels[level], 64 // s, 96 // s)


def test_other_timm_family_by_name():
    bb = Backbone("convnext_atto")  # four-stage model whose feature wrapper renames modules
    feats = bb(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[1] for k, v in feats.items()} == bb.channels
    assert feats["res2"].shape[-1] == 16 and feats["res5"].shape[-1] == 2
    assert Backbone("resnet18.a1_in1k").channels["res5"] == 512  # a pretrained tag (nothing is downloaded)


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match="resnet18") as err:
        Backbone("resnet181")
    assert "unknown timm backbone" in str(err.value)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_loads_local_timm_checkpoint(tmp_path, name):
    full = timm.create_model(name, pretrained=False)
    path = tmp_path / "w.pth"
    torch.save(full.state_dict(), path)
    bb = Backbone(name, weights=str(path))
    own = bb.body.state_dict()
    src = full.state_dict()
    # every backbone tensor came from the file (the classifier head is ignored)
    first = next(k for k in own if k.endswith("weight") and own[k].dim() == 4)
    src_key = first if first in src else first.split(".")[0].replace("_", ".") + "." + first.split(".", 1)[1]
    assert torch.equal(own[first], src[src_key])
    assert all(torch.equal(v, src[k]) for k, v in own.items() if k in src)


def test_mismatched_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save({"state_dict": timm.create_model("resnet34", pretrained=False).state_dict()}, path)
    with pytest.raises(ValueError, match="r34.pth.*do not fit"):
        Backbone("resnet50", weights=str(path))


def test_corrupt_or_missing_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        Backbone("resnet18", weights=str(bad))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Backbone("resnet18", weights=str(tmp_path / "nope.pth"))


def _batchnorms(bb: Backbone) -> list[torch.nn.Module]:
    return [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_pretrained_backbone_freezes_batchnorm(tmp_path):
    """Mask2Former's FrozenBatchNorm2d: statistics and affine fixed in train mode, no trainable norm parameters."""
    path = tmp_path / "w.pth"
    full = timm.create_model("resnet18", pretrained=False)
    for m in full.modules():  # non-trivial statistics, as ImageNet weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(full.state_dict(), path)
    bb = Backbone("resnet18", weights=str(path))  # "auto": frozen because weights are given
    assert bb.frozen_norm and not _batchnorms(bb)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.train()
    x = torch.rand(2, 3, 64, 64)
    out_train = bb(x)["res5"]
    bb(torch.rand(2, 3, 64, 64) * 5)  # a batch of another domain (the depth view) changes nothing
    assert all(torch.equal(v, bb.state_dict()[k]) for k, v in before.items())
    bb.eval()
    assert torch.allclose(bb(x)["res5"], out_train, atol=1e-5)  # train and eval normalise alike (teacher = student)
    assert not [n for n, _ in bb.named_parameters() if "bn" in n]
    mean = bb.body.bn1.running_mean
    assert torch.equal(mean, full.bn1.running_mean)  # the file's statistics are the frozen ones


def test_norm_option_and_random_init_default():
    assert _batchnorms(Backbone("resnet18"))  # random init: live BatchNorm ("auto")
    frozen = Backbone("resnet18", norm="frozen")
    assert not _batchnorms(frozen) and frozen.frozen_norm
    assert _batchnorms(Backbone("resnet18", norm="batch"))
    with pytest.raises(ValueError, match="norm"):
        Backbone("resnet18", norm="group")


def test_paper_configs_build_a_frozen_backbone():
    from pathlib import Path

    from dgseg.pipeline.config.loading import load_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    for name in ("coco_base.yaml", "cityscapes_base.yaml"):
        assert load_config(configs / name).model.backbone_norm == "frozen", name


def test_paper_size_backbone_without_weights_warns_loudly():
    with pytest.warns(UserWarning, match="RANDOM weights.*backbone_weights"):
        Backbone("resnet50")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Backbone("resnet18")  # the demo's small random-init backbone: no warning


def test_loads_safetensors_and_headless_checkpoints_through_timm(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in src.items()}, tmp_path / "w.safetensors")
    torch.save({k: v for k, v in src.items() if not k.startswith("fc.")}, tmp_path / "headless.pth")
    for name in ("w.safetensors", "headless.pth"):
        own = Backbone("resnet18", weights=str(tmp_path / name)).body.state_dict()
        assert own and all(torch.equal(v, src[k]) for k, v in own.items()), name


def test_a_deeper_model_of_the_same_family_is_refused_naming_its_extra_keys(tmp_path):
    """resnet34's file holds resnet18's keys and more: a lenient load would take the first blocks silently."""
    path = tmp_path / "r34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"r34.pth do not fit timm model 'resnet18'.*unexpected keys.*layer1\.2"):
        Backbone("resnet18", weights=str(path))


class _Pickled:
    pass


def test_a_pickled_object_is_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"state_dict": timm.create_model("resnet18").state_dict(), "extra": _Pickled()}, path)
    with pytest.raises(ValueError, match="obj.pth") as err:
        Backbone("resnet18", weights=str(path))
    assert "_Pickled" in str(err.value) and "weights_only=False" not in str(err.value)
