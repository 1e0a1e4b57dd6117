#!/usr/bin/env bash
# The probes that chose the tiny study's 2026-12-06 recipe (docs/study.md, "The tiny recipe"). Each is one
# `metatokens finetune` of the tiny Meta+RoPE shape from scratch (1,320,704 parameters), seed 0, one thread,
# two runs at a time; run.json and metrics.jsonl of each kept run are beside this file.
#   bash docs/results/recipe_probe/run.sh            # about 35 minutes on 2 cores
set -euo pipefail
OUT=${OUT:-runs/recipe-probe}
export OMP_NUM_THREADS=1
common=(--from-scratch tiny --lr 2e-3 --seed 0 --no-progress --set train.ckpt_interval=0)
lr=(--task list_recall --max-len 96 --eval-n 100 --set train.eval_interval=250)
# List Recall alone at L = 96 (as docs/results/list_recall_probe/seed0-meta, which ran batch 16 for 4,000 steps):
# half the batch for as many steps, and the full batch on a shorter cosine
metatokens finetune "${common[@]}" "${lr[@]}" --batch-size 8 --steps 4000 --out "$OUT/list-recall-batch8-4000" &
metatokens finetune "${common[@]}" "${lr[@]}" --batch-size 16 --steps 2500 --out "$OUT/list-recall-batch16-2500" &
wait
mix=(--difficulty medium --meta on --batch-size 16 --eval-n 64 --set train.eval_interval=400 --set train.warmup_steps=100)
# the study's four-task mixture at L = 120 with List Recall's share raised (stopped at step 2,800: Copying still 0%)
metatokens finetune "${common[@]}" "${mix[@]}" --max-len 120 --steps 5000 \
  --task list_recall,segment_counting,parity,copying --task-weights 8,1,1,4 --out "$OUT/mixture-L120-8-1-1-4" &
# List Recall and Copying at L = 96 (Segment Counting's medium prompts do not fit 96 tokens). On 2026-12-06 this
# run stopped near step 2,100 on a copying candidate that fit nowhere in the window (fixed since: such a
# candidate is skipped), and its folder went with it; its held-out numbers up to step 2,000 were read off the log
metatokens finetune "${common[@]}" "${mix[@]}" --max-len 96 --steps 5200 \
  --task list_recall,copying --task-weights 5,2 --out "$OUT/mixture-L96-5-2" &
wait
# the figure reads the copies kept beside this file (run.json, metrics.jsonl; the tiny preset's tokenizer.json in
# list-recall-batch8-4000/): copy a new run's files there first
python docs/results/recipe_probe/plot.py
