#!/usr/bin/env bash
# The results tables of docs/results.md on the generated RGB-D datasets (CPU, 1 thread per run, two runs at a
# time on two cores), with the demo configs' recipe and budget.
# Usage: bash scripts/results.sh [--preset default|small] [MODE] PCT ...   (default: --preset default, 5)
# PRESET picks configs/demo.yaml (data/synthetic) or configs/demo_small.yaml (data/synthetic_small,
# `make-synthetic --preset small`); runs go to runs/results/PRESET/ (OUT overrides).
#
# Budgets are equal in labelled steps: every row trains SUP_ITERS (700) iterations of batch 8
# labelled images; teacher-student rows split them into TEACHER_ITERS (450, stage A) + the rest
# (250, stage B, plus 8 unlabelled images per step), as the demo does. Each run's last evaluation on
# the val split is its row (final_eval/metrics.json and coco_results.json in the run folder; the
# teacher's weights for teacher-student runs, as in GD).
#
# MODE (none: the table)
#   (none)          supervised RGB, supervised + Depth Fusion, teacher-student RGB only, the full
#                   method (two-view teacher, then Depth Fusion + depth pseudo-labels + Depth
#                   Controller), its stage B again with train.seed=1 (the stage-B spread), and the
#                   anchor: torchvision Mask R-CNN R18-FPN on RGB + depth (4th channel) for
#                   ANCHOR_ITERS (390) iterations, about the supervised rows' training time alone on
#                   this CPU (its step costs 1.8x the project's: docs/benchmarks.md, "Anchor").
#   --ablation      + Depth Fusion teacher-student (RGB teacher) and depth pseudo-labels at a
#                   constant w = 0.5, from the table's teachers.
#   --controller    Depth Controller ablations from the full method's stage-A teacher (constant
#                   w = 0.75; agreement term only; loss term only).
#   --reseed PCT SEED  stage B of the full method again with train.seed=SEED.
#   --targets PCT   only the rows the project's 5 % targets compare against supervised + Depth Fusion:
#                   the full method (stage A, stage B, stage B with train.seed=1) and supervised + Depth
#                   Fusion for SUP_ITERS and for TEACHER_ITERS (sup_df_PCT_TEACHER_ITERSit), so a longer
#                   stage A can be told apart from what stage B adds, e.g.
#                   SUP_ITERS=1000 TEACHER_ITERS=700 OUT=runs/results_1000/small bash scripts/results.sh --preset small --targets 5
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PRESET=default
if [ "${1:-}" = "--preset" ]; then PRESET=$2; shift 2; fi
case "$PRESET" in
  default) CONFIG=configs/demo.yaml; DATA=data/synthetic ;;
  small) CONFIG=configs/demo_small.yaml; DATA=data/synthetic_small ;;
  *) echo "results.sh: unknown --preset $PRESET (default or small)" >&2; exit 2 ;;
esac
OUT=${OUT:-runs/results/$PRESET}
SUP_ITERS=${SUP_ITERS:-700}
TEACHER_ITERS=${TEACHER_ITERS:-450}
STUDENT_ITERS=$((SUP_ITERS - TEACHER_ITERS))
ANCHOR_ITERS=${ANCHOR_ITERS:-390}
COMMON="train.log_period=20 data.num_workers=1"
NODEPTH="depth.mode=none model.depth_fusion.enabled=false semi.depth_pseudo_labels=false"
# val AP along the way, for the convergence plot: 3 points in stage A, 5 in stage B
A_EVAL="train.eval_period=$((TEACHER_ITERS / 3)) train.checkpoint_period=$((TEACHER_ITERS / 3))"
B_EVAL="train.eval_period=$((STUDENT_ITERS / 5)) train.checkpoint_period=$STUDENT_ITERS"
SUP_EVAL="train.eval_period=$((SUP_ITERS / 2)) train.checkpoint_period=$SUP_ITERS"

split_of() {  # split_of PCT: the overrides for the labelled and unlabelled lists of a split
  echo "data.train_json=$DATA/splits/train_${1}pct_seed0_labeled.json" \
    "data.unlabeled_list=$DATA/splits/train_${1}pct_seed0_unlabeled.json"
}

run() {  # run NAME OVERRIDES...: train; its last evaluation (the teacher's in stage B) is the row
  local name=$1; shift
  if [ -f "$OUT/$name/final_eval/metrics.json" ]; then echo "skip $name (done)"; return; fi
  local resume="--overwrite"; [ -f "$OUT/$name/last_checkpoint" ] && resume="--resume"  # no checkpoint: afresh
  python cli.py train --config $CONFIG $resume "train.output_dir=$OUT/$name" $COMMON "$@" > "$OUT/$name.log" 2>&1
  echo "done $name: $(python -c "import json;print(round(json.load(open('$OUT/$name/final_eval/metrics.json'))['AP'],2))")"
}

