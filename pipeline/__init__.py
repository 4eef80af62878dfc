"""Stage two: data, the Mask2Former segmenter with Depth Fusion, semi-supervised training, evaluation."""
