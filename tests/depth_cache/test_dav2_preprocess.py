"""The official Depth Anything V2 preprocessing on tensors: sizes, values, batching, and the
resize of depth back to the image."""

from __future__ import annotations

import pytest
import torch
from dgseg.depth_cache.estimators.base import Preprocess
from dgseg.depth_cache.estimators.preprocess import postprocess_depth, preprocess_images, target_size


@pytest.mark.parametrize(
    "size, expected",
    [
        ((480, 640), (518, 686)),  # the fixture README's examples
        ((1080, 1920), (518, 924)),
        ((300, 300), (518, 518)),
        ((640, 480), (686, 518)),
        # 539/14 = 38.5 exactly: NumPy's round-half-to-even gives 38*14, not 39*14
        ((518, 539), (518, 532)),
        ((518, 511), (532, 518)),  # the long side scaled to 525.1 rounds up to 38*14
    ],
)
def test_target_size_lower_bound_rule(size, expected):
    assert target_size(*size, input_size=518, multiple_of=14) == expected


def test_target_size_short_side_never_below_input_size():
    for h in range(100, 1200, 37):
        for w in (h // 3, h // 2 + 1, h, 2 * h - 1):
            if w < 1:
                continue
            th, tw = target_size(h, w, 266, 14)
            assert th % 14 == 0 and tw % 14 == 0
            assert min(th, tw) >= 266 and min(th, tw) < 266 + 14


def test_constant_image_normalises_to_the_imagenet_values():
    pre = Preprocess()
    image = torch.full((3, 48, 64), 200, dtype=torch.uint8)
    x, geometry = preprocess_images(image, pre)
    assert x.shape == (1, 3, 518, 686) and x.dtype == torch.float32
    assert geometry.orig_size == (48, 64) and geometry.size == (518, 686)
    expected = (200 / 255 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    torch.testing.assert_close(x[0].mean(dim=(1, 2)), expected)
    assert (x[0] - expected.view(3, 1, 1)).abs().max() < 1e-5  # bicubic keeps constants


def test_uint8_and_float_inputs_agree_and_batches_match_single_images():
    pre = Preprocess(input_size=126)
    images = torch.randint(0, 256, (3, 3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    from_uint8, geometry = preprocess_images(images, pre)
    from_float, _ = preprocess_images(images.float() / 255, pre)
    torch.testing.assert_close(from_uint8, from_float)
    assert geometry.size == (126, 182)
    single, _ = preprocess_images(images[1], pre)
    torch.testing.assert_close(single[0], from_uint8[1])
    # bicubic (not bilinear): a sharp edge overshoots, as cv2's INTER_CUBIC does
    edge = torch.zeros(1, 3, 20, 20)
    edge[..., 10:] = 1.0
    y, _ = preprocess_images(edge, Preprocess(input_size=28))
    assert y.amax() > ((1.0 - torch.tensor(pre.mean)) / torch.tensor(pre.std)).max() + 1e-3


def test_image_already_at_the_target_size_is_not_resampled():
    pre = Preprocess(input_size=28)
    image = torch.rand(1, 3, 28, 42)
    x, geometry = preprocess_images(image, pre)
    assert geometry.size == (28, 42)
    std, mean = torch.tensor(pre.std).view(1, 3, 1, 1), torch.tensor(pre.mean).view(1, 3, 1, 1)
    torch.testing.assert_close(x * std + mean, image)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="RGB"):
        preprocess_images(torch.zeros(1, 4, 10, 10), Preprocess())
    with pytest.raises(TypeError, match="int32"):
        preprocess_images(torch.zeros(1, 3, 10, 10, dtype=torch.int32), Preprocess())


def test_postprocess_depth_is_bilinear_with_aligned_corners():
    depth = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6)
    out = postprocess_depth(depth, (7, 11))
    assert out.shape == (1, 7, 11)
    # align_corners=True keeps the four corners and makes a linear ramp exactly linear
    assert out[0, 0, 0] == depth[0, 0, 0] and out[0, -1, -1] == depth[0, -1, -1]
    torch.testing.assert_close(out[0, 0], torch.linspace(0, 5, 11))
    assert postprocess_depth(depth, (4, 6)) is depth
