#!/usr/bin/env bash
# Does a higher peak learning rate rescue the tiny study's List Recall jump where it missed? Two of the
# study's fine-tunes that missed it, re-run with every setting of the study (docs/study.md, "The tiny
# recipe") but lr 3e-3 (cosine to 3e-4) instead of 2e-3: seed 2's pre-trained Meta+RoPE (41% on the test
# prompts) and seed 1's not-pre-trained Meta+RoPE (22%). One thread each, both at once, about 13 minutes on
# 2 cores. Needs the study's seed-2 pre-training (metatokens reproduce --scale tiny --seeds 3 --seed 2
# --out runs/report-tiny). Each run is then scored on the study's own 100 test prompts at L = 96 (same
# command and seed as the study's evaluate stage: the prompts' sha256 matches the stage's), and compare.py
# prints the paired differences against the study's runs. run.json, metrics.jsonl and eval/ of each run are
# kept beside this file.
#   bash docs/results/lr_probe/run.sh
set -euo pipefail
OUT=${OUT:-runs/lr-probe}
STUDY=${STUDY:-runs/report-tiny}
export OMP_NUM_THREADS=1
study=(--task list_recall,parity,copying --task-weights 10,1,2 --max-len 96 --difficulty medium --meta on
       --steps 4500 --batch-size 16 --eval-n 64 --no-progress --set train.warmup_steps=100
       --set train.eval_interval=450 --set train.log_interval=112 --set train.ckpt_interval=0)
metatokens finetune "${study[@]}" --init "$STUDY/stages/seed2/pretrain-meta-rope/run" --seed 2 \
  --lr 3e-3 --set train.min_lr=3e-4 --out "$OUT/seed2-meta-rope-lr3e-3" &
metatokens finetune "${study[@]}" --from-scratch tiny --seed 1 \
  --lr 3e-3 --set train.min_lr=3e-4 --out "$OUT/seed1-scratch-meta-lr3e-3" &
wait
for pair in "seed2-meta-rope-lr3e-3 2" "seed1-scratch-meta-lr3e-3 1"; do
  set -- $pair
  for T in list_recall copying; do
    metatokens evaluate --checkpoint "$OUT/$1" --task $T --lengths 96 --n 100 --seed $2 --skip-unfit --out "$OUT/$1/eval"
  done
done
python docs/results/lr_probe/compare.py "$OUT"
# The whole of seed 0 at lr 3e-3 (stage.json of every stage and seed.json, no checkpoints; since 2026-12-06 the
# current study's seed 0, docs/results/reproduce_tiny/stages/seed0/): set ft_lr=3e-3 in the tiny Scale of
# src/metatokens/study/design.py (now the default), copy the lr-2e-3 study's seed-0 pre-training stages
# (runs/report-tiny/stages/seed0/pretrain-*, their settings are unchanged) into a new folder, then run
#   metatokens reproduce --scale tiny --seeds 3 --seed 0 --out runs/report-tiny-lr3e-3
