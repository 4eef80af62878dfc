"""Reference models trained beside the project's own, on the same data and depth cache.

`maskrcnn`: torchvision's Mask R-CNN (ResNet-18-FPN, random init) in three input modes (RGB, depth
alone, RGB + depth as a 4th channel); `adapter`: the project's `Sample` to torchvision's inputs and
targets; `loop`: its training loop and COCO mask AP with the project's evaluator. `cli.py bench
anchor` (bench/bench_anchor.py) runs them side by side with the project's model.
"""
