"""The whole study at toy size: every table and figure present, filled from measured values, cached."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from metatokens import reproduce
from metatokens.reproduce import MODELS, TASKS, Pipeline


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    lines: list[str] = []
    pipe = Pipeline(out, "toy", progress=False, log=lines.append)
    report = pipe.run()
    return out, report.read_text(), pipe, lines


def stage(out: Path, name: str) -> dict:
    return json.loads((out / "stages" / "seed0" / name / "stage.json").read_text())["result"]


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else None]


def test_every_section_table_and_figure_is_present(study):
    out, text, pipe, _ = study
    for heading in ("## 1. Pre-training", "## 2. Task accuracy", "## 3. Length generalisation", "## 4. Ablations",
                    "## 5. Attention sharpening", "## 6. Residual stream", "## 7. Rate-distortion",
                    "## Stages, commands and wall time", "## Environment"):
        assert heading in text, heading
    assert "missing" not in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(figures) >= 9  # loss, 4 accuracy plots, ablation, entropy, residual, rate-distortion
    for rel in figures:
        png = out / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, rel
    assert len(pipe.records) == len(MODELS) * (1 + 2 * len(TASKS)) + 2 * len(TASKS) + 3
    assert not any(rec.cached for rec in pipe.records)  # a first run: every stage was run now
    total = sum(rec.wall_s for rec in pipe.records) / 60
    assert f"Wall time of all stages: {total:.1f} min, of which {total:.1f} min were run now" in text
    lengths = section(text, "## 3. Length generalisation")
    assert ("n/a: the prompts" in lengths) == ("| n/a |" in lengths or " n/a " in lengths)
    for rec in pipe.records:
        assert rec.command.startswith("metatokens ")
        assert f"| {rec.name} |" in text


def test_tables_hold_the_measured_values(study):
    out, text, _, _ = study
    pre = section(text, "## 1. Pre-training")
    for m, label in MODELS.items():
        measured = stage(out, f"pretrain-{m}")
        row = next(line for line in pre.splitlines() if line.startswith(f"| {label} |"))
        assert f"| {measured['val_loss']:.3f} |" in row and f"{measured['params']:,}" in row
    acc = section(text, "## 2. Task accuracy")
    L = reproduce.SCALES["toy"].ft_len
    for task in TASKS:
        row = next(line for line in acc.splitlines() if line.startswith(f"| {task} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        for j, m in enumerate(MODELS):
            ours = stage(out, f"evaluate-{m}-{task}")["exact_match"][str(L)]
            assert cells[1 + 2 * j] == f"{100 * ours:.1f}"  # our measurement
            paper = reproduce.PAPER_ACCURACY[task][m]
            assert cells[2 + 2 * j] == ("—" if paper is None else f"{paper:.1f}")  # the paper's, beside it
        # token accuracy and answer loss: the second table of section 2, first the three accuracies, then the losses
        row = [line for line in acc.splitlines() if line.startswith(f"| {task} |")][1]
        cells = [c.strip() for c in row.strip("|").split("|")]
        for j, m in enumerate(MODELS):
            measured = stage(out, f"evaluate-{m}-{task}")
            assert cells[1 + j] == f"{100 * measured['token_accuracy'][str(L)]:.1f}"
            assert cells[1 + len(MODELS) + j] == f"{measured['answer_loss'][str(L)]:.3f}"
            assert 0 <= measured["token_accuracy"][str(L)] <= 1 and measured["answer_loss"][str(L)] > 0
    abl = section(text, "## 4. Ablations")
    for m in ("meta-ape", "meta-rope"):
        for task in TASKS:
            measured = stage(out, f"ablate-{m}-{task}")
            row = next(line for line in abl.splitlines() if line.startswith(f"| {MODELS[m]} | {task} |"))
            cells = [c.strip() for c in row.strip("|").split("|")]
            variants = ("full", "zero_meta_pos", "zero_meta_embed")
            assert cells[2:5] == [f"{100 * measured[v]['exact_match']:.1f}" for v in variants]
            assert cells[5] == " / ".join(f"{measured[v]['answer_loss']:.3f}" for v in variants)
    ent = stage(out, "analyze-entropy")
    assert f"{ent['entropy_difference']['mean']:.3f}" in section(text, "## 5.")
    yarn = stage(out, "evaluate-meta-rope-list_recall")
    assert f"{4 * L}+yarn" in yarn["exact_match"] and yarn["yarn_scale"] == pytest.approx(4 * L / 256)


def test_rerun_is_cached_and_a_changed_setting_reruns_only_what_depends_on_it(study, monkeypatch):
    out, text, _, _ = study
    lines: list[str] = []
    again = Pipeline(out, "toy", progress=False, log=lines.append)
    again.run()
    assert all(r.cached for r in again.records)

    toy = dataclasses.replace(reproduce.SCALES["toy"], analysis_n=3)
    monkeypatch.setitem(reproduce.SCALES, "toy", toy)
    changed = Pipeline(out, "toy", progress=False, log=lines.append)
    changed.run()
    rerun = {r.name.split("/")[1].split("-")[0] for r in changed.records if not r.cached}
    assert rerun == {"analyze"}  # pre-training, fine-tuning, evaluation and ablations are reused
    assert json.loads((out / "stages/seed0/analyze-entropy/entropy.json").read_text())["n_examples"] == 3


def test_interrupted_training_stage_resumes(tmp_path):
    pipe = Pipeline(tmp_path, "toy", progress=False, log=lambda s: None)
    from metatokens.runconfig import load_run_config

    cfg = load_run_config("tiny", reproduce.SCALES["toy"].pretrain_overrides + ["train.ckpt_interval=3"])
    calls = []

    def body(folder, resume):
        calls.append(resume)
        return pipe._pretrain(cfg, folder, resume)

    cfg.train.max_steps = 3  # "interrupted" after 3 of 6 steps: a checkpoint exists, no stage.json
    pipe.stage(0, "pretrain-x", {"a": 1}, [], "metatokens pretrain", body, (1, 1))
    (tmp_path / "stages/seed0/pretrain-x/stage.json").unlink()
    cfg.train.max_steps = 6
    rec = pipe.stage(0, "pretrain-x", {"a": 1}, [], "metatokens pretrain", body, (1, 1))
    assert calls == [False, True] and rec.result["step"] == 6


def test_seeds_report_mean_and_spread(study):
    out, _, _, _ = study
    pipe = Pipeline(out, "toy", seeds=2, progress=False, log=lambda s: None)
    text = pipe.run().read_text()
    assert "2 seed(s) (mean ± standard deviation over seeds)" in text
    for task in TASKS:
        assert f"![{task}: exact match and token accuracy by length, mean ± standard deviation over 2 seeds]" in text
    seed0, seed1 = (json.loads((out / "stages" / s / "pretrain-meta-rope" / "stage.json").read_text())["result"]
                    for s in ("seed0", "seed1"))
    mean = (seed0["val_loss"] + seed1["val_loss"]) / 2
    std = abs(seed0["val_loss"] - seed1["val_loss"]) / 2 ** 0.5
    assert f"| {mean:.3f} ± {std:.3f} |" in text
    assert all(r.cached for r in pipe.records if r.name.startswith(("seed0/pretrain", "seed0/finetune")))
