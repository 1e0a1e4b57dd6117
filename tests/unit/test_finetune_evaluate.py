"""Fine-tuning and evaluation without training: scores, intervals, baselines, YaRN and windows,
fine-tuning batches (answer-only loss, curricula, mixtures, resumable streams), perplexity's documents.

Fine-tuning runs are in tests/integration/test_finetune_runs.py.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TASK_VOCAB, capture_figures, task_model
from metatokens import cli
from metatokens.runs.model_folder import save_pretrained
from metatokens.evaluation.tasks import evaluate_task
from metatokens.evaluation.scoring import prompts_digest, score_examples
from metatokens.stats import wilson_interval
from metatokens.errors import EvaluationError
from metatokens.evaluation.loading import LoadedModel
from metatokens.model.yarn import apply_yarn
from metatokens.training.task_batches import TaskBatches
from metatokens.generation import generate
from metatokens.model.positions import rope_inv_freq
from metatokens.tasks import Example, Phase, make_examples

COMMANDS = ["metatokens.cli.finetune", "metatokens.cli.evaluate"]


@pytest.fixture
def commands(monkeypatch):
    assert set(COMMANDS) <= set(cli.COMMAND_MODULES)  # registered in the real CLI


# ----------------------------------------------------------------------------- statistics


def test_wilson_interval_matches_published_values_and_formula():
    # Published 95% Wilson intervals (Newcombe 1998, Table I): 0/10 -> (0, 0.2775); 8/10 -> (0.4902, 0.9433);
    # 1/29 -> (0.0061, 0.1718); 81/263 -> (0.2553, 0.3662).
    for (k, n), expected in {(0, 10): (0.0, 0.2775), (8, 10): (0.4902, 0.9433), (1, 29): (0.0061, 0.1718),
                             (81, 263): (0.2553, 0.3662)}.items():
        assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-4)
    z, k, n = 1.96, 37, 50  # the closed form, written out independently
    p = k / n
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n, z) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))
    assert wilson_interval(0, 0) == (0.0, 1.0)


# ----------------------------------------------------------------------------- scoring


class Oracle(nn.Module):
    """Knows the test examples: puts all logit mass on the answer (or on a wrong token) at the answer positions."""

    def __init__(self, examples, vocab, right=True):
        super().__init__()
        self.examples, self.vocab, self.right = examples, vocab, right
        self.max_positions = None

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, self.vocab)
        for b, row in enumerate(idx.tolist()):
            example = next(e for e in self.examples if row[: len(e.prompt_ids)] == list(e.prompt_ids))
            for j, token in enumerate(example.answer_ids):
                wrong = 2 if token != 2 else 3  # an ordinary token id, never the answer's
                logits[b, len(example.prompt_ids) - 1 + j, token if self.right else wrong] = 10.0
        return logits, None


def _oracles_on_list_recall(task_tokenizer):
    """(test examples by length, evaluate_task's result) for an always-right and a never-right oracle."""
    known = {length: make_examples("list_recall", task_tokenizer, length=length, n=12, seed=3, split="test", meta=False)
             for length in (64, 96)}
    everything = [e for ex in known.values() for e in ex]
    models = [LoadedModel(name, "-", Oracle(everything, TASK_VOCAB, right), task_tokenizer, "oracle") for name, right in
              (("right", True), ("wrong", False))]
    return known, evaluate_task(models, "list_recall", [64, 96], n=12, seed=3, progress=False)


def test_an_always_right_model_scores_100_and_a_never_right_one_0(task_tokenizer):
    # The oracles only know the test split, so this also checks that evaluation draws test examples.
    known, result = _oracles_on_list_recall(task_tokenizer)
    right, wrong = result["models"]
    for r in right["results"]:
        assert r["n"] == 12 and r["exact"] == 12 and r["exact_match"] == 1.0 and r["token_accuracy"] == 1.0
        assert r["exact_match_ci95"] == pytest.approx(wilson_interval(12, 12))
        assert r["answer_tokens"] == sum(len(e.answer_ids) for e in known[r["length"]])
    for r in wrong["results"]:
        assert r["exact"] == 0 and r["exact_match"] == 0.0 and r["tokens_correct"] == 0
        assert r["exact_match_ci95"][0] == 0.0 and r["exact_match_ci95"][1] == pytest.approx(wilson_interval(0, 12)[1])


def test_the_accuracy_plot_names_models_and_task_and_draws_the_majority_and_chance_lines(task_tokenizer, monkeypatch):
    import metatokens.evaluation.report as report
    import metatokens.evaluation.scoring as scoring

    known, result = _oracles_on_list_recall(task_tokenizer)
    for r in result["models"][0]["results"]:  # the guessers' exact match on the very prompts scored
        ex = known[r["length"]]
        assert r["baselines"]["chance"] == pytest.approx(sum(1 / len(e.info["lists"][e.info["target"]]) for e in ex) / 12)
        assert r["baselines"]["majority"] == max(sum(e.answer_text == a.answer_text for e in ex) for a in ex) / 12
    parity = make_examples("parity", task_tokenizer, length=64, n=8, seed=0, split="test", meta=False)
    assert scoring.answer_baselines(parity)["chance"] == 0.5

    figures = capture_figures(monkeypatch, report)
    report.task_plot(result, "unused.png")
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert "right, wrong" in title and "list_recall" in title and "12 test prompts per length" in title
    exact = fig.axes[0]
    lines = {line.get_label(): line for line in exact.get_lines()}
    for which, label in (("majority", "majority answer"), ("chance", "chance")):
        assert list(lines[label].get_xdata()) == [64, 96]
        assert list(lines[label].get_ydata()) == pytest.approx(
            [100 * r["baselines"][which] for r in result["models"][0]["results"]])
    legend = [t.get_text() for t in exact.get_legend().get_texts()]
    assert {"majority answer", "chance", "right", "wrong"} <= set(legend)


def test_teacher_forced_exact_match_is_greedy_decoding(task_tokenizer):
    """Exact match must agree with metatokens.generation's greedy answer, token for token."""
    model = task_model(task_tokenizer, seed=1)
    base = make_examples("list_recall", task_tokenizer, length=64, n=6, seed=0, split="test")
    agree, off_by_one = [], []
    for e in base:
        prompt = torch.tensor([e.prompt_ids])
        greedy = generate(model, prompt, 3, temperature=0,
                          vocab_limit=task_tokenizer.vocab_size)[0, len(e.prompt_ids):].tolist()
        agree.append(Example(e.prompt_ids, greedy, e.meta_positions, e.prompt_text, "", {}))
        changed = greedy[:-1] + [greedy[-1] + 1 if greedy[-1] + 1 not in (task_tokenizer.meta_token_id,) else greedy[-1] + 2]
        off_by_one.append(Example(e.prompt_ids, changed, e.meta_positions, e.prompt_text, "", {}))
    kw = dict(pad_id=task_tokenizer.eos_token_id, vocab_limit=task_tokenizer.vocab_size,
              meta_token_id=task_tokenizer.meta_token_id, batch_size=4)
    s = score_examples(model, agree, **kw)
    assert (s.examples, s.exact, s.tokens_correct, s.tokens) == (6, 6, 18, 18)
    s = score_examples(model, off_by_one, **kw)
    assert (s.exact, s.tokens_correct) == (0, 12)
    # per-example results follow the order given, whatever order the batches ran in (longest rows last)
    mixed = [agree[0], off_by_one[1], agree[2], off_by_one[3], agree[4], agree[5]]
    assert score_examples(model, mixed, **kw).per_example == [1, 0, 1, 0, 1, 1]
    assert score_examples(model, mixed[::-1], **kw).per_example == [1, 1, 0, 1, 0, 1]
    # the answer loss is the mean cross-entropy of the answer tokens, computed here by hand
    e = agree[0]
    with torch.no_grad():
        logits, _ = model(torch.tensor([list(e.prompt_ids) + e.answer_ids[:-1]]))
    p = len(e.prompt_ids)
    nll = F.cross_entropy(logits[0, p - 1 :], torch.tensor(e.answer_ids), reduction="sum")
    assert score_examples(model, [e], **kw).nll == pytest.approx(float(nll), rel=1e-5)


# ----------------------------------------------------------------------------- YaRN and windows


def test_yarn_keeps_fast_dimensions_and_interpolates_slow_ones(task_tokenizer):
    model = task_model(task_tokenizer, block_size=1024, n_embd=64)  # head dim 32: some dimensions on each side of the ramp
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_yarn(model, 4)
    assert model.config.yarn.factor == 4 and model.config.yarn.original_max_position_embeddings == 1024
    assert model.config.block_size == 4096
    plain = rope_inv_freq(model.config.head_dim, model.config.rope_theta)
    # YaRN (Peng et al. 2023): dimensions turning > beta_fast=32 times over L keep their frequency;
    # those turning < beta_slow=1 times are divided by the scale.
    turns = plain * 1024 / (2 * math.pi)
    fast, slow = turns > 32, turns < 1
    assert fast.any() and slow.any()
    assert torch.allclose(model.rotary.inv_freq[fast], plain[fast])
    assert torch.allclose(model.rotary.inv_freq[slow], plain[slow] / 4)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # weights untouched
    apply_yarn(model, 2)  # a second scale is relative to the same original window, not compounded
    assert model.config.yarn.original_max_position_embeddings == 1024 and model.config.block_size == 2048


def test_beyond_the_window_runs_for_rope_with_yarn_and_is_refused_for_ape(task_tokenizer, tmp_path, commands, capsys):
    save_pretrained(tmp_path / "rope", task_model(task_tokenizer, block_size=64), task_tokenizer)
    save_pretrained(tmp_path / "ape", task_model(task_tokenizer, block_size=64, pos_encoding="ape"), task_tokenizer)
    args = ["evaluate", "--task", "list_recall", "--lengths", "64,128", "--n", "4", "--no-progress"]
    assert cli.main([*args, "--checkpoint", str(tmp_path / "rope"), "--yarn-scale", "2", "--out", str(tmp_path / "e1")]) == 0
    result = json.loads((tmp_path / "e1" / "list_recall.json").read_text())
    model = result["models"][0]
    assert model["yarn"]["factor"] == 2 and [r["length"] for r in model["results"]] == [64, 128]
    assert model["results"][1]["positions_needed"] > 64  # really beyond the pre-training window
    capsys.readouterr()
    code = cli.main([*args, "--checkpoint", str(tmp_path / "ape"), "--out", str(tmp_path / "e2")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "64 learned positions" in err and "length 128" in err
    assert not (tmp_path / "e2").exists()  # refused before anything was written
    both = [str(tmp_path / "ape"), str(tmp_path / "rope")]
    assert cli.main([*args, "--checkpoint", *both, "--skip-unfit", "--yarn-scale", "2", "--out", str(tmp_path / "e3")]) == 0
    ape, rope = json.loads((tmp_path / "e3" / "list_recall.json").read_text())["models"]
    assert ape["results"][1]["n"] == 0 and "learned positions" in ape["results"][1]["skipped"] and rope["results"][1]["n"] == 4


def test_evaluate_split_dev_scores_the_dev_prompts(task_tokenizer, tmp_path, commands, capsys):
    """`metatokens evaluate --split dev` scores dev prompts (for recipe choices), and says so; the default
    stays the test prompts; with --task no other split is taken, before any model is loaded."""
    save_pretrained(tmp_path / "m", task_model(task_tokenizer), task_tokenizer)
    args = ["evaluate", "--checkpoint", str(tmp_path / "m"), "--task", "list_recall", "--lengths", "64", "--n", "6",
            "--seed", "2", "--no-progress"]
    digests = {}
    for split, flag in (("test", []), ("dev", ["--split", "dev"])):
        assert cli.main([*args, *flag, "--out", str(tmp_path / split)]) == 0
        out = capsys.readouterr().out
        result = json.loads((tmp_path / split / "list_recall.json").read_text())
        assert result["split"] == split and f"6 {split} examples per length" in out
        digests[split] = result["models"][0]["results"][0]["prompts_sha256"]
        chosen = make_examples("list_recall", task_tokenizer, length=64, n=6, seed=2, split=split)
        assert digests[split] == prompts_digest(chosen)
    assert digests["dev"] != digests["test"]
    assert cli.main([*args, "--split", "train", "--out", str(tmp_path / "train")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--split" in err and "test or dev" in err and not (tmp_path / "train").exists()
    with pytest.raises(EvaluationError, match="test or dev"):
        evaluate_task([_loaded(task_tokenizer, "m")], "list_recall", [64], n=2, split="train", progress=False)


# ----------------------------------------------------------------------------- fine-tuning batches


def test_finetune_rows_put_the_loss_on_answer_tokens_only(task_tokenizer):
    plan = [Phase(64, "medium")]
    batches = TaskBatches("list_recall", task_tokenizer, plan, batch_size=4, seed=0, meta=True, total_batches=10)
    examples = batches.examples(0)
    x, y = batches.next_batch()
    assert x.shape[1] == max(len(e.prompt_ids) + len(e.answer_ids) - 1 for e in examples)
    for row, e in enumerate(examples):
        p, a = len(e.prompt_ids), len(e.answer_ids)
        assert x[row, :p].tolist() == e.prompt_ids and x[row, p : p + a - 1].tolist() == e.answer_ids[:-1]
        assert (x[row, p + a - 1 :] == task_tokenizer.eos_token_id).all()  # right padding with EOS
        assert (y[row, : p - 1] == -100).all() and (y[row, p + a - 1 :] == -100).all()
        assert y[row, p - 1 : p + a - 1].tolist() == e.answer_ids
        assert task_tokenizer.meta_token_id in e.prompt_ids and task_tokenizer.meta_token_id not in y[row].tolist()
    # the model's loss on these rows is the mean cross-entropy of the answer tokens alone
    model = task_model(task_tokenizer)
    with torch.no_grad():
        logits, loss = model(x, y)
    terms = [F.cross_entropy(logits[r, len(e.prompt_ids) - 1 + j], torch.tensor(t)) for r, e in enumerate(examples)
             for j, t in enumerate(e.answer_ids)]
    assert float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    # train examples only, and the stream resumes exactly from its state
    assert all(e.info["split"] == "train" for e in examples)
    batches.next_batch()
    state = batches.state_dict()
    after = batches.next_batch()
    again = TaskBatches("list_recall", task_tokenizer, plan, batch_size=4, seed=0, meta=True, total_batches=10)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(after, again.next_batch()))
    with pytest.raises(ValueError, match="seed"):
        TaskBatches("list_recall", task_tokenizer, plan, batch_size=4, seed=1, meta=True,
                    total_batches=10).load_state_dict(state)


def test_curriculum_phases_grow_and_split_the_batches(task_tokenizer):
    plan = [Phase(64, "medium"), Phase(96, "medium"), Phase(128, "hard")]
    batches = TaskBatches("list_recall", task_tokenizer, plan, batch_size=2, seed=0, meta=False, total_batches=9)
    lengths = [max(len(e.prompt_ids) for e in batches.examples(b)) for b in range(9)]
    for b, longest in enumerate(lengths):
        low, high = (48, 64) if b < 3 else (72, 96) if b < 6 else (96, 128)
        assert low <= longest <= high, (b, longest)
    assert all(e.info["difficulty"] == "hard" for e in batches.examples(8))


def test_finetune_takes_pretrains_max_steps_flag():
    """One flag vocabulary: `finetune --max-steps N` as `pretrain --max-steps N` (`--steps` still works)."""
    from metatokens.cli.main import build_parser

    parser = build_parser()
    base = ["finetune", "--out", "x", "--init", "y"]
    assert parser.parse_args([*base, "--max-steps", "7"]).steps == 7
    assert parser.parse_args([*base, "--steps", "8"]).steps == 8


def test_mixture_slots_share_the_cycle_evenly():
    from metatokens.training.task_batches import mixture_slots

    assert mixture_slots([1]) == [0]
    assert mixture_slots([2, 1, 1]) == [0, 1, 2, 0]  # worked by hand: credits 2,1,1 added, the top one pays 4
    slots = mixture_slots([3, 1, 1, 3])
    assert [slots.count(t) for t in range(4)] == [3, 1, 1, 3]
    assert all(a != b or a in (0, 3) for a, b in zip(slots, slots[1:]))  # no task bunched beyond its share
    with pytest.raises(ValueError, match="positive integers"):
        mixture_slots([1, 0])


def test_a_mixture_interleaves_each_tasks_own_stream_in_its_share(task_tokenizer):
    """Every example of a mixed batch is the next one of its own task's stream (made here directly with
    iter_examples, in the order the stream would give it), and tasks appear in the set shares."""
    from metatokens.training.task_batches import CHUNK, _chunk_seed
    from metatokens.tasks import iter_examples

    tasks, weights = ["list_recall", "copying"], [3, 1]
    plans = [[Phase(96, "medium")], [Phase(96, "medium")]]
    batches = TaskBatches(tasks, task_tokenizer, plans, batch_size=6, seed=2, meta=True, total_batches=20, weights=weights)
    seen = [e for b in range(4) for e in batches.examples(b)]  # 24 examples: 18 + 6
    by_task = {t: [e for e in seen if e.info["task"] == t] for t in tasks}
    assert [len(by_task[t]) for t in tasks] == [18, 6]
    for t in tasks:
        own = list(iter_examples(t, task_tokenizer, length=96, difficulty="medium", n=CHUNK, seed=_chunk_seed(2, 0, 0),
                                 split="train", meta=True))[: len(by_task[t])]
        assert [e.prompt_ids for e in by_task[t]] == [e.prompt_ids for e in own]
    # resumes exactly, and refuses another mixture
    batches.next_batch()
    state = batches.state_dict()
    after = batches.next_batch()
    again = TaskBatches(tasks, task_tokenizer, plans, batch_size=6, seed=2, meta=True, total_batches=20, weights=weights)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(after, again.next_batch()))
    with pytest.raises(ValueError, match="weights"):
        TaskBatches(tasks, task_tokenizer, plans, batch_size=6, seed=2, meta=True, total_batches=20,
                    weights=[1, 1]).load_state_dict(state)


def _loaded(task_tokenizer, name, data=None):
    info = {"config": {"data": data}} if data is not None else {}
    return LoadedModel(name, name, task_model(task_tokenizer), task_tokenizer, "metatokens", info)


def test_perplexity_auto_scores_exactly_the_documents_pretraining_held_out(task_tokenizer, tmp_path):
    """every=auto on the models' own pre-training corpus: the token stream scored is the packed
    validation split of `prepare_data` (the pre-training's own hold-out), token for token."""
    from metatokens.data.packing import prepare_data
    from metatokens.evaluation.perplexity import _token_stream, documents_to_score

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [e.prompt_text + e.answer_text for e in make_examples("list_recall", task_tokenizer, length=80, n=40, seed=11)]
    for i, text in enumerate(texts):
        (corpus / f"doc{i:03d}.txt").write_text(text)
    data = {"source": str(corpus), "val_fraction": 0.1, "hf_config": None, "split": "train"}
    every, note = documents_to_score([_loaded(task_tokenizer, "a", data), _loaded(task_tokenizer, "b", data)], str(corpus),
                                     "auto", split="test")
    assert every == 10 and "pre-training validation documents of a, b" in note
    packed = prepare_data(str(corpus), task_tokenizer, tmp_path / "cache", val_fraction=0.1, progress=False)
    stream, used = _token_stream(task_tokenizer, str(corpus), 10**9, every=every, max_documents=None, text_field="text",
                                 hf_config=None, split="test")
    assert used == 4 and stream.tolist() == [int(t) for t in packed.val]


def test_perplexity_auto_says_when_the_documents_may_have_been_trained_on(task_tokenizer):
    from metatokens.evaluation.perplexity import documents_to_score

    builtin = {"source": "builtin", "val_fraction": 0.005}
    assert documents_to_score([_loaded(task_tokenizer, "a", builtin)], "builtin", "auto")[0] == 200
    every, note = documents_to_score([_loaded(task_tokenizer, "a", builtin), _loaded(task_tokenizer, "ft")], "builtin", "auto")
    assert every == 200 and "ft: pre-training corpus not recorded" in note
    every, note = documents_to_score([_loaded(task_tokenizer, "ft")], "builtin", "auto")
    assert every == 1 and "may have been seen in training" in note
    assert documents_to_score([_loaded(task_tokenizer, "a", builtin)], "other.txt", "auto") == (1, "every document (no model was "
                                                                                        "pre-trained on this source)")
    assert documents_to_score([_loaded(task_tokenizer, "a", builtin)], "builtin", 7)[0] == 7
    with pytest.raises(EvaluationError, match="hold out different documents of builtin"):
        documents_to_score([_loaded(task_tokenizer, "a", builtin),
                            _loaded(task_tokenizer, "b", {"source": "builtin", "val_fraction": 0.01})],
                           "builtin", "auto")
    hf = {"source": "hf:c4", "hf_config": "en", "split": "train", "val_fraction": 0.005}
    assert documents_to_score([_loaded(task_tokenizer, "a", hf)], "hf:c4", "auto", hf_config="en", split="validation")[0] == 1
    assert documents_to_score([_loaded(task_tokenizer, "a", hf)], "hf:c4", "auto", hf_config="en", split="train")[0] == 200
