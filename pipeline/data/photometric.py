"""Photometric ("strong") augmentation: touches the image only, never the geometry.

The semi-supervised student sees the strong view of the very geometry the teacher saw (weak
view), so the teacher's pseudo-masks, the cached depth and the features stay aligned;
`two_views` builds that pair. Recipe of Unbiased Teacher / Guided Distillation: colour jitter
(0.4, 0.4, 0.4, 0.1) with p=0.8 in random order, grayscale p=0.2, Gaussian blur sigma in
[0.1, 2.0] p=0.5.
"""

from __future__ import annotations

from typing import Optional

import torch
import torchvision.transforms.v2.functional as TF
from dgseg.pipeline.data.sample import Sample, check_sample


def _u(low: float, high: float, g: Optional[torch.Generator]) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


class StrongAugment:
    """`aug(image (3, H, W) in [0, 1], generator) -> (3, H, W) in [0, 1]`."""

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.jitter_p, self.grayscale_p, self.blur_p, self.blur_sigma = jitter_p, grayscale_p, blur_p, blur_sigma

    def __call__(self, image: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        g = generator
        if _u(0, 1, g) < self.jitter_p:
            ops = [
                lambda x: TF.adjust_brightness(x, _u(1 - self.brightness, 1 + self.brightness, g)),
                lambda x: TF.adjust_contrast(x, _u(1 - self.contrast, 1 + self.contrast, g)),
                lambda x: TF.adjust_saturation(x, _u(1 - self.saturation, 1 + self.saturation, g)),
                lambda x: TF.adjust_hue(x, _u(-self.hue, self.hue, g)),
            ]
            for i in torch.randperm(4, generator=g).tolist():
                image = ops[i](image)
        if _u(0, 1, g) < self.grayscale_p:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if _u(0, 1, g) < self.blur_p:
            sigma = _u(*self.blur_sigma, g)
            # odd kernel covering +-3 sigma, no wider than reflect padding allows on a small image
            k = min(2 * round(3 * sigma) + 1, 2 * (min(image.shape[-2:]) // 2) - 1)
            if k >= 3:
                image = TF.gaussian_blur(image, [k, k], [sigma, sigma])
        return image.clamp(0, 1)


def photometric(sample: Sample, augment: StrongAugment, generator: Optional[torch.Generator] = None) -> Sample:
    """The sample with its image augmented; padding stays 0 and every other field is shared."""
    check_sample(sample)
    image = augment(sample.image, generator) * sample.valid
    return sample.replace(image=image)


def two_views(
    sample: Sample, augment: StrongAugment, generator: Optional[torch.Generator] = None
) -> tuple[Sample, Sample]:
    """(weak, strong) of one geometric-transformed sample: same geometry, strong = photometric(weak)."""
    return sample, photometric(sample, augment, generator)
