"""The rate-distortion probe can test the paper's claim: its decoder sees the question, its
no-information line is the best decoder that ignores z but sees the question, and it says whether
a probe learned anything.

Independent references: a synthetic state that holds a list of items, one per block of
coordinates, with the question picking one (the answer is a function of state and question); pure
noise; the conditional prior computed by hand and by literally leaving each example out; the
model's own per-prompt hidden states.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import capture_figures, task_model

from metatokens.analysis import (
    conditional_prior,
    hidden_features,
    learned_summary,
    no_information_losses,
    sweep,
)
from metatokens.analysis.no_information import leave_one_out_cross_entropy
from metatokens.tasks import Example, make_examples, question_key

K, P = 6, 3  # answer classes; items per list, i.e. question values


def item_lists(n: int, seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(states, answers, questions): each state holds P items as one-hot blocks (plus 6 empty
    coordinates, all with a little noise); the question q picks the item the answer is."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, K, (n, P), generator=g)
    x = torch.cat([torch.nn.functional.one_hot(items, K).flatten(1).float(), torch.zeros(n, 6)], 1)
    x = x + noise * torch.randn(x.shape, generator=g)
    q = torch.randint(0, P, (n,), generator=g)
    return x, items[torch.arange(n), q], q


def test_a_probe_told_the_question_reads_the_item_it_asks_for_and_a_blind_one_cannot():
    fit, held = item_lists(300, 0), item_lists(300, 1)
    line = no_information_losses(fit[1:], held[1:], K, P)
    assert float(line.mean()) == pytest.approx(math.log(K), abs=0.05)  # the question alone says nothing
    kw = {"epochs": 10, "batch_size": 16, "lr": 1e-2}
    asked = sweep(fit, held, K, [0.001, 1.0], n_questions=P, **kw)
    verdict = learned_summary(asked, line.tolist())
    assert asked[0]["test_distortion"] < 0.4 and asked[0]["test_accuracy"] > 0.9, asked[0]
    assert verdict["learned"] and verdict["best_beta"] == 0.001 and verdict["ci95"][0] > 1.0
    assert len(asked[0]["test_distortion_per_example"]) == 300
    # Without the question the best a decoder can do is spread over the list's P items: ln 3 nats.
    blind = sweep(fit[:2], held[:2], K, [0.001, 1.0], **kw)
    assert min(p["test_distortion"] for p in blind) > 0.9 * math.log(P)
    # At beta = 1 the probe keeps no information and sits on the line.
    assert asked[1]["test_rate"] < 0.1
    assert asked[1]["test_distortion"] == pytest.approx(float(line.mean()), abs=0.05)


@pytest.mark.parametrize("labels", ["random", "the question"])
def test_a_probe_of_noise_learns_nothing(labels):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 24, generator=g)
    q = torch.randint(0, P, (600,), generator=g)
    # "the question": the answer is the question value, which the line already knows
    y = torch.randint(0, K, (600,), generator=g) if labels == "random" else q
    fit, held = (x[:300], y[:300], q[:300]), (x[300:], y[300:], q[300:])
    line = no_information_losses(fit[1:], held[1:], K, P)
    points = sweep(fit, held, K, [0.01, 0.1, 1.0], n_questions=P)
    verdict = learned_summary(points, line.tolist())
    assert not verdict["learned"], verdict
    assert verdict["best_distortion"] >= float(line.mean()) - 0.03
    assert verdict["margin_nats"] == pytest.approx(float(line.mean()) - verdict["best_distortion"], abs=1e-6)


def test_the_conditional_prior_by_hand():
    y, q = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 0, 0, 1, 1])
    # add-one marginal: counts 2, 2, 1 -> 3/8, 3/8, 2/8; with m = 2:
    #   q = 0 (counts 2, 1, 0): (2 + 0.75, 1 + 0.75, 0 + 0.5) / (3 + 2) = 0.55, 0.35, 0.10
    #   q = 1 (counts 0, 1, 1): (0 + 0.75, 1 + 0.75, 1 + 0.5) / (2 + 2) = 0.1875, 0.4375, 0.375
    table, strength = conditional_prior(y, q, 3, 2, strength=2.0)
    assert strength == 2.0
    torch.testing.assert_close(table, torch.tensor([[0.55, 0.35, 0.10], [0.1875, 0.4375, 0.375]], dtype=torch.float64))
    losses = no_information_losses((y, q), (torch.tensor([0, 2]), torch.tensor([0, 1])), 3, 2, strength=2.0)
    torch.testing.assert_close(losses, torch.tensor([-math.log(0.55), -math.log(0.375)], dtype=torch.float64))
    # a question value the fitting set never had gets the marginal; m = inf is the marginal everywhere
    table, _ = conditional_prior(y, q, 3, 3, strength=2.0)
    torch.testing.assert_close(table[2], torch.tensor([3 / 8, 3 / 8, 2 / 8], dtype=torch.float64))
    table, _ = conditional_prior(y, q, 3, 2, strength=math.inf)
    torch.testing.assert_close(table, torch.tensor([[3 / 8, 3 / 8, 2 / 8]] * 2, dtype=torch.float64))


@pytest.mark.parametrize("strength", [0.5, 4.0, math.inf])
def test_leave_one_out_is_fitting_without_each_example(strength):
    g = torch.Generator().manual_seed(1)
    y, q = torch.randint(0, 4, (30,), generator=g), torch.randint(0, 3, (30,), generator=g)
    by_hand = []
    for i in range(30):
        keep = torch.arange(30) != i
        table, _ = conditional_prior(y[keep], q[keep], 4, 3, strength=strength)
        by_hand.append(-math.log(table[q[i], y[i]]))
    assert leave_one_out_cross_entropy(y, q, 4, 3, strength) == pytest.approx(sum(by_hand) / 30)


def test_the_strength_follows_how_much_the_question_says():
    g = torch.Generator().manual_seed(2)
    q = torch.randint(0, 4, (400,), generator=g)
    _, told = conditional_prior(q.clone(), q, 4, 4)  # the answer is the question: trust the counts
    _, untold = conditional_prior(torch.randint(0, 4, (400,), generator=g), q, 4, 4)  # independent
    assert told <= 0.5 and untold >= 64


def test_question_keys_name_what_the_question_adds(task_tokenizer):
    (example,) = make_examples("list_recall", task_tokenizer, length=64, n=1, seed=0)
    position = example.info["position"]
    assert question_key(example) == (position,)
    assert f"which word is number {position}?" in example.prompt_text
    for task, info, key in [("segment_counting", {"word": "goat"}, ("goat",)), ("parity", {"p": 4}, ()),
                            ("copying", {"target": 1}, ())]:
        assert question_key(Example([1], [2], [0], "", "", {"task": task, **info})) == key


def test_batched_features_are_the_per_prompt_states(task_tokenizer):
    model = task_model(task_tokenizer)
    examples = make_examples("list_recall", task_tokenizer, length=64, n=5, seed=0)
    assert len({len(e.prompt_ids) for e in examples}) > 1  # so some prompts are padded
    for layer in (None, 1):
        batched = hidden_features(model, examples, layer=layer, batch_size=4)
        for i, e in enumerate(examples):
            one = hidden_features(model, [e], layer=layer, batch_size=1)
            for key in ("last_meta", "last_token"):
                torch.testing.assert_close(batched[key][i], one[key][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("told", [True, False])
def test_the_result_carries_the_line_the_verdicts_and_per_example_values(task_tokenizer, told):
    from metatokens.analysis import rate_distortion_analysis

    model = task_model(task_tokenizer)
    fit = make_examples("list_recall", task_tokenizer, length=64, n=8, seed=0, split="train")
    held = make_examples("list_recall", task_tokenizer, length=64, n=6, seed=0, split="test")
    result = rate_distortion_analysis(model, fit, held, betas=[0.1, 1.0], epochs=1,
                                      **({} if told else {"question": None}))
    positions = sorted({e.info["position"] for e in fit + held})
    assert result["questions"] == ([[p] for p in positions] if told else [[]])
    assert sum(result["question_counts_train"]) == 8
    assert len(result["no_information_test_per_example"]) == 6
    assert result["no_information_test"] == pytest.approx(sum(result["no_information_test_per_example"]) / 6)
    assert set(result["learned"]) == set(result["curves"]) == {"last_meta", "last_token", "last_meta_zero_pos"}
    for name, points in result["curves"].items():
        assert [len(p["test_distortion_per_example"]) for p in points] == [6, 6]
        verdict = result["learned"][name]
        assert set(verdict) == {"best_beta", "best_distortion", "no_information", "margin_nats", "ci95",
                                "ci_selection", "learned"}
        assert verdict["best_distortion"] == min(p["test_distortion"] for p in points)


@pytest.mark.parametrize("questions", [[[1], [2]], [[]]])
def test_the_figure_draws_the_line_it_was_given_and_says_which_probe_learned(monkeypatch, questions):
    import metatokens.analysis.rate_distortion_plot as plot

    figures = capture_figures(monkeypatch, plot)
    points = [{"beta": b, "rate": r, "distortion": 2.0, "test_rate": r, "test_distortion": 3.0 + r / 10}
              for b, r in ((0.1, 2.0), (1.0, 0.0))]
    verdict = {"best_beta": 1.0, "best_distortion": 3.0, "no_information": 3.2, "margin_nats": 0.2,
               "ci95": [0.1, 0.3], "ci_selection": {"level": 0.975, "interval": [0.05, 0.35]}, "learned": True}
    result = {"n_train": 10, "n_test": 10, "questions": questions, "no_information_train": 2.5,
              "no_information_test": 3.2, "curves": {"last_meta": points, "last_token": points},
              "learned": {"last_meta": verdict, "last_token": {**verdict, "learned": False}}}
    plot.plot_rate_distortion(result, "unused.png", title="t")
    (fig,) = figures
    train, held = ([t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes)
    line = "p(answer | question)" if questions != [[]] else "the label prior"
    assert any(line in t and "3.20" in t for t in held) and any(line in t and "2.50" in t for t in train)
    assert held[0].startswith("last meta-token: learned;") and "97.5% CI +0.05 to +0.35" in held[0]
    assert held[1].startswith("last token: learned nothing;") and train[:2] == ["last meta-token", "last token"]
    dotted = [ln for ln in fig.axes[1].get_lines() if ln.get_linestyle() == ":"]
    assert len(dotted) == 1 and dotted[0].get_ydata()[0] == 3.2
