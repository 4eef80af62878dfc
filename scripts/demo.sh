#!/usr/bin/env bash
# The main job end to end on the generated RGB-D dataset (CPU): data, splits, stage one (depth
# cache), stage two (teacher-student training with Depth Fusion, depth pseudo-labels and the
# Depth Controller), then COCO mask AP of the teacher on the val split.
# Extra arguments are config overrides for training, e.g. a few-minute smoke run:
#   bash scripts/demo.sh semi.teacher_iters=100 train.max_iter=160 semi.burn_in_iter=20 train.eval_period=80 train.checkpoint_period=80
set -euo pipefail
cd "$(dirname "$0")/.."
python cli.py make-synthetic --out data/synthetic --num-train 2000 --num-val 200
python cli.py make-splits --ann data/synthetic/annotations/train.json --out data/synthetic/splits --percents 1,5,10
python cli.py precompute-depth --config configs/demo.yaml
python cli.py train --config configs/demo.yaml --overwrite "$@"  # a rerun of the demo starts its run afresh
python cli.py evaluate --config configs/demo.yaml --checkpoint runs/demo "$@"
