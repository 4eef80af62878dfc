#!/usr/bin/env bash
# The results table of the README on the generated RGB-D dataset (CPU, 1 thread per run, two runs
# at a time on two cores). Usage: bash scripts/results.sh PCT [PCT ...]   (default: 5)
# Rows: supervised-only (RGB), teacher-student RGB-only, + Depth Fusion, + depth pseudo-labels
# (constant w = 0.5), + Depth Controller (the full method). Budgets are equal: every row trains
# 1000 iterations (semi-supervised: 600 teacher + 400 student), batch 8 labelled (+ 8 unlabelled).
# Each run ends with `cli.py evaluate` on the val split (eval/metrics.json in the run folder).
# `bash scripts/results.sh --supervised PCT ...`: only the supervised baselines with and without
# Depth Fusion (600 iterations), e.g. for 100 % labels.
# `bash scripts/results.sh --ends PCT ...`: only the first and last rows (supervised-only and the
# full method), e.g. for 1 % and 10 %.
# `bash scripts/results.sh --controller PCT ...`: Depth Controller ablations from the same stage-A
# teacher as the full method (constant w = 0.75, near the adaptive controller's range; agreement
# term only; loss term only); needs A_2view_PCT from a table or --ends run.
# `bash scripts/results.sh --reseed PCT SEED`: stage B of "+ Depth Fusion" and of the full method
# again with another train.seed (same stage-A teachers), in parallel: the run-to-run spread of stage B.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
OUT=${OUT:-runs/results}
COMMON="train.eval_period=100 train.checkpoint_period=100 train.log_period=20 data.num_workers=1"
NODEPTH="depth.mode=none model.depth_fusion.enabled=false semi.depth_pseudo_labels=false"

split_of() {  # split_of PCT: the overrides for the labelled and unlabelled lists of a split
  echo "data.train_json=data/synthetic/splits/train_${1}pct_seed0_labeled.json" \
    "data.unlabeled_list=data/synthetic/splits/train_${1}pct_seed0_unlabeled.json"
}

run() {  # run NAME OVERRIDES...: train, then evaluate its last checkpoint
  local name=$1; shift
  if [ -f "$OUT/$name/eval/metrics.json" ]; then echo "skip $name (done)"; return; fi
  local resume="--overwrite"; [ -f "$OUT/$name/last_checkpoint" ] && resume="--resume"  # no checkpoint: afresh
  python cli.py train --config configs/demo.yaml $resume "train.output_dir=$OUT/$name" $COMMON "$@" \
    > "$OUT/$name.log" 2>&1
  python cli.py evaluate --config configs/demo.yaml --checkpoint "$OUT/$name" --out "$OUT/$name/eval" \
    "train.output_dir=$OUT/$name" $COMMON "$@" >> "$OUT/$name.log" 2>&1
  echo "done $name: $(python -c "import json;print(round(json.load(open('$OUT/$name/eval/metrics.json'))['AP'],2))")"
}

table() {  # table PCT: the five rows for one label percentage, on two parallel queues
  local p=$1
  local split; split=$(split_of "$p")
  local teacher="semi.teacher_checkpoint=$OUT/A_2view_$p/model_0000600.pth train.max_iter=400"
  (
    run "A_rgb_$p" $split semi.enabled=false $NODEPTH train.max_iter=600
    run "B_rgb_$p" $split $NODEPTH "semi.teacher_checkpoint=$OUT/A_rgb_$p/model_0000600.pth" train.max_iter=400
    run "A_2view_$p" $split semi.teacher_iters=600 train.max_iter=600
    run "B_full_$p" $split $teacher
  ) &
  (
    run "A_df_$p" $split semi.enabled=false train.max_iter=600
    run "B_df_$p" $split semi.depth_pseudo_labels=false "semi.teacher_checkpoint=$OUT/A_df_$p/model_0000600.pth" \
      train.max_iter=400
    run "sup_rgb_$p" $split semi.enabled=false $NODEPTH train.max_iter=1000
    while [ ! -f "$OUT/A_2view_$p/model_0000600.pth" ]; do sleep 20; done
    run "B_depthpl_$p" $split $teacher semi.controller.kind=constant
  ) &
  wait
}

supervised() {  # supervised PCT: the baselines with and without Depth Fusion, in parallel
  local p=$1
  local split="data.train_json=data/synthetic/splits/train_${p}pct_seed0_labeled.json"
  run "A_rgb_$p" $split semi.enabled=false $NODEPTH train.max_iter=600 &
  run "A_df_$p" $split semi.enabled=false train.max_iter=600 &
  wait
}

ends() {  # ends PCT: supervised-only and the full method, in parallel
  local p=$1
  local split; split=$(split_of "$p")
  run "sup_rgb_$p" $split semi.enabled=false $NODEPTH train.max_iter=1000 &
  (
    run "A_2view_$p" $split semi.teacher_iters=600 train.max_iter=600
    run "B_full_$p" $split "semi.teacher_checkpoint=$OUT/A_2view_$p/model_0000600.pth" train.max_iter=400
  ) &
  wait
}

controller() {  # controller PCT: which part of the Depth Controller matters, on two parallel queues
  local p=$1
  local split; split=$(split_of "$p")
  local teacher="semi.teacher_checkpoint=$OUT/A_2view_$p/model_0000600.pth train.max_iter=400"
  if [ ! -f "$OUT/A_2view_$p/model_0000600.pth" ]; then echo "no $OUT/A_2view_$p: run --ends $p first"; exit 1; fi
  (
    run "B_const75_$p" $split $teacher semi.controller.kind=constant semi.controller.init_weight=0.75
    run "B_lossonly_$p" $split $teacher semi.controller.agreement_gain=0
  ) &
  run "B_agreeonly_$p" $split $teacher semi.controller.loss_gain=0 &
  wait
}

reseed() {  # reseed PCT SEED: stage B of + Depth Fusion and of the full method with another seed
  local p=$1 seed=$2
  local split; split="$(split_of "$p") train.seed=$seed train.max_iter=400"
  run "B_full_${p}_seed$seed" $split "semi.teacher_checkpoint=$OUT/A_2view_$p/model_0000600.pth" &
  run "B_df_${p}_seed$seed" $split semi.depth_pseudo_labels=false "semi.teacher_checkpoint=$OUT/A_df_$p/model_0000600.pth" &
  wait
}

mkdir -p "$OUT"
if [ "${1:-}" = "--supervised" ]; then
  shift
  for p in "$@"; do supervised "$p"; done
elif [ "${1:-}" = "--controller" ]; then
  shift
  for p in "$@"; do controller "$p"; done
elif [ "${1:-}" = "--reseed" ]; then
  reseed "$2" "$3"
elif [ "${1:-}" = "--ends" ]; then
  shift
  for p in "$@"; do ends "$p"; done
else
  for p in "${@:-5}"; do table "$p"; done
fi
