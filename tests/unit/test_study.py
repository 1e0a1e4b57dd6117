"""The study's parts that need no run: the paired bootstrap and verdicts, the near-minus-far residual
contrast, the stage plan's order and its refusals. The whole study at toy size is in
tests/integration/test_reproduce.py."""

import dataclasses

import numpy as np
import pytest

from metatokens import cli
from metatokens.errors import StudyError
from metatokens.stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    contrast,
    paired,
    single,
    verdict,
)
from metatokens.study import runner
from metatokens.study.design import SCALES
from metatokens.study.runner import Pipeline

MODELS = SCALES["toy"].models


def test_one_stage_needs_its_inputs(tmp_path):
    pipe = Pipeline(tmp_path, "toy", progress=False, log=lambda s: None)
    with pytest.raises(StudyError, match="needs seed0/finetune-meta-rope"):
        pipe.run_stage("seed0/evaluate-meta-rope")
    with pytest.raises(StudyError, match="no stage"):
        pipe.run_stage("seed0/nonsense")
    with pytest.raises(StudyError, match="outside the study's seeds"):
        pipe.run(only_seeds=[3])


# ----------------------------------------------------------------------------- statistics and verdicts


def test_paired_bootstrap_matches_a_hand_computation():
    rng = np.random.default_rng(1)
    a = [(rng.random(200) < 0.7).astype(int) for _ in range(3)]
    b = [(rng.random(200) < 0.4).astype(int) for _ in range(3)]
    c = contrast([paired(a, b)], reps=3000)
    assert c["diff"] == pytest.approx(np.mean([(x - y).mean() for x, y in zip(a, b)]))
    lo, hi = c["ci95"]
    assert lo < c["diff"] < hi and 0.15 < lo and hi < 0.45  # true difference 0.3
    # one seed: the interval is close to the normal one of the paired differences
    d = (a[0] - b[0]).astype(float)
    one = contrast([paired(a[:1], b[:1])], reps=4000)
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert one["ci95"][0] == pytest.approx(d.mean() - half, abs=0.02)
    assert one["ci95"][1] == pytest.approx(d.mean() + half, abs=0.02)
    # prompts that all tie do not give a zero-width interval: the pseudo-pairs keep it honest
    tie = contrast([paired([[0] * 100], [[0] * 100])])
    assert tie["diff"] == 0 and -0.05 < tie["ci95"][0] < -0.01 and 0.01 < tie["ci95"][1] < 0.05
    few = contrast([paired([[0] * 4], [[0] * 4])])
    assert few["ci95"][0] <= -0.3 and few["ci95"][1] >= 0.3
    with pytest.raises(ValueError, match="differ in length"):
        paired([[1, 0]], [[1]])
    # a difference of differences: two terms, weights +1 and -1
    dd = contrast([paired([[1] * 50], [[0] * 50]), paired([[1] * 50], [[1] * 50], -1.0)])
    assert dd["diff"] == pytest.approx(1.0)
    assert contrast([single([[1, 1, 0, 0]])])["diff"] == pytest.approx(0.5)


def test_verdict_reads_the_interval():
    assert verdict([0.01, 0.2]) == REPRODUCED
    assert verdict([-0.2, -0.01]) == NOT_REPRODUCED  # contrary
    assert verdict([-0.1, 0.1]) == INCONCLUSIVE
    assert verdict([-0.02, 0.03], rule_out=0.05) == NOT_REPRODUCED  # a 5-point effect is ruled out
    assert verdict([-0.02, 0.08], rule_out=0.05) == INCONCLUSIVE
    assert verdict([0.01, 0.03], rule_out=0.05) == NOT_REPRODUCED  # shown, but smaller than the smallest of interest
    assert verdict([-0.3, -0.1], direction=-1) == REPRODUCED  # a claimed drop
    assert verdict(None) == INCONCLUSIVE and verdict([float("nan"), 1.0]) == INCONCLUSIVE


def test_parallel_stages_take_one_unpretrained_fine_tune_before_the_pretrainings(tmp_path):
    """The scheduling order (runner.early_first): per seed, the first fine-tune of a model that is not
    pre-trained moves ahead of the pre-trainings; everything else keeps the plan's order."""
    pipe = Pipeline(tmp_path, "toy", seeds=2, progress=False)
    todo = list(enumerate(pipe.plan(0) + pipe.plan(1)))
    order = [f"seed{s.seed}/{s.name}" for _, s in runner.early_first(todo, pipe.scale)]
    first_scratch = next(m for m, ms in MODELS.items() if not ms.pretrained)
    for seed in (0, 1):
        mine = [name for name in order if name.startswith(f"seed{seed}/")]
        assert mine[0] == f"seed{seed}/finetune-{first_scratch}"
        assert mine[1:] == [f"seed{seed}/{s.name}" for s in pipe.plan(seed) if s.name != f"finetune-{first_scratch}"]
    assert sorted(order) == sorted(f"seed{s.seed}/{s.name}" for _, s in todo)


# ----------------------------------------------------------------------------- stage processes stopped by a signal


def test_a_stage_ended_by_sigint_is_told_apart_from_a_failure():
    assert runner.ended_by_sigint(130) and runner.ended_by_sigint(-2)  # caught the Ctrl-C / killed by it
    assert not any(runner.ended_by_sigint(code) for code in (None, 0, 1, 2, 143, -15, -9))


