#!/usr/bin/env bash
# The toy fidelity study of docs/fidelity.md, end to end on CPU (about 35 minutes on 2 cores):
# procedural videos -> toy teacher (flow matching) -> stage 1 -> stage 2 -> evaluation ladder, then the
# ablations (chunk size Tc, overlap To, converted-block count ranked vs evenly spaced, stage 2 on/off).
#
#   ./launch/toy_fidelity.sh [main|ablations|variants|all]   (default all; every run folder goes under runs/)
#
# variants: the recipe variants docs/fidelity.md discusses (stage 1 for 3000 steps; stage 2 at lr 1e-4 and on
# the teacher's own samples).
#
# A step whose output already exists is skipped, so an interrupted study resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
PY=.venv/bin/python
what=${1:-all}
DATA=runs/toy/data/wan_latents_dataset/latents3x13x16x16_text8x32/1.0.0
EVAL_ARGS=(--data "$DATA" --num-clips 16 --sample-steps 20)

step() { echo; echo "== $* ($(date +%H:%M:%S))"; }

main_chain() {
  [ -d "$DATA" ] || { step "toy videos"; $PY -m rehyat_jax.toy.video --out runs/toy/data; }
  [ -f runs/toy_teacher/dit/config.json ] || { step "teacher"; $PY -m rehyat_jax.toy.train --config configs/toy_teacher.py; }
  [ -d runs/toy_distill/student_export ] || { step "stage 1"; $PY -m rehyat_jax.train --config configs/toy_distill.py; }
  [ -d runs/toy_finetune/student_export ] || { step "stage 2"; $PY -m rehyat_jax.train --config configs/toy_finetune.py; }
  [ -f runs/toy_eval/ladder.json ] || { step "evaluation ladder"
    $PY -m rehyat_jax.evaluate --teacher runs/toy_teacher/dit --student runs/toy_distill/student_export \
      --student runs/toy_finetune --name "stage 1" --name "stage 1+2" "${EVAL_ARGS[@]}" --out runs/toy_eval; }
}

# Stage 1 at the ablation budget (400 steps) for one student setting; evaluated on its own.
ablate() {
  local name=$1; shift
  local workdir=runs/toy_ablation/$name
  [ -d "$workdir/student_export" ] || { step "stage 1, $name"
    $PY -m rehyat_jax.train --config configs/toy_distill.py --config.workdir="$workdir" \
      --config.train.steps=400 --config.train.checkpoint_every=400 "$@"; }
  [ -f "$workdir/eval/ladder.json" ] || { step "ladder, $name"
    $PY -m rehyat_jax.evaluate --teacher runs/toy_teacher/dit --student "$workdir/student_export" \
      --name "$name" "${EVAL_ARGS[@]}" --out "$workdir/eval"; }
}

ablations() {
  ablate tc3_to1                                                   # the recipe's student at 400 steps
  ablate tc2_to1 --config.rehyat.chunk_frames=2
  ablate tc4_to1 --config.rehyat.chunk_frames=4
  ablate tc3_to0 --config.rehyat.overlap_frames=0
  ablate tc3_to2 --config.rehyat.overlap_frames=2
  # Converting 2 of the 4 blocks: the 2 with the lowest distilled attention error, the 2 with the lowest
  # output effect (stage 1's per-block report), and 2 evenly spaced ones, all from the all-block stage-1 run
  # (every block owns phi).
  local by_attention by_output
  by_attention=$($PY tools/rank_blocks.py runs/toy_distill/per_block_error.json --count 2)
  by_output=$($PY tools/rank_blocks.py runs/toy_distill/per_block_error.json --count 2 --by output)
  for blocks in "$by_attention" "$by_output" 2; do
    local out=runs/toy_ablation/blocks_${blocks//,/_}
    [ -f "$out/ladder.json" ] || { step "ladder, converted blocks $blocks"
      $PY -m rehyat_jax.evaluate --teacher runs/toy_teacher/dit --student runs/toy_distill/student_export \
        --name "blocks $blocks" --converted-blocks "$blocks" "${EVAL_ARGS[@]}" --out "$out"; }
  done
}

# One recipe variant: a stage run with overrides, then its ladder next to the 1000-step stage-1 student.
variant() {
  local name=$1 config=$2; shift 2
  local workdir=runs/toy_variants/$name
  [ -d "$workdir/student_export" ] || { step "variant $name"
    $PY -m rehyat_jax.train --config "$config" --config.workdir="$workdir" "$@"; }
  [ -f "$workdir/eval/ladder.json" ] || { step "ladder, $name"
    $PY -m rehyat_jax.evaluate --teacher runs/toy_teacher/dit --student runs/toy_distill/student_export \
      --student "$( [ "$config" = configs/toy_finetune.py ] && echo "$workdir" || echo "$workdir/student_export")" \
      --name "stage 1" --name "$name" "${EVAL_ARGS[@]}" --out "$workdir/eval"; }
}

variants() {
  variant distill_3000 configs/toy_distill.py --config.train.steps=3000 --config.train.checkpoint_every=1000
  variant finetune_lr1e-4 configs/toy_finetune.py --config.optim.learning_rate=1e-4
  [ -d runs/toy/teacher_samples ] || { step "teacher samples"
    $PY -m rehyat_jax.toy.teacher_samples --teacher runs/toy_teacher/dit --out runs/toy/teacher_samples --count 1024; }
  variant finetune_teacher_samples configs/toy_finetune.py --config.data.data_dir=runs/toy/teacher_samples
}

case $what in
  main) main_chain ;;
  ablations) main_chain; ablations ;;
  variants) main_chain; variants ;;
  all) main_chain; ablations; variants ;;
  *) echo "usage: $0 [main|ablations|variants|all]" >&2; exit 2 ;;
esac
echo; echo "done: runs/toy_eval/ladder.md and runs/toy_ablation/*/"
