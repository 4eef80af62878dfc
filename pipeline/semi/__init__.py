"""Teacher-student training pieces, after Guided Distillation, with depth guidance.

`ema` (the teacher as an EMA of the student), `pseudo_labels` (teacher outputs -> target sets),
`depth_view` (the cached depth drawn as the teacher's second view), `agreement` (RGB vs. depth
pseudo-label sets), `depth_controller` (the weight of the depth pseudo-labels), `losses` (the
unsupervised total). Tensor-in/tensor-out and model-agnostic; the loop lives in the trainer.
"""
