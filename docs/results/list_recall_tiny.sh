#!/usr/bin/env bash
# The List Recall experiment of docs/results/list_recall_tiny.md. Run from the repository root
# after pre-training the three tiny models:
#   metatokens pretrain --config tiny          --out runs/tiny            # Meta+RoPE
#   metatokens pretrain --config tiny-ape      --out runs/tiny-ape        # Meta+APE
#   metatokens pretrain --config tiny-baseline --out runs/tiny-baseline   # APE, no meta-tokens
# PARTS="main controls perplexity" (default) runs every part; PARTS=controls only that one.
set -euo pipefail
MT=${METATOKENS:-metatokens}
RUNS=${RUNS:-runs}
OUT=${OUT:-docs/results/list_recall_tiny}
STEPS=${STEPS:-1500}
PARTS=${PARTS:-main controls perplexity}
export OMP_NUM_THREADS=1  # two shared cores: one thread per process avoids oversubscription stalls
mkdir -p "$OUT"

finetune() {  # finetune INIT OUT [extra flags]: L = 120 (prompts of 90-120 tokens, medium), answer tokens only
  local init=$1 out=$2 start
  shift 2
  start=$(date +%s)
  $MT finetune --init "$RUNS/$init" --task list_recall --max-len 120 --steps "$STEPS" --lr 1e-3 --seed 0 \
    --out "$RUNS/$out" --no-progress "$@"
  echo "$out fine-tune wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/wall_times.txt"
}

evaluate() {  # evaluate OUT-SUBFOLDER NAMES LENGTHS [extra flags] -- RUN...: test split, 200 examples per bin
  local sub=$1 names=$2 lengths=$3 start
  shift 3
  local flags=()
  while [ "$1" != -- ]; do flags+=("$1"); shift; done
  shift
  start=$(date +%s)
  $MT evaluate --checkpoint "$@" --names "$names" --task list_recall --lengths "$lengths" --n 200 --seed 1 \
    --skip-unfit "${flags[@]}" --out "$OUT/$sub" --no-progress
  echo "evaluate $sub wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/wall_times.txt"
}

if [[ " $PARTS " == *" main "* ]]; then
  for run in tiny tiny-ape tiny-baseline; do finetune "$run" "lr120-$run"; done
  # L, 2L and 4L; APE models stop at their 256-row table. RoPE without YaRN, then YaRN x2 and x4.
  main=("$RUNS/lr120-tiny" "$RUNS/lr120-tiny-ape" "$RUNS/lr120-tiny-baseline")
  names="Meta+RoPE,Meta+APE,APE baseline"
  evaluate yarn-none "$names" 120,240,480 -- "${main[@]}"
  evaluate yarn-2 "$names" 120,240,480 --yarn-scale 2 -- "${main[@]}"
  evaluate yarn-4 "$names" 120,240,480,960 --yarn-scale 4 -- "${main[@]}"
fi

if [[ " $PARTS " == *" controls "* ]]; then
  # Same pre-trained weights without the meta-token in the task prompts; and a second fine-tuning seed
  # for the two APE models (the cleanest pair: same positions, with and without meta-tokens).
  finetune tiny-ape lr120-tiny-ape-nometa --meta off &
  finetune tiny lr120-tiny-nometa --meta off
  wait
  finetune tiny-ape lr120-tiny-ape-seed1 --seed 1 &
  finetune tiny-baseline lr120-tiny-baseline-seed1 --seed 1
  wait
  controls=("$RUNS/lr120-tiny-nometa" "$RUNS/lr120-tiny-ape-nometa" "$RUNS/lr120-tiny-ape-seed1"
            "$RUNS/lr120-tiny-baseline-seed1")
  names="Meta+RoPE no meta in prompts,Meta+APE no meta in prompts,Meta+APE seed 1,APE baseline seed 1"
  evaluate controls "$names" 120,240 --yarn-scale 2 -- "${controls[@]}"
fi

if [[ " $PARTS " == *" perplexity "* ]]; then
  # The pre-trained models on their own validation documents (every 200th built-in document =
  # val_fraction 0.005), with meta-tokens at the pre-training rate (auto) and without.
  start=$(date +%s)
  pre=("$RUNS/tiny" "$RUNS/tiny-ape" "$RUNS/tiny-baseline")
  names="Meta+RoPE,Meta+APE,APE baseline"
  $MT evaluate --perplexity builtin --every 200 --checkpoint "${pre[@]}" --names "$names" --rows 16 \
    --out "$OUT/perplexity-meta" --no-progress
  $MT evaluate --perplexity builtin --every 200 --checkpoint "${pre[@]}" --names "$names" --rows 16 \
    --meta-every none --out "$OUT/perplexity-none" --no-progress
  $MT evaluate --perplexity builtin --every 200 --checkpoint "$RUNS/tiny" --names Meta+RoPE --context 512 \
    --yarn-scale 2 --rows 8 --out "$OUT/perplexity-rope-512" --no-progress
  echo "perplexity wall seconds (3 calls): $(( $(date +%s) - start ))" | tee -a "$OUT/wall_times.txt"
fi
