"""Fine-tuning's learning-curve (held-out) prompts are dev-split prompts: nothing during training looks at a
test prompt, and none of them is a prompt the evaluation scores or the training stream draws."""

import hashlib

import pytest
import torch

import metatokens.evaluation.tasks as evaluate_module
from metatokens.evaluation.tasks import evaluate_task
from metatokens.training.task_batches import TaskBatches, TaskSpec, plan_phases
from metatokens.training.finetune import _held_out
from metatokens.evaluation.loading import LoadedModel
from metatokens.model import GPT
from metatokens.model.config import model_shape
from metatokens.tokenizer import MetaTokenizer

# (task, L): lengths where a byte-level tokenizer fits the medium prompts, and the prompt space is large
# (short parity prompts repeat by chance: 3-bit prompts cannot all differ)
CASES = [("list_recall", 192), ("copying", 192)]


@pytest.fixture(scope="module")
def tok():
    return MetaTokenizer.train(["ab"], 258)  # bytes only: no training text needed


def split_by_hand(prompt_text: str) -> str:
    """The task split rule written out (tasks/registry.py docstring): BLAKE2b-64 of the prompt text,
    an odd first byte is "test"; an even one is "dev" when the second byte is below 32, else "train"."""
    digest = hashlib.blake2b(prompt_text.encode("utf-8"), digest_size=8).digest()
    if digest[0] % 2 == 1:
        return "test"
    return "dev" if digest[1] < 32 else "train"


def held_out(tok, task, L, seed, n):
    spec = TaskSpec(task=task, max_len=L, seed=seed, eval_n=n, meta="on")
    return _held_out(spec, plan_phases(spec, tok, True), tok, True)


@pytest.mark.parametrize("task,L", CASES)
def test_learning_curve_prompts_come_from_the_dev_split(tok, task, L):
    for seed in (0, 1):
        examples = held_out(tok, task, L, seed, n=12)
        assert len(examples) == 12
        splits = [split_by_hand(e.prompt_text) for e in examples]
        assert splits == ["dev"] * 12, f"held-out prompts by the hash rule: {splits}"
        assert all(e.info["split"] == "dev" for e in examples)
        # ... so no prompt of the training stream (train split) can be among them
        batches = TaskBatches(task, tok, plan_phases(TaskSpec(task=task, max_len=L, seed=seed), tok, True),
                              batch_size=8, seed=seed, meta=True, total_batches=4)
        train_prompts = {e.prompt_text for b in range(4) for e in batches.examples(b)}
        assert all(split_by_hand(p) == "train" for p in train_prompts)
        assert not train_prompts & {e.prompt_text for e in examples}


@pytest.mark.parametrize("task,L", CASES)
def test_learning_curve_prompts_are_not_the_evaluation_test_prompts(tok, task, L, monkeypatch):
    """The study fine-tunes with --seed S (learning curves at L) and evaluates with --seed S at L and 2L
    (`metatokens evaluate`, `evaluate_task`); the prompts it watches while training must not be ones
    it later reports accuracy on, on the test split nor on the dev split (`evaluate --split dev`, for
    recipe choices: the curves' own seed offset keeps them apart)."""
    drawn = []
    real = evaluate_module.make_examples

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(evaluate_module, "make_examples", recording)
    torch.manual_seed(0)
    model = GPT(model_shape("toy", vocab_size=320, pos_encoding="rope", meta_token_id=tok.meta_token_id)).eval()
    loaded = LoadedModel("toy", "toy", model, tok, "metatokens")
    for seed, split in ((0, "test"), (1, "test"), (0, "dev"), (1, "dev")):
        drawn.clear()
        evaluate_task([loaded], task, [L, 2 * L], n=16, seed=seed, split=split, progress=False)
        evaluation = {e.prompt_text for examples in drawn for e in examples}
        assert len(evaluation) == 32 and len(drawn) == 2  # both lengths were drawn and seen here
        curve = {e.prompt_text for e in held_out(tok, task, L, seed, n=16)}
        shared = curve & evaluation
        assert not shared, f"seed {seed}: {len(shared)} of 16 learning-curve prompts are {split} evaluation prompts"