anchor() {  # anchor NAME OVERRIDES...: the Mask R-CNN RGB + depth anchor on the same data and cache
  local name=$1; shift
  if [ -f "$OUT/$name/anchor_bench.json" ]; then echo "skip $name (done)"; return; fi
  rm -rf "${OUT:?}/$name"
  python cli.py bench anchor --config $CONFIG --no-project --modes rgbd --iters "$ANCHOR_ITERS" --out "$OUT/$name" \
    $COMMON "$@" > "$OUT/$name.log" 2>&1
  echo "done $name: $(python -c "import json;print(round(json.load(open('$OUT/$name/anchor_bench.json'))['rows'][0]['AP'],2))")"
}

teacher_of() {  # teacher_of RUN: the stage-B overrides that start from RUN's stage-A checkpoint
  echo "semi.teacher_checkpoint=$OUT/$1/model_$(printf %07d "$TEACHER_ITERS").pth train.max_iter=$STUDENT_ITERS"
}

full_method() {  # full_method PCT: the two-view teacher (stage A), then stage B from it
  local p=$1
  local split; split=$(split_of "$p")
    run "A_2view_$p" $split semi.teacher_iters=$TEACHER_ITERS train.max_iter=$TEACHER_ITERS $A_EVAL
    run "B_full_$p" $split $(teacher_of "A_2view_$p") $B_EVAL
}

table() {  # table PCT: the table's rows for one label percentage, on two parallel queues
  local p=$1
  local split; split=$(split_of "$p")
  (
    full_method "$p"
    run "B_full_${p}_seed1" $split $(teacher_of "A_2view_$p") $B_EVAL train.seed=1
  ) &
  (
    run "sup_df_$p" $split semi.enabled=false train.max_iter=$SUP_ITERS $SUP_EVAL
    run "A_rgb_$p" $split semi.enabled=false $NODEPTH train.max_iter=$TEACHER_ITERS $A_EVAL
    run "B_rgb_$p" $split $NODEPTH $(teacher_of "A_rgb_$p") $B_EVAL
    anchor "anchor_rgbd_$p" $split
    run "sup_rgb_$p" $split semi.enabled=false $NODEPTH train.max_iter=$SUP_ITERS $SUP_EVAL
  ) &
  wait
}

targets() {  # targets PCT: the full method and supervised + Depth Fusion at two lengths, on two parallel queues
  local p=$1
  local split; split=$(split_of "$p")
  (
    full_method "$p"
  ) &
  (
    run "sup_df_$p" $split semi.enabled=false train.max_iter=$SUP_ITERS $SUP_EVAL
    run "sup_df_${p}_${TEACHER_ITERS}it" $split semi.enabled=false train.max_iter=$TEACHER_ITERS \
      "train.eval_period=$TEACHER_ITERS" "train.checkpoint_period=$TEACHER_ITERS"
    local waited=0  # stage A's teacher, finished by the other queue (which stops on an error: give up after 3 h)
    until [ -f "$OUT/A_2view_$p/final_eval/metrics.json" ]; do
      sleep 20; waited=$((waited + 20))
      if [ $waited -ge 10800 ]; then echo "no $OUT/A_2view_$p after 3 h: see $OUT/A_2view_$p.log" >&2; exit 1; fi
    done
    run "B_full_${p}_seed1" $split $(teacher_of "A_2view_$p") $B_EVAL train.seed=1
  ) &
  wait
}

ablation() {  # ablation PCT: the middle rows, from the table's teachers (and an RGB-view teacher with Depth Fusion)
  local p=$1
  local split; split=$(split_of "$p")
  if [ ! -f "$OUT/A_2view_$p/model_$(printf %07d "$TEACHER_ITERS").pth" ]; then
    echo "no $OUT/A_2view_$p: run the table first"; exit 1
  fi
  (
    run "A_df_$p" $split semi.enabled=false train.max_iter=$TEACHER_ITERS $A_EVAL
    run "B_df_$p" $split semi.depth_pseudo_labels=false $(teacher_of "A_df_$p") $B_EVAL
  ) &
  run "B_depthpl_$p" $split $(teacher_of "A_2view_$p") $B_EVAL semi.controller.kind=constant &
  wait
}

controller() {  # controller PCT: which part of the Depth Controller matters, on two parallel queues
  local p=$1
  local split; split=$(split_of "$p")
  local teacher; teacher=$(teacher_of "A_2view_$p")
  if [ ! -f "$OUT/A_2view_$p/model_$(printf %07d "$TEACHER_ITERS").pth" ]; then
    echo "no $OUT/A_2view_$p: run the table first"; exit 1
  fi
  (
    run "B_const75_$p" $split $teacher $B_EVAL semi.controller.kind=constant semi.controller.init_weight=0.75
    run "B_lossonly_$p" $split $teacher $B_EVAL semi.controller.agreement_gain=0
  ) &
  run "B_agreeonly_$p" $split $teacher $B_EVAL semi.controller.loss_gain=0 &
  wait
}

mkdir -p "$OUT"
case "${1:-}" in
  --ablation) shift; for p in "$@"; do ablation "$p"; done ;;
  --controller) shift; for p in "$@"; do controller "$p"; done ;;
  --reseed) run "B_full_${2}_seed$3" $(split_of "$2") $(teacher_of "A_2view_$2") $B_EVAL "train.seed=$3" ;;
  --targets) shift; for p in "$@"; do targets "$p"; done ;;
  *) for p in "${@:-5}"; do table "$p"; done ;;
esac
