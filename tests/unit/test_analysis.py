"""The analysis suite: attention recomputed from hooks, entropy, ablations, residual stream, VIB.

Every check compares against something independent of the code under test: a formula (ln n for
uniform attention, the Gaussian KL, a normal-theory interval), the model's own fused attention
output, greedy decoding from generate.py, or hand-edited weights.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import META, capture_figures, mixed_batch, toy_model

from metatokens import cli
from metatokens.analysis import (
    answer_accuracy,
    attention_entropy,
    attention_output,
    bootstrap_ci,
    distance_bins,
    entropy_analysis,
    kl_to_standard_normal,
    label_entropy,
    meta_attention,
    model_variant,
    self_attention,
    similarity_by_distance,
    sweep,
    trace,
)
from metatokens.analysis.entropy import near_meta
from metatokens.model.config import YarnConfig, model_shape
from metatokens.generation import generate
from metatokens.model import GPT
from metatokens.tasks import Example

ANALYZE = "metatokens.cli.analyze"


def sharpen(model: GPT, factor: float = 25.0) -> GPT:
    """Scale the q/k/v projections so attention is far from uniform: a recomputation that got a
    rotation or a scale wrong would then change the outputs visibly."""
    with torch.no_grad():
        for block in model.h:
            block.attn.c_attn.weight.mul_(factor)
            if hasattr(block, "meta_attn"):
                block.meta_attn.c_attn.weight.mul_(factor)
    return model


def zero_queries(model: GPT) -> GPT:
    """q = 0 in every attention: all admissible logits equal, so attention is uniform."""
    C = model.config.n_embd
    with torch.no_grad():
        for block in model.h:
            for attn in (block.attn, getattr(block, "meta_attn", None)):
                if attn is not None:
                    attn.c_attn.weight[:C] = 0
                    attn.c_attn.bias[:C] = 0
    return model


# ---------------------------------------------------------------------------------------------
# Entropy and attention recomputation
# ---------------------------------------------------------------------------------------------


def test_entropy_of_hand_made_distributions():
    for n in (1, 2, 7, 100):
        assert attention_entropy(torch.full((n,), 1.0 / n)).item() == pytest.approx(math.log(n), abs=1e-6)
    assert attention_entropy(torch.tensor([0.5, 0.25, 0.25, 0.0])).item() == pytest.approx(1.5 * math.log(2))
    assert attention_entropy(torch.tensor([0.0, 1.0, 0.0])).item() == 0.0  # 0 ln 0 = 0, no NaN


@pytest.mark.parametrize("kw", [{}, {"pos_encoding": "rope"}, {"pos_encoding": "rope", "meta_pos": "zero"}])
def test_zero_queries_give_uniform_attention_with_entropy_ln_n(kw):
    model = zero_queries(toy_model(**kw))
    idx = mixed_batch()
    tr = trace(model, idx)
    T = idx.size(1)
    expected = torch.log(torch.arange(1, T + 1, dtype=torch.float32))  # query i sees i + 1 keys
    for layer in range(model.config.n_layer):
        H = attention_entropy(self_attention(model, tr, layer).probs)  # (B, nh, T)
        torch.testing.assert_close(H, expected.expand_as(H), atol=1e-5, rtol=0)
        # Meta-attention: a meta query of rank r (0-based) sees r + 1 meta keys, others none.
        Hm = attention_entropy(meta_attention(model, tr, layer).probs)
        rank = idx.eq(META).cumsum(1) - 1
        want = torch.where(idx == META, torch.log((rank + 1).clamp_min(1).float()), 0.0)
        torch.testing.assert_close(Hm, want[:, None].expand_as(Hm), atol=1e-5, rtol=0)


CONFIGS = [
    {"pos_encoding": "ape"},
    {"pos_encoding": "ape", "meta_pos": "zero", "meta_embed": "zero"},
    {"pos_encoding": "rope"},
    {"pos_encoding": "rope", "meta_pos": "zero"},
    {"pos_encoding": "rope", "meta_impl": "dense"},
    {"pos_encoding": "rope", "yarn": YarnConfig(factor=4.0, original_max_position_embeddings=16)},
    {"pos_encoding": "none"},
]


def _config_id(kw: dict) -> str:
    return ",".join("yarn" if k == "yarn" else f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("kw", CONFIGS, ids=_config_id)
def test_recomputed_attention_reproduces_the_real_sublayer_outputs(kw):
    model = sharpen(toy_model(**kw))
    idx = mixed_batch()
    real_self, real_meta = {}, {}
    hooks = []
    for i, block in enumerate(model.h):
        hooks.append(block.attn.register_forward_hook(lambda m, a, out, i=i: real_self.__setitem__(i, out)))
        # Both meta paths end in c_proj: (N, C) meta rows (sparse) or (B, T, C) before masking (dense).
        hooks.append(block.meta_attn.c_proj.register_forward_hook(lambda m, a, out, i=i: real_meta.__setitem__(i, out)))
    tr = trace(model, idx)
    for h in hooks:
        h.remove()
    is_meta = idx == META
    T = idx.size(1)
    for layer in range(model.config.n_layer):
        att = self_attention(model, tr, layer)
        # The comparison means something only if attention is far from uniform (entropy ln(i + 1)).
        H = attention_entropy(att.probs)[..., 1:]
        assert (H / torch.arange(2, T + 1).log()).mean() < 0.5
        mine = attention_output(model.h[layer].attn.c_proj, att)
        torch.testing.assert_close(mine, real_self[layer], atol=2e-5, rtol=1e-4)
        meta_mine = attention_output(model.h[layer].meta_attn.c_proj, meta_attention(model, tr, layer))
        real = real_meta[layer]
        real = real[is_meta] if real.dim() == 3 else real
        torch.testing.assert_close(meta_mine[is_meta], real, atol=2e-5, rtol=1e-4)
        assert meta_mine[~is_meta].abs().max() == 0  # no admissible key: exactly zero


def test_trace_residual_stream_matches_the_model():
    model = sharpen(toy_model(pos_encoding="rope"))
    idx = mixed_batch()
    tr = trace(model, idx)
    assert len(tr.residual) == model.config.n_layer + 1
    torch.testing.assert_close(model.ln_f(tr.residual[-1]), model.hidden_states(idx))
    torch.testing.assert_close(model.lm_head(model.ln_f(tr.residual[-1])), model(idx)[0])
    torch.testing.assert_close(tr.residual[0], model.wte(idx) + 0.0)  # RoPE: no position vector added


@pytest.mark.parametrize("pos_encoding", ["ape", "rope"])
def test_model_variant_equals_hand_edited_weights(pos_encoding):
    """meta_embed="zero" is the model with the meta embedding row zeroed; for APE, meta_pos="zero"
    is the model with the position vector at the (only) meta position zeroed."""
    model = sharpen(toy_model(pos_encoding=pos_encoding))
    idx = torch.randint(8, 97, (1, 20))
    idx[0, 9] = META
    zeroed = model_variant(model, meta_embed="zero")
    assert zeroed.config.meta_embed == "zero" and model.config.meta_embed == "keep"
    edited = model_variant(model)
    with torch.no_grad():
        edited.wte.weight[META] = 0  # tied to lm_head too, so compare hidden states only
    torch.testing.assert_close(zeroed.hidden_states(idx), edited.hidden_states(idx))
    assert not torch.allclose(model.hidden_states(idx), zeroed.hidden_states(idx))
    if pos_encoding == "ape":
        no_pos = model_variant(model, meta_pos="zero")
        edited = model_variant(model)
        with torch.no_grad():
            edited.wpe.weight[9] = 0
        torch.testing.assert_close(no_pos.hidden_states(idx), edited.hidden_states(idx))


def _example(prompt, answer, meta_positions=()):
    return Example(list(prompt), list(answer), list(meta_positions), "", "", {})


def test_entropy_analysis_on_uniform_attention_matches_the_formula():
    model = zero_queries(toy_model(pos_encoding="rope"))
    rng = random.Random(0)
    examples = []
    for T, meta_at in ((20, [5]), (31, [3, 17]), (12, [11])):
        ids = [rng.randrange(8, 97) for _ in range(T)]
        for p in meta_at:
            ids[p] = META
        examples.append(_example(ids, [9, 0], meta_at))
    result = entropy_analysis(model, examples, window=2)
    per_example = []
    for e in examples:
        T, meta = len(e.prompt_ids), e.meta_positions
        h = np.log(np.arange(1, T + 1))
        non_meta = [i for i in range(T) if i not in meta]
        per_example.append(h[non_meta].mean() - h[meta].mean())
    assert result["entropy_difference"]["mean"] == pytest.approx(np.mean(per_example), abs=1e-5)
    assert np.allclose(result["per_layer_head"]["entropy_difference"], np.mean(per_example), atol=1e-5)
    # q = 0 makes every logit 0 whatever the meta embedding: no boost.
    assert result["max_logit_boost"]["mean"] == pytest.approx(0.0, abs=1e-6)
    lo, hi = result["entropy_difference"]["ci95"]
    assert lo <= result["entropy_difference"]["mean"] <= hi


def test_near_meta_marks_non_meta_neighbours():
    is_meta = torch.zeros(12, dtype=torch.bool)
    is_meta[[3, 10]] = True
    assert near_meta(is_meta, 1).nonzero().squeeze(1).tolist() == [2, 4, 9, 11]


def test_bootstrap_interval_agrees_with_normal_theory():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    lo, hi = bootstrap_ci(x, n_boot=4000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert bootstrap_ci([2.5]) == (2.5, 2.5)


# ---------------------------------------------------------------------------------------------
# Accuracy for the ablations
# ---------------------------------------------------------------------------------------------


class NextIsPlusOne(torch.nn.Module):
    """Predicts token t + 1 after token t, and puts an even larger logit on `loud` (the meta id)."""

    def __init__(self, vocab: int, loud: int | None = None):
        super().__init__()
        self.vocab, self.loud = vocab, loud
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        logits = torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float()
        if self.loud is not None:
            logits[..., self.loud] = 5.0
        return logits, None


def test_answer_accuracy_on_a_hand_made_model():
    examples = [
        _example([10, 11, 12], [13, 14]),  # right
        _example([20, 21], [22, 23, 24, 25]),  # right, and a longer row in the same batch
        _example([30, 31, 32, 33], [34, 99]),  # second token wrong
        _example([40], [41]),
    ]
    got = answer_accuracy(NextIsPlusOne(128), examples, batch_size=3)
    assert got["exact_match"] == pytest.approx(3 / 4)
    assert got["token_accuracy"] == pytest.approx(8 / 9)
    # The meta id is never predicted, as generation never samples it.
    loud = answer_accuracy(NextIsPlusOne(128, loud=7), examples, meta_token_id=7)
    assert loud["exact_match"] == pytest.approx(3 / 4)
    assert answer_accuracy(NextIsPlusOne(128, loud=7), examples)["exact_match"] == 0


def test_teacher_forced_exact_match_equals_greedy_decoding():
    model = sharpen(toy_model(pos_encoding="rope"), 3.0)
    g = torch.Generator().manual_seed(1)
    examples = []
    for k in range(6):
        prompt = torch.randint(8, 90, (1, 10 + k), generator=g)
        prompt[0, 4] = META
        out = generate(model, prompt, 3, temperature=0, vocab_limit=90)[0, prompt.size(1) :].tolist()
        if k % 2:
            out[-1] = (out[-1] + 1) % 90 or 8  # spoil the last answer token of every second example
        examples.append(_example(prompt[0].tolist(), out, [4]))
    got = answer_accuracy(model, examples, meta_token_id=META, vocab_limit=90, batch_size=4)
    assert got["exact_match"] == pytest.approx(0.5)
    assert got["token_accuracy"] == pytest.approx(15 / 18)


# ---------------------------------------------------------------------------------------------
# Residual stream
# ---------------------------------------------------------------------------------------------


def test_distance_bins_are_powers_of_two():
    assert distance_bins(20) == [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 20)]
    assert distance_bins(1) == [(1, 1)]


def test_similarity_by_distance_on_hand_made_states():
    # Rows alternate between two orthogonal directions: cos = 1 at even distance, 0 at odd.
    h = torch.stack([torch.tensor([1.0, 0.0]) if i % 2 == 0 else torch.tensor([0.0, 3.0]) for i in range(6)])
    queries = torch.tensor([False, False, False, True, False, True])
    sums, counts = similarity_by_distance(h, queries, 5)
    # queries 3 and 5 see distances 1..3 and 1..5
    assert counts.tolist() == [0, 2, 2, 2, 1, 1]
    assert sums.tolist() == [0, 0, 2, 0, 1, 0]


# ---------------------------------------------------------------------------------------------
# Variational information bottleneck
# ---------------------------------------------------------------------------------------------


def test_kl_matches_torch_distributions():
    mu, log_var = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(kl_to_standard_normal(mu, log_var), torch.distributions.kl_divergence(q, p).sum(-1))


def test_vib_rate_vanishes_at_large_beta_and_distortion_falls_with_beta():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(-1)  # linearly readable labels
    points = sweep((x, y), None, 4, [10.0, 0.1, 0.01, 0.001], epochs=20, batch_size=32, lr=1e-2)
    rate = [p["rate"] for p in points]
    distortion = [p["distortion"] for p in points]
    assert rate[0] < 0.02
    # No information left: the distortion is the entropy of the labels (the prior's cross-entropy).
    assert distortion[0] == pytest.approx(label_entropy(y, 4), abs=0.03)
    assert all(a > b for a, b in zip(distortion, distortion[1:])), distortion
    assert all(a < b for a, b in zip(rate, rate[1:])), rate
    assert distortion[-1] < 0.3 and points[-1]["accuracy"] > 0.9


# ---------------------------------------------------------------------------------------------
# The command line, on a toy model folder
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from metatokens.runs.model_folder import save_pretrained
    from metatokens.tasks.words import ITEMS
    from metatokens.tokenizer import MetaTokenizer

    rng = random.Random(0)
    texts = [
        "Read the lists below.\nList 1: " + ", ".join(rng.sample(ITEMS, 5))
        + "\nQuestion: In the list that contains apple, which word is number 3?\nAnswer: " + rng.choice(ITEMS)
        + "\nBits: " + " ".join(rng.choice("01") for _ in range(8)) + "\nWhat is the XOR of the first 5 bits?"
        for _ in range(200)
    ]
    tokenizer = MetaTokenizer.train(texts, 600)
    torch.manual_seed(0)
    cfg = model_shape("toy", vocab_size=640, meta_token_id=tokenizer.meta_token_id, pos_encoding="rope")
    return save_pretrained(tmp_path_factory.mktemp("analysis") / "toy", sharpen(GPT(cfg).eval(), 3.0), tokenizer)


def run_cli(monkeypatch, *argv):
    assert set([ANALYZE]) <= set(cli.COMMAND_MODULES)  # registered in the real CLI
    return cli.main(["analyze", *argv])


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # a real figure, not an empty canvas


SUBCOMMANDS = {
    "entropy": ["--length", "80", "--n", "3"],
    "ablate": ["--task", "list_recall,parity", "--lengths", "64,80", "--n", "2"],
    "residual": ["--length", "80", "--n", "3", "--lens-examples", "2", "--top-k", "3"],
    "rate-distortion": ["--length", "80", "--n", "4", "--n-test", "2", "--epochs", "2", "--betas", "0.01,0.1,1"],
}


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_cli_writes_json_and_png(monkeypatch, tmp_path, model_dir, capsys, name):
    out = tmp_path / "out"
    argv = [name, "--checkpoint", str(model_dir), "--out", str(out), "--no-progress", *SUBCOMMANDS[name]]
    assert run_cli(monkeypatch, *argv) == 0
    stem = name.replace("-", "_")
    data = json.loads((out / f"{stem}.json").read_text())
    assert_png(out / f"{stem}.png")
    assert data["settings"]["checkpoint"] == str(model_dir)
    printed = capsys.readouterr().out
    assert "wrote" in printed
    if name == "entropy":
        L, nh = 2, 2
        assert np.asarray(data["per_layer_head"]["entropy_difference"]).shape == (L, nh)
        assert data["entropy_difference"]["n"] == 3 and data["max_logit_boost"] is not None
    elif name == "ablate":
        assert [(r["task"], r["length"]) for r in data["rows"]] == [
            ("list_recall", 64), ("list_recall", 80), ("parity", 64), ("parity", 80)]
        assert all(0 <= r[v]["exact_match"] <= 1 for r in data["rows"] for v in ("full", "zero_meta_pos", "zero_meta_embed"))
        assert (out / "ablate.md").read_text().count("\n| ") == 5  # header + 4 rows
    elif name == "residual":
        assert np.asarray(data["cosine_meta_binned"]).shape == (3, len(data["distance_bins"]))
        assert np.asarray(data["near_far"]["meta"]).shape == (3, 3) and "centred cosine" in printed
        lens = data["logit_lens"]["examples"]
        assert lens and len(lens[0]["layers"]) == 3 and len(lens[0]["layers"][0]["top"]) == 3
    else:
        assert set(data["curves"]) == {"last_meta", "last_token", "last_meta_zero_pos"}
        assert [p["beta"] for p in data["curves"]["last_meta"]] == [0.01, 0.1, 1.0]
        assert all(p["rate"] >= 0 and p["test_distortion"] > 0 for c in data["curves"].values() for p in c)
        assert set(data["learned"]) == set(data["curves"]) and data["settings"]["question"] is True
        assert len(data["no_information_test_per_example"]) == 2
        assert "no information (p(answer | question))" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["entropy", "--checkpoint", "{missing}"], "neither a model folder nor a run folder"),
        (["ablate", "--checkpoint", "{model}", "--task", "list_recall,sorting"], "unknown task 'sorting'"),
        (["residual", "--checkpoint", "{model}", "--difficulty", "impossible"], "unknown difficulty"),
        (["rate-distortion", "--checkpoint", "{model}", "--length", "12"], "too short"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(monkeypatch, tmp_path, model_dir, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nope", model=model_dir) for a in argv]
    assert run_cli(monkeypatch, *argv, "--out", str(tmp_path / "out"), "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written


# ----------------------------------------------------------------------------- figures a reader can read


def _score(exact_match):
    return {"exact_match": exact_match}


def test_ablation_bars_carry_the_change_from_the_full_model_and_the_title_names_model_and_tasks(monkeypatch):
    import metatokens.analysis.ablate as ablate

    figures = capture_figures(monkeypatch, ablate)
    result = {"difficulty": "medium", "rows": [
        {"task": "copying", "length": 64, "n": 100,
         "full": _score(0.57), "zero_meta_pos": _score(0.0), "zero_meta_embed": _score(0.6)},
        {"task": "parity", "length": 64, "n": 100,
         "full": _score(0.5), "zero_meta_pos": _score(0.5), "zero_meta_embed": _score(0.25)}]}
    ablate.plot_ablation(result, "unused.png", title="Meta+RoPE: ablations at meta positions")
    (fig,) = figures
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["57.0", "50.0", "-57.0", "±0.0", "+3.0", "-25.0"]  # full, then each ablation's change
    title = ax.get_title()
    assert "Meta+RoPE" in title and "copying" in title and "parity" in title and "change from it" in title
    # a zero-height bar still shows: it has an edge, and the axis starts below 0
    assert all(p.get_linewidth() > 0 for p in ax.patches) and ax.get_ylim()[0] < 0
    # without a caller's title, the model comes from the settings `analyze` records
    figures.clear()
    ablate.plot_ablation({**result, "settings": {"checkpoint": "/x/meta-rope/run/checkpoints/step-00001800",
                                                 "tasks": ["copying", "parity"], "lengths": [64]}}, "unused.png")
    assert "meta-rope/run, step 1800" in figures[0].axes[0].get_title()


def test_entropy_cells_are_legible_and_the_title_names_model_and_task(monkeypatch):
    import metatokens.analysis.entropy as entropy

    figures = capture_figures(monkeypatch, entropy)
    grid = [[1.2, 0.05], [-1.2, float("nan")]]
    headline = {"mean": 0.1, "ci95": [0.0, 0.2], "n": 3}
    result = {"settings": {"checkpoint": "/runs/meta-rope/checkpoints/step-00000500", "task": "list_recall", "length": 80},
              "entropy_difference": headline, "max_logit_boost": headline,
              "per_layer_head": {"entropy_difference": grid, "max_logit_boost": grid}}
    entropy.plot_entropy(result, "unused.png")
    (fig,) = figures
    heat = fig.axes[0]
    cells = {t.get_text(): t for t in heat.texts}
    assert set(cells) == {"1.20", "0.05", "-1.20", "n/a"}
    assert cells["1.20"].get_color() == "white" and cells["-1.20"].get_color() == "white"  # dark red, dark blue
    assert cells["0.05"].get_color() == "black"  # near white
    assert all(t.get_fontsize() >= 8 for t in heat.texts)  # a 2 x 2 grid has room for more than 6 points
    title = fig._suptitle.get_text()
    assert "runs/meta-rope, step 500" in title and "list_recall" in title
    from metatokens.plotting import text_colour

    assert text_colour((0.0, 0.0, 0.0)) == "white" and text_colour((1.0, 1.0, 0.8)) == "black"


def test_residual_figure_is_not_a_strip_and_its_layers_and_band_are_labelled(monkeypatch):
    import metatokens.analysis.residual as residual

    figures = capture_figures(monkeypatch, residual)
    grid = [[0.1, 0.2, 0.3]] * 3
    result = {"n_examples": 4, "layers": [0, 1, 2], "distance_bins": [[1, 1], [2, 2], [3, 4]],
              "cosine_meta_binned": grid, "cosine_control_binned": grid,
              "logit_lens": {"answer_first_token_prob": {"mean": [0.1, 0.2, 0.4], "std": [0.05, 0.1, 0.1]}}}
    residual.plot_residual(result, "unused.png", title="Meta+RoPE, List Recall")
    (fig,) = figures
    width, height = fig.get_size_inches()
    assert width / height < 2  # four panels two by two, not one row
    assert "Meta+RoPE, List Recall" in fig._suptitle.get_text()
    lens = next(ax for ax in fig.axes if ax.get_title().startswith("logit lens"))
    assert list(lens.get_xticks()) == [0, 1, 2]  # whole layers, no 0.5 ticks
    legend = [t.get_text() for t in lens.get_legend().get_texts()]
    assert any("standard deviation" in t for t in legend) and any("4 examples" in t for t in legend)


def test_residual_heatmaps_share_a_colour_scale_that_holds_every_measured_cell(monkeypatch):
    """The tiny study's seed-1 figure: the meta grid had a NaN bin (no pair 65+ apart) and values below
    every control cell, and its panel came out one flat colour because the range ignored that grid."""
    import metatokens.analysis.residual as residual

    figures = capture_figures(monkeypatch, residual)
    nan = float("nan")
    meta = [[0.02, -0.05, nan], [0.03, 0.01, nan]]
    control = [[0.6, 0.4, 0.2], [0.5, 0.3, 0.1]]
    result = {"layers": [0, 1], "distance_bins": [[1, 1], [2, 2], [3, 4]],
              "cosine_meta_binned": meta, "cosine_control_binned": control,
              "logit_lens": {"answer_first_token_prob": {"mean": [0.1, 0.2], "std": [0.05, 0.1]}}}
    residual.plot_residual(result, "unused.png")
    (fig,) = figures
    clims = {ax.get_title(): ax.images[0].get_clim() for ax in fig.axes if ax.images}
    for name in ("centred cosine similarity: meta-token queries", "centred cosine similarity: non-meta queries (control)"):
        assert clims[name] == pytest.approx((-0.05, 0.6)), name


def test_rate_distortion_beta_labels_do_not_overlap(monkeypatch):
    import metatokens.analysis.rate_distortion_plot as rd

    figures = capture_figures(monkeypatch, rd)
    betas = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    # the large betas crowd together near rate 0, as real sweeps do
    rates = [12.0, 10.0, 6.0, 3.0, 1.5, 0.6, 0.5]

    def curve(shift):
        return [{"beta": b, "rate": r + shift, "distortion": 2.3 + 0.06 * i, "test_rate": r, "test_distortion": 3.6}
                for i, (b, r) in enumerate(zip(betas, rates))]

    result = {"n_train": 32, "n_test": 16, "no_information_train": 3.1, "no_information_test": 3.5,
              "settings": {"checkpoint": "/r/m/checkpoints/step-00000010", "task": "list_recall", "length": 80},
              "curves": {"last_meta": curve(0), "last_token": curve(0.3), "last_meta_zero_pos": curve(-0.1)}}
    rd.plot_rate_distortion(result, "unused.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert boxes and sum(t.get_text().count(",") + 1 for t in ax.texts) == len(betas)  # every beta, once
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), [t.get_text() for t in ax.texts]
    assert "list_recall" in fig._suptitle.get_text() and "r/m, step 10" in fig._suptitle.get_text()
