"""Where do the fine-tuned models' greedy answers come from? (docs/results/list_recall_tiny.md)

For each test example: decode the greedy answer (metatokens.generation, temperature 0) and classify
the word as the right one, another word of the queried (meta-marked) list, a word of another list,
or something else. Run from the repository root: python docs/results/list_recall_tiny/diagnose.py
"""

import json
import sys
from collections import Counter

import torch

from metatokens.evaluation.loading import load_model, uses_meta
from metatokens.model.yarn import apply_yarn
from metatokens.generation import generate
from metatokens.tasks import make_examples

RUNS = sys.argv[1:] or ["runs/lr120-tiny", "runs/lr120-tiny-ape", "runs/lr120-tiny-baseline",
                        "runs/lr120-tiny-nometa", "runs/lr120-tiny-ape-nometa"]
torch.set_num_threads(1)
table = {}
for path in RUNS:
    loaded = load_model(path)
    meta = uses_meta(loaded)
    for length in (120, 240):
        if length == 240 and loaded.pos_encoding == "rope":
            apply_yarn(loaded.model, 2)
        examples = make_examples("list_recall", loaded.tokenizer, length=length, n=200, seed=1, split="test", meta=meta)
        counts = Counter()
        for e in examples:
            out = generate(loaded.model, torch.tensor([e.prompt_ids]), 8, temperature=0,
                           vocab_limit=loaded.tokenizer.vocab_size)[0, len(e.prompt_ids):].tolist()
            if loaded.tokenizer.eos_token_id in out:
                out = out[: out.index(loaded.tokenizer.eos_token_id)]
            word = loaded.tokenizer.decode(out).strip()
            target = e.info["lists"][e.info["target"]]
            if word == e.answer_text.strip():
                counts["right word"] += 1
            elif word == e.info["query"]:
                counts["the query word itself"] += 1
            elif word in target:
                counts["other word of the queried list"] += 1
            elif any(word in lst for lst in e.info["lists"]):
                counts["word of another list"] += 1
            else:
                counts["not a listed word"] += 1
        table[f"{loaded.name} @ {length}"] = {k: v / len(examples) for k, v in sorted(counts.items())}
print(json.dumps(table, indent=1))