class _EndedStage:
    """A `reproduce --stage` process that has already ended with `code` (set per test)."""

    code = 130
    started: list = []

    def __init__(self, cmd, **kwargs):
        self.returncode = self.code
        self.started.append(cmd[-1])

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def send_signal(self, sig):
        raise AssertionError("an ended stage is not signalled")


@pytest.mark.parametrize("code", [130, -2])
def test_a_stage_stopped_by_ctrl_c_ends_reproduce_with_130_and_one_line(tmp_path, monkeypatch, capsys, code):
    monkeypatch.setattr(runner.subprocess, "Popen", _EndedStage)
    monkeypatch.setattr(_EndedStage, "code", code)
    monkeypatch.setattr(_EndedStage, "started", [])
    status = cli.main(["reproduce", "--scale", "toy", "--out", str(tmp_path / "report"), "--jobs", "2",
                       "--no-progress"])
    err = capsys.readouterr().err
    assert status == 130, err
    first = _EndedStage.started[0]
    assert err == (f"metatokens reproduce: interrupted: {first} was stopped by SIGINT; the stages that finished are "
                   "kept, and the same command continues from there\n")


def test_a_stage_that_failed_otherwise_is_still_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner.subprocess, "Popen", _EndedStage)
    monkeypatch.setattr(_EndedStage, "code", 1)
    monkeypatch.setattr(_EndedStage, "started", [])
    assert cli.main(["reproduce", "--scale", "toy", "--out", str(tmp_path / "report"), "--jobs", "2",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metatokens reproduce: error: {_EndedStage.started[0]} failed (exit 1): "), err


# ----------------------------------------------------------------------------- the plan: recipe, seeds, tuning


def test_the_tiny_plan_uses_each_models_frozen_rate_and_fresh_seed_values(tmp_path, monkeypatch):
    """Seed index 0 of the confirmatory tiny study trains and draws its test prompts with seed value 100 (the
    exploratory study used 0-2); each model fine-tunes at its own rate (the controls at their twin's); the YaRN
    protocol and the attribution control are planned; the evaluations read every length of the scale."""
    sc = dataclasses.replace(SCALES["tiny"], ft_lrs={"gpt2": 1e-3, "meta-ape": 3e-3, "meta-rope": 3e-3,
                                                     "gpt2-rope": 1e-3})
    monkeypatch.setitem(SCALES, "tiny", sc)
    pipe = Pipeline(tmp_path, "tiny", progress=False)
    plan = {s.name: s for s in pipe.plan(0)}
    assert plan["finetune-gpt2"].settings["lr"] == 1e-3 and "--lr 0.001 --seed 100 " in plan["finetune-gpt2"].command
    assert plan["finetune-gpt2-rope-wide"].settings["lr"] == 1e-3  # GPT-2 (RoPE)'s
    assert plan["finetune-meta-rope-k0"].settings["lr"] == 3e-3  # Meta+RoPE's
    assert plan["pretrain-meta-rope-k0"].settings["data"]["k"] == 0
    assert plan["pretrain-meta-rope"].settings["train"]["seed"] == 1337 + 100
    assert "attn_window" not in plan["pretrain-meta-rope"].settings["model"]  # a neutral later option: out of the key
    assert plan["evaluate-gpt2"].settings["lengths"] == [96, 144, 192, 240]
    assert plan["evaluate-gpt2"].settings["split"] == "test" and plan["evaluate-gpt2"].settings["seed"] == 100
    assert plan["yarn-meta-rope"].inputs == ["finetune-meta-rope"]
    assert "--max-len 384 --yarn-scale 4" in plan["yarn-meta-rope"].command
    assert set(plan) >= {"yarn-gpt2-rope", "finetune-meta-rope-k0", "evaluate-meta-rope-k0"}
    # a changed rate re-keys that model's fine-tune and everything downstream of it, nothing else
    sc2 = dataclasses.replace(sc, ft_lrs={**sc.ft_lrs, "gpt2": 3e-3})
    monkeypatch.setitem(SCALES, "tiny", sc2)
    plan2 = {s.name: s for s in pipe.plan(0)}
    changed = {n for n in plan if plan[n].key != plan2[n].key}
    assert changed == {"finetune-gpt2", "evaluate-gpt2"}


def test_the_tuning_plan_reads_dev_prompts_only_and_runs_the_grid_for_every_tuned_model(tmp_path):
    pipe = Pipeline(tmp_path, "tiny", progress=False, tune=True)
    plan = {s.name: s for s in pipe.plan(0)}
    tuned = ("gpt2", "meta-ape", "meta-rope", "gpt2-rope")
    for m in tuned:
        for lr in (1e-3, 3e-3):
            assert plan[f"finetune-{m}-lr{lr:g}"].settings["lr"] == lr
            assert plan[f"evaluate-{m}-lr{lr:g}"].settings["split"] == "dev"
    assert not any(s.settings.get("split") == "test" for s in plan.values())
    assert {n for n in plan if n.startswith("pretrain-")} == {f"pretrain-{m}" for m in tuned}
    assert plan["pretrain-gpt2"].settings["train"]["seed"] == 1337 + SCALES["tiny"].tune_seed
    assert SCALES["tiny"].tune_seed - SCALES["tiny"].seed_base >= 100  # never one of the study's seeds
    assert plan["yarn-meta-rope"].settings["split"] == "dev"


def test_tune_refuses_study_seeds(tmp_path, capsys):
    assert cli.main(["reproduce", "--scale", "toy", "--tune", "--seeds", "2", "--out", str(tmp_path / "t")]) == 2
    assert "--tune runs one seed of its own" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
