#!/usr/bin/env bash
# The List Recall / mixture probes of docs/study.md ("What was tried for List Recall"), 2026-12-02.
# Each is one `metatokens finetune` of the tiny Meta+RoPE shape from scratch (1,320,704 parameters,
# the preset's 2,048-id BPE), one thread; run.json and metrics.jsonl of each are kept beside this file.
#   bash docs/results/list_recall_probe/run.sh            # about 85 minutes on 2 cores (two at a time)
set -euo pipefail
OUT=${OUT:-runs/list-recall-probe}
export OMP_NUM_THREADS=1
common=(--from-scratch tiny --lr 2e-3 --batch-size 16 --no-progress)
for seed in 0 1; do
  # List Recall alone, L = 96 (prompts of 72-96 tokens), medium, 4,000 steps, cosine 2e-3 -> 2e-4
  metatokens finetune "${common[@]}" --seed $seed --task list_recall --max-len 96 --steps 4000 --eval-n 100 \
    --set train.eval_interval=250 --set train.ckpt_interval=1000 --out "$OUT/seed$seed-meta" &
  # the same, with the meta-token left out of every prompt (training and held-out)
  metatokens finetune "${common[@]}" --seed $seed --task list_recall --max-len 96 --steps 4000 --eval-n 100 --meta off \
    --set train.eval_interval=250 --set train.ckpt_interval=1000 --out "$OUT/seed$seed-no-meta" &
  wait
  # the same 300 test prompts (--seed 0) for every model; then the meta model without its marker
  metatokens evaluate --checkpoint "$OUT/seed$seed-meta" "$OUT/seed$seed-no-meta" --names meta,no-meta \
    --task list_recall --lengths 96 --n 300 --seed 0 --out "$OUT/eval-seed$seed"
  metatokens evaluate --checkpoint "$OUT/seed$seed-meta" --names meta-removed --task list_recall --lengths 96 \
    --n 300 --seed 0 --meta off --out "$OUT/eval-seed$seed-meta-removed"
done
# the tiny study's fine-tune of its not-pre-trained Meta+RoPE, for 4,000 steps instead of 1,800
metatokens finetune "${common[@]}" --seed 0 --task list_recall,segment_counting,parity,copying --task-weights 3,1,1,3 \
  --max-len 120 --difficulty medium --meta on --steps 4000 --eval-n 64 --set train.eval_interval=400 \
  --set train.warmup_steps=100 --set train.ckpt_interval=2000 --out "$OUT/mixture"
for task in copying list_recall; do
  metatokens evaluate --checkpoint "$OUT/mixture" --names mixture-4000 --task $task --lengths 120 --n 300 --seed 0 \
    --out "$OUT/eval-mixture"
done
metatokens plot "$OUT"/seed{0,1}-meta "$OUT"/seed{0,1}-no-meta --metric exact_match \
  --names "seed 0 meta prompts,seed 1 meta prompts,seed 0 no-meta prompts,seed 1 no-meta prompts" \
  --out "$OUT/list-recall-exact-match.png"
# seed 0 again with a constant learning rate, and with 6 layers instead of 4
metatokens finetune "${common[@]}" --seed 0 --task list_recall --max-len 96 --steps 4000 --eval-n 100 \
  --set train.eval_interval=250 --set train.ckpt_interval=1000 --set train.min_lr=2e-3 --out "$OUT/seed0-meta-constant-lr" &
metatokens finetune "${common[@]}" --seed 0 --task list_recall --max-len 96 --steps 4000 --eval-n 100 \
  --set train.eval_interval=250 --set train.ckpt_interval=1000 --set model.n_layer=6 --out "$OUT/seed0-meta-6-layers" &
wait
for run in constant-lr 6-layers; do
  metatokens evaluate --checkpoint "$OUT/seed0-meta-$run" --names $run --task list_recall --lengths 96 --n 300 --seed 0 \
    --out "$OUT/eval-$run"
done
