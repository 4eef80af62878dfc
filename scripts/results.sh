#!/usr/bin/env bash
# The results tables of docs/results.md on the generated RGB-D datasets (CPU, 1 thread per run, two runs at a
# time on two cores), with the demo configs' recipe and budget.
# Usage: bash scripts/results.sh [--preset default|small|clutter] [--seeds N] [MODE] PCT ...
#   (default: --preset default, 5)
# PRESET picks configs/demo.yaml (data/synthetic), configs/demo_small.yaml (data/synthetic_small,
# `make-synthetic --preset small`) or configs/demo_clutter.yaml (data/synthetic_clutter); runs go to
# runs/results/PRESET/ (OUT overrides). --seeds N trains each row with train.seed 0 .. N-1 (seed 0 keeps the
# row's name, seed K adds _seedK);
# `python scripts/results_table.py OUT` prints every row's mean, spread and seeds.
#
# Budgets are equal in labelled steps: every row trains SUP_ITERS (700) iterations of batch 8
# labelled images; teacher-student rows split them into TEACHER_ITERS (450, stage A) + the rest
# (250, stage B, plus 8 unlabelled images per step), as the demo does. Each run's last evaluation on
# the val split is its row (final_eval/metrics.json and coco_results.json in the run folder; the
# teacher's weights for teacher-student rows, as in GD).
#
# MODE (none: the table)
#   (none)          supervised RGB, supervised + Depth Fusion, teacher-student RGB only, the full
#                   method (two-view teacher, then Depth Fusion + depth pseudo-labels + Depth
#                   Controller), its control (the two-view teacher alone for all SUP_ITERS labelled
#                   steps: what stage B must beat), and the anchor: torchvision Mask R-CNN R18-FPN on
#                   RGB + depth (4th channel) for ANCHOR_ITERS (390) iterations, about the supervised
#                   rows' training time alone on this CPU (docs/benchmarks.md, "Anchor").
#   --control PCT   stage B after a stage A at its plateau: the two-view teacher alone for PLATEAU_ITERS
#                   (1600; val AP every PLATEAU_ITERS / 8: the curve that shows the plateau), stage B
#                   from its final weights for B_ITERS (300) per seed, and the two-view teacher alone for
#                   PLATEAU_ITERS + B_ITERS (the same labelled steps) per seed, the two rows side by side;
#                   and the paired control, stage B from the same teacher without the unlabelled loss
#                   (B_unsup0_PCT, semi.unsup_weight=0: the same schedule and EMA), per seed. Two sessions'
#                   runs of one stage-A command ended 7 AP apart, so only rows from one teacher compare
#                   (docs/experiments/2026-12-08-three-seeds-one-teacher.md).
#   --stage-b NAME PCT [OVERRIDES...]  stage B from the plateau teacher of --control with OVERRIDES
#                   (a lever: train.lr=..., semi.ema_decay=...), per seed, as B_NAME_PCT.
#   --ablation PCT  the paper's ablation from the plateau teacher, per seed: depth pseudo-labels off, the
#                   Depth Controller off (w = 0.5 constant); Depth Fusion off needs its own stage A
#                   (a two-view teacher without it) and its own stage B.
#   --reseed PCT SEED  stage B of the full method again with train.seed=SEED.
#   --targets PCT   the full method (stage A, stage B per seed) and supervised + Depth Fusion for SUP_ITERS
#                   and for TEACHER_ITERS (sup_df_PCT_TEACHER_ITERSit), e.g.
#                   SUP_ITERS=1000 TEACHER_ITERS=700 OUT=runs/results_1000/small bash scripts/results.sh --preset small --targets 5
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PRESET=default
SEEDS=1
while true; do
  case "${1:-}" in
    --preset) PRESET=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    *) break ;;
  esac
done
case "$PRESET" in
  default) CONFIG=configs/demo.yaml; DATA=data/synthetic ;;
  small) CONFIG=configs/demo_small.yaml; DATA=data/synthetic_small ;;
  clutter) CONFIG=configs/demo_clutter.yaml; DATA=data/synthetic_clutter ;;
  *) echo "results.sh: unknown --preset $PRESET (default, small or clutter)" >&2; exit 2 ;;
esac
OUT=${OUT:-runs/results/$PRESET}
SUP_ITERS=${SUP_ITERS:-700}
TEACHER_ITERS=${TEACHER_ITERS:-450}
STUDENT_ITERS=$((SUP_ITERS - TEACHER_ITERS))
ANCHOR_ITERS=${ANCHOR_ITERS:-390}
PLATEAU_ITERS=${PLATEAU_ITERS:-1600}
B_ITERS=${B_ITERS:-300}
COMMON="train.log_period=20 data.num_workers=1 ${EXTRA:-}"  # EXTRA: overrides for every run
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

seeded() {  # seeded NAME SEED: the run name of one seed of a row (seed 0 keeps the row's name)
  if [ "$2" = 0 ]; then echo "$1"; else echo "$1_seed$2"; fi
}

seeds() {  # seeds NAME OVERRIDES...: the row for train.seed 0 .. SEEDS-1, two runs at a time
  local name=$1; shift
  local s n=0
  for ((s = 0; s < SEEDS; s++)); do
    local one; one=$(seeded "$name" $s)
    # a finished seed takes no slot of the pair (run would skip it too, but after taking one)
    if [ -f "$OUT/$one/final_eval/metrics.json" ]; then echo "skip $one (done)"; continue; fi
    run "$one" "$@" "train.seed=$s" &
    n=$((n + 1))
    if (( n % 2 == 0 )); then wait; fi
  done
  wait
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

stage_a() {  # stage_a ITERS: a two-view teacher trained alone (stage A only) for ITERS steps
  echo "semi.teacher_iters=$1 train.max_iter=$1"
}

table() {  # table PCT: the table's rows for one label percentage, on two parallel queues
  local p=$1
  local split; split=$(split_of "$p")
  local s
  for ((s = 0; s < SEEDS; s++)); do
    (
      run "$(seeded "A_2view_$p" $s)" $split $(stage_a $TEACHER_ITERS) $A_EVAL train.seed=$s
      run "$(seeded "B_full_$p" $s)" $split $(teacher_of "$(seeded "A_2view_$p" $s)") $B_EVAL train.seed=$s
      run "$(seeded "A_2view_${p}_${SUP_ITERS}it" $s)" $split $(stage_a $SUP_ITERS) $SUP_EVAL train.seed=$s
    ) &
    (
      run "$(seeded "sup_df_$p" $s)" $split semi.enabled=false train.max_iter=$SUP_ITERS $SUP_EVAL train.seed=$s
      run "$(seeded "A_rgb_$p" $s)" $split semi.enabled=false $NODEPTH train.max_iter=$TEACHER_ITERS $A_EVAL \
        train.seed=$s
      run "$(seeded "B_rgb_$p" $s)" $split $NODEPTH $(teacher_of "$(seeded "A_rgb_$p" $s)") $B_EVAL train.seed=$s
      [ "$s" = 0 ] && anchor "anchor_rgbd_$p" $split
      run "$(seeded "sup_rgb_$p" $s)" $split semi.enabled=false $NODEPTH train.max_iter=$SUP_ITERS $SUP_EVAL \
        train.seed=$s
    ) &
    wait
  done
}

plateau_teacher() {  # plateau_teacher PCT: the stage-B overrides that start from --control's plateau teacher
  local teacher="$OUT/A_plateau_$1/model_final.pth"
  if [ ! -f "$teacher" ]; then echo "no $teacher: run --control $1 first" >&2; exit 1; fi
  echo "semi.teacher_checkpoint=$teacher train.max_iter=$B_ITERS train.eval_period=$((B_ITERS / 3))" \
    "train.checkpoint_period=$B_ITERS"
}

control() {  # control PCT: stage A to its plateau, stage B after it, stage A alone for the same labelled steps
  local p=$1
  local split; split=$(split_of "$p")
  local every=$((PLATEAU_ITERS / 8))
  run "A_plateau_$p" $split $(stage_a $PLATEAU_ITERS) "train.eval_period=$every" "train.checkpoint_period=$every" \
    train.keep_checkpoints=8
  local total=$((PLATEAU_ITERS + B_ITERS))
  local teacher; teacher=$(plateau_teacher "$p")  # an assignment, so set -e stops here when it is missing
  local s
  for ((s = 0; s < SEEDS; s++)); do  # one seed of each row side by side: two runs at a time on two cores
    run "$(seeded "B_plateau_$p" $s)" $split $teacher "train.seed=$s" &
    run "$(seeded "A_plateau_${p}_${total}it" $s)" $split $(stage_a $total) "train.eval_period=$((total / 4))" \
      "train.checkpoint_period=$((total / 4))" "train.seed=$s" &
    wait
  done
  seeds "B_unsup0_$p" $split $teacher semi.unsup_weight=0
}

targets() {  # targets PCT: the full method and supervised + Depth Fusion at two lengths, on two parallel queues
  local p=$1
  local split; split=$(split_of "$p")
  (
    run "A_2view_$p" $split $(stage_a $TEACHER_ITERS) $A_EVAL
    seeds "B_full_$p" $split $(teacher_of "A_2view_$p") $B_EVAL
  ) &
  (
    run "sup_df_$p" $split semi.enabled=false train.max_iter=$SUP_ITERS $SUP_EVAL
    run "sup_df_${p}_${TEACHER_ITERS}it" $split semi.enabled=false train.max_iter=$TEACHER_ITERS \
      "train.eval_period=$TEACHER_ITERS" "train.checkpoint_period=$TEACHER_ITERS"
  ) &
  wait
}

ablation() {  # ablation PCT: each depth component off in stage B, from the plateau teacher (Depth Fusion: its own)
  local p=$1
  local split; split=$(split_of "$p")
  local teacher; teacher=$(plateau_teacher "$p")
  seeds "B_plateau_nodepthpl_$p" $split $teacher semi.depth_pseudo_labels=false
  seeds "B_plateau_constw_$p" $split $teacher semi.controller.kind=constant
  local nodf="model.depth_fusion.enabled=false"
  run "A_plateau_nodf_$p" $split $nodf $(stage_a $PLATEAU_ITERS) "train.eval_period=$((PLATEAU_ITERS / 4))" \
    "train.checkpoint_period=$PLATEAU_ITERS"
  seeds "B_plateau_nodf_$p" $split $nodf "semi.teacher_checkpoint=$OUT/A_plateau_nodf_$p/model_final.pth" \
    train.max_iter=$B_ITERS "train.eval_period=$((B_ITERS / 3))" "train.checkpoint_period=$B_ITERS"
}

mkdir -p "$OUT"
case "${1:-}" in
  --control) shift; for p in "$@"; do control "$p"; done ;;
  --stage-b) name=$2; p=$3; shift 3; teacher=$(plateau_teacher "$p"); seeds "B_${name}_$p" $(split_of "$p") $teacher "$@" ;;
  --ablation) shift; for p in "$@"; do ablation "$p"; done ;;
  --reseed) run "B_full_${2}_seed$3" $(split_of "$2") $(teacher_of "A_2view_$2") $B_EVAL "train.seed=$3" ;;
  --targets) shift; for p in "$@"; do targets "$p"; done ;;
  *) for p in "${@:-5}"; do table "$p"; done ;;
esac
