"""The whole study at toy size: every table, control, interval and Findings row present and filled
from the stages' values; caching; parallel stages and seeds merged from separate invocations; and
verdicts from hand-made stage results. The statistics and the stage plan alone are tested in
tests/unit/test_study.py."""

import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import subprocess_env
from metatokens.study import design, stages
from metatokens.study.design import SCALES, TASKS
from metatokens.study.runner import Pipeline
from metatokens.study.results import StudyResults
from metatokens.study.findings import controls, findings
from metatokens.study.report import render_report
from metatokens.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

L = SCALES["toy"].ft_len
MODELS = SCALES["toy"].models


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    lines: list[str] = []
    pipe = Pipeline(out, "toy", seeds=2, progress=False, log=lines.append)
    report = pipe.run(only_seeds=[0])
    return out, report.read_text(), pipe, lines


def stage(out: Path, name: str, seed: int = 0) -> dict:
    return json.loads((out / "stages" / f"seed{seed}" / name / "stage.json").read_text())["result"]


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else None]


def row_of(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_section_table_and_figure_is_present(study):
    out, text, pipe, _ = study
    for heading in ("## Findings", "### Primary claims (pre-registered", "### Exploratory rows", "### Controls",
                    "## 1. Pre-training", "## 2. Task accuracy", "## 3. Length generalisation", "## 3b. YaRN as the paper",
                    "## 4. Ablations", "## 5. Attention sharpening", "## 6. Residual stream", "## 7. Rate-distortion",
                    "## Training prompts and the test split", "## Stages, commands and wall time", "## Environment"):
        assert heading in text, heading
    assert "missing" not in text
    assert "Smoke test" in text and "carry no evidence" in text  # toy and demo say so
    assert "seeds 1 not finished yet" in text  # the study has two seeds; only seed 0 ran here
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(figures) == 11  # differences, loss, learning curves, 4 accuracy plots, ablation, entropy, residual, RD
    for rel in figures:
        png = out / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, rel
    assert len(pipe.records) == len(pipe.plan(0)) and not any(rec.cached for rec in pipe.records)
    n_pre = sum(ms.pretrained for ms in MODELS.values())
    # pretrain, finetune + evaluate, the YaRN protocol's models, 2 ablations, 3 analyses
    assert len(pipe.plan(0)) == n_pre + 2 * len(MODELS) + len(SCALES["toy"].yarn.models) + 2 + 3
    for rec in pipe.records:
        assert rec.command.startswith("metatokens ") and f"| {rec.name} |" in text


def test_every_model_and_control_is_measured_on_the_same_prompts(study):
    out, text, _, _ = study
    digests = {}
    for m, ms in MODELS.items():
        ev = stage(out, f"evaluate-{m}")
        for task in TASKS:
            variants = ["prompts", "no_meta"] if ms.meta else ["prompts"]
            assert sorted(ev[task]) == sorted(variants)
            for v in variants:
                assert set(ev[task][v]) >= {str(n) for n in SCALES["toy"].lengths()}
                for key in (str(n) for n in SCALES["toy"].lengths()):
                    c = ev[task][v][key]
                    if c is None:  # an APE model past its window
                        continue
                    assert len(c["exact_per_example"]) == c["n"] == SCALES["toy"].eval_n
                    assert c["exact_match"] == pytest.approx(sum(c["exact_per_example"]) / c["n"])
                    digests.setdefault((task, key), set()).add(c["prompts"])
            rope = m not in ("gpt2", "meta-ape")
            assert (f"{4 * L}+yarn" in ev[task]["prompts"]) == rope
    assert all(len(d) == 1 for d in digests.values()), "every model scored the same test prompts"


def test_tables_hold_the_measured_values(study):
    out, text, _, _ = study
    pre = section(text, "## 1. Pre-training")
    for m, ms in MODELS.items():
        if ms.pretrained:
            measured = stage(out, f"pretrain-{m}")
            cells = row_of(pre, ms.label)
            assert cells[5] == f"{measured['val_loss']:.3f}" and cells[2] == f"{measured['params']:,}"
        else:
            assert f"| {ms.label} |" not in pre
    acc = section(text, "## 2. Task accuracy")
    for m, ms in MODELS.items():
        cells = row_of(acc, ms.label)
        for j, task in enumerate(TASKS):
            ours = stage(out, f"evaluate-{m}")[task]["prompts"][str(L)]["exact_match"]
            assert cells[1 + 2 * j] == f"{100 * ours:.1f}"
            paper = design.PAPER_ACCURACY[task].get(m) if m in design.PAPER_MODELS else None
            assert cells[2 + 2 * j] == ("—" if paper is None else f"{paper:.1f}")
        if ms.meta:
            removed = row_of(acc, f"{ms.label} — meta-tokens removed from the test prompts")
            for j, task in enumerate(TASKS):
                ours = stage(out, f"evaluate-{m}")[task]["no_meta"][str(L)]["exact_match"]
                assert removed[1 + 2 * j] == f"{100 * ours:.1f}"
    majority = row_of(acc, "*majority answer*")
    for j, task in enumerate(TASKS):
        assert majority[1 + 2 * j] == f"{100 * stage(out, 'evaluate-gpt2')['baselines'][task][str(L)]['majority']:.1f}"
    abl = section(text, "## 4. Ablations")
    for m in ("meta-ape", "meta-rope"):
        for task in TASKS:
            measured = stage(out, f"ablate-{m}")[task]
            line = next(x for x in abl.splitlines() if x.startswith(f"| {MODELS[m].label} | {design.TASK_LABELS[task]} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[2:5] == [f"{100 * measured[v]['exact_match']:.1f}" for v in ("full", "zero_meta_pos",
                                                                                       "zero_meta_embed")]
    ent = stage(out, "analyze-entropy")
    assert f"{ent['entropy_difference']['mean']:.3f}" in section(text, "## 5.")
    assert "held out" in section(text, "## 7.") and "no-information line" in section(text, "## 7.")


def test_findings_and_controls_rows_are_filled_from_the_stages(study):
    out, text, _, _ = study
    found = section(text, "## Findings")

    def diff(a: str, b: str, task: str, key: str) -> float:
        x = np.array(stage(out, f"evaluate-{a}")[task]["prompts"][key]["exact_per_example"])
        y = np.array(stage(out, f"evaluate-{b}")[task]["prompts"][key]["exact_per_example"])
        return 100 * (x - y).mean()

    # every primary claim on evaluate stages, recomputed here from their per-prompt results
    for claim in design.PRIMARY_CLAIMS:
        cells = row_of(found, claim.id)
        assert cells[-2].strip("*") in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
        if "+yarn" in claim.a:
            continue
        key = str({"L": L, "2L": 2 * L}[claim.length])
        assert cells[3].startswith(f"{diff(claim.a, claim.b, claim.task, key):+.1f} ["), claim.id
        assert float(cells[5]) <= float(cells[6])  # Holm never lowers a p-value
    ya, yb = (stage(out, f"yarn-{m}")["list_recall"]["prompts"][str(2 * SCALES["toy"].yarn.length)]["exact_per_example"]
              for m in ("meta-rope", "gpt2-rope"))
    assert row_of(found, "P7")[3].startswith(f"{100 * (np.array(ya) - np.array(yb)).mean():+.1f} [")
    # the exploratory accuracy rows (Parity at L, and 2L for the tasks that are not primary there)
    for m in ("meta-ape", "meta-rope"):
        row = row_of(found, f"Parity: {MODELS[m].label} beats GPT-2 (APE) at L (exact match, points)")
        assert row[2].startswith(f"{diff(m, 'gpt2', 'parity', str(L)):+.1f} [")
        abl = stage(out, f"ablate-{m}")["list_recall"]
        full = np.array(abl["full"]["exact_per_example"])
        for variant, claim in (("zero_meta_pos", "meta positional encoding matches or beats the full model (points; "
                                                  "matches = no more than 5 worse)"),
                               ("zero_meta_embed", "meta embedding lowers exact match (points)")):
            row = row_of(found, f"List Recall: zeroing {MODELS[m].label}'s {claim}")
            assert row[2].startswith(f"{100 * (np.array(abl[variant]['exact_per_example']) - full).mean():+.1f} [")
    primary = [x for x in section(found, "### Primary").splitlines() if re.match(r"\| P\d \|", x)]
    assert len(primary) == len(design.PRIMARY_CLAIMS)
    rows = [x for x in section(found, "### Exploratory").split("### Controls")[0].splitlines()
            if x.startswith("| ") and "---" not in x][1:]
    # 4 parity, 2 copying at 2L, 2 test-time YaRN, 4 ablation, 2 entropy, 2 residual, 2 rate-distortion,
    # 2 validation loss (against GPT-2 with APE, the paper's; against GPT-2 with RoPE, the control)
    assert len(rows) == 20, rows
    for base, name in (("gpt2", "GPT-2 (APE)"), ("gpt2-rope", "GPT-2 (RoPE, no meta)")):
        row = row_of(found, f"Pre-training: Meta+RoPE has lower validation loss per text token than {name} (nats, "
                            "Meta+RoPE minus GPT-2)")
        gap = stage(out, "pretrain-meta-rope")["val_loss"] - stage(out, f"pretrain-{base}")["val_loss"]
        assert row[2].startswith(f"{gap:+.3f}"), (row, gap)
    assert all(re.search(r"\*\*(reproduced|not reproduced|inconclusive|—)\*\*", c) for c in rows + primary)
    for line in rows:  # n/a only where two rate-distortion curves do not overlap, or a probe learned nothing
        assert "n/a" not in line or "rates do not overlap" in line or "learned nothing" in line, line
    ctrl = section(text, "### Controls")
    for question in ("the meta-tokens alone", "not its extra parameters", "with vs without meta-tokens in the test",
                     "the marker alone", "what pre-training adds", "what pre-training with meta-tokens adds"):
        line = next(x for x in ctrl.splitlines() if question in x)
        assert line.count("[") == len(TASKS)  # an interval for every task


def test_rerun_is_cached_and_a_changed_setting_reruns_only_what_depends_on_it(study, monkeypatch):
    out, _, _, _ = study
    again = Pipeline(out, "toy", seeds=2, progress=False, log=lambda s: None)
    again.run(only_seeds=[0])
    assert again.records and all(r.cached for r in again.records)
    toy = dataclasses.replace(SCALES["toy"], analysis_n=3)
    monkeypatch.setitem(SCALES, "toy", toy)
    changed = Pipeline(out, "toy", seeds=2, progress=False, log=lambda s: None)
    changed.run(only_seeds=[0])
    assert {r.name.split("/")[1].split("-")[0] for r in changed.records if not r.cached} == {"analyze"}
    assert json.loads((out / "stages/seed0/analyze-entropy/entropy.json").read_text())["n_examples"] == 3
    monkeypatch.undo()  # back to the toy scale for the tests that follow: the analyses run again
    Pipeline(out, "toy", seeds=2, progress=False, log=lambda s: None).run(only_seeds=[0])


def test_a_seed_run_in_parallel_processes_is_merged_into_the_report(study):
    """Seed 1 run on its own, as a separate invocation, with two stage processes at once: the report
    then merges seeds 0 and 1, and each stage's record says it ran."""
    out, _, _, _ = study
    proc = subprocess.run([sys.executable, "-m", "metatokens", "reproduce", "--scale", "toy", "--out", str(out),
                           "--seeds", "2", "--seed", "1", "--jobs", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    first_done = next(i for i, x in enumerate(lines) if ": done in " in x)
    assert sum(": running (" in x for x in lines[:first_done]) == 2  # two stage processes at once
    text = (out / "REPORT.md").read_text()
    assert "2 seed(s): 0 (seed value 0), 1 (seed value 1)" in text and "not finished yet" not in text
    seed0, seed1 = stage(out, "pretrain-meta-rope", 0), stage(out, "pretrain-meta-rope", 1)
    assert seed0["val_loss"] != seed1["val_loss"]  # another seed, another run
    mean = (seed0["val_loss"] + seed1["val_loss"]) / 2
    std = abs(seed0["val_loss"] - seed1["val_loss"]) / 2 ** 0.5
    assert f"{mean:.3f} ± {std:.3f}" in section(text, "## 1. Pre-training")
    assert (out / "stages" / "seed1" / "finetune-meta-rope.log").is_file()


def test_a_failing_stage_in_a_parallel_run_stops_the_study_with_one_line(study):
    out, _, _, _ = study
    folder = out / "stages" / "seed1" / "evaluate-gpt2"
    for p in sorted(folder.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    folder.rmdir()
    folder.write_text("a file where the stage's folder goes: the stage cannot run")
    try:
        proc = subprocess.run([sys.executable, "-m", "metatokens", "reproduce", "--scale", "toy", "--out", str(out),
                               "--seeds", "2", "--seed", "1", "--jobs", "2", "--no-progress"],
                              capture_output=True, text=True, timeout=600)
    finally:
        folder.unlink()
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "seed1/evaluate-gpt2 failed" in err[0] and "evaluate-gpt2.log" in err[0]


def test_interrupted_training_stage_resumes(tmp_path):
    pipe = Pipeline(tmp_path, "toy", progress=False, log=lambda s: None)
    from metatokens.training.config import load_run_config

    cfg = load_run_config("tiny", list(SCALES["toy"].pretrain_overrides) + ["train.ckpt_interval=3"])
    calls = []

    def body(folder, resume, inputs):
        calls.append(resume)
        return pipe._pretrain(cfg, folder, resume)

    spec = stages.StageSpec(0, "pretrain-x", {"a": 1}, [], "metatokens pretrain", body, key="k")
    cfg.train.max_steps = 3  # "interrupted" after 3 of 6 steps: a checkpoint exists, no stage.json
    pipe.execute(spec, {})
    (tmp_path / "stages/seed0/pretrain-x/stage.json").unlink()
    cfg.train.max_steps = 6
    rec = pipe.execute(spec, {})
    assert calls == [False, True] and rec.result["step"] == 6


# ----------------------------------------------------------------------------- verdicts from hand-made stage results


def _hand_made(study) -> StudyResults:
    """The toy study's stage results with hand-made per-prompt results (100 prompts; majority answer
    50%) for List Recall (meta prompts always right, everything else never: reproduced), Parity (every
    model right on the same 90 prompts: a 5-point gain ruled out, not reproduced) and Copying
    (everyone at 0: the task is not learned, inconclusive)."""
    out, _, pipe, _ = study
    records = {r.name.split("/")[1]: copy.deepcopy(r) for r in pipe.records if r.name.startswith("seed0/")}
    for m, ms in MODELS.items():
        ev = records[f"evaluate-{m}"].result
        for task in ("list_recall", "parity", "copying"):
            for variant in ev[task]:
                vec = {"list_recall": [1 if ms.meta and variant == "prompts" else 0] * 100,
                       "parity": [1] * 90 + [0] * 10, "copying": [0] * 100}[task]
                for key, c in ev[task][variant].items():
                    if c is not None:
                        c.update(exact_per_example=vec, n=len(vec), exact_match=sum(vec) / len(vec), prompts=task + key)
        for task in TASKS:
            for key in ev["baselines"][task]:
                ev["baselines"][task][key] = {"majority": 0.5, "chance": 0.5}
    return StudyResults(out=out, scale_name="toy", scale=SCALES["toy"], seeds={0: records}, requested_seeds=1)


def test_hand_made_stage_results_give_the_expected_verdicts(study):
    res = _hand_made(study)
    found = findings(res)
    by_id = {f.id: f for f in found if f.id}
    by_claim = {f.claim: f for f in found if not f.id}
    assert sorted(by_id) == [c.id for c in design.PRIMARY_CLAIMS]
    lr = by_id["P1"]  # List Recall at L, Meta+RoPE vs GPT-2 (APE): 100 vs 0 points on 100 prompts
    assert lr.verdict == REPRODUCED and lr.ours.startswith("+100.0 [") and lr.p_holm < 0.025
    assert lr.per_seed == pytest.approx([100.0])
    par = by_claim["Parity: Meta+APE beats GPT-2 (APE) at L (exact match, points)"]  # exploratory
    assert par.verdict == NOT_REPRODUCED and par.ours.startswith("+0.0 [") and not par.note
    assert par.per_seed == pytest.approx([0.0])  # every exploratory row carries each seed's own value
    cp = by_id["P2"]  # Copying: everyone at 0, the floor is 50%
    assert cp.verdict == INCONCLUSIVE and cp.ours.startswith("+0.0 [") and "not learned" in cp.note
    # the controls read the same cells: the marker removed at test time costs List Recall its 100 points
    ctrl = {(q, t): (c, v) for q, t, c, v, _ in controls(res)}
    c, v = ctrl["Meta+RoPE with vs without meta-tokens in the test prompts", "list_recall"]
    assert c["diff"] == pytest.approx(1.0) and v == REPRODUCED
    c, v = ctrl["Meta+RoPE vs GPT-2 (RoPE, no meta): the meta-tokens alone", "list_recall"]
    assert c["diff"] == pytest.approx(1.0) and v == REPRODUCED
    c, v = ctrl["Meta+RoPE vs GPT-2 (RoPE, wide): meta-attention, not its extra parameters", "parity"]
    assert c["diff"] == 0 and v == NOT_REPRODUCED
    text = render_report(res)
    assert "| **reproduced** |" in text and "| **not reproduced** |" in text and "| **inconclusive** |" in text
    assert "### Primary claims (pre-registered, digest `" in text and "### Exploratory rows" in text


def _set(res, model: str, task: str, key: str, vec: list[int], variant: str = "prompts") -> None:
    stage = f"yarn-{model.removesuffix('+yarn')}" if model.endswith("+yarn") else f"evaluate-{model}"
    cells = res.seeds[0][stage].result[task][variant]
    assert cells.get(key) is not None, f"{model} {task} {key} was not measured at toy size"
    cells[key].update(exact_per_example=list(vec), n=len(vec), exact_match=sum(vec) / len(vec))


def test_length_is_judged_by_accuracy_at_2l_against_the_baseline_there(study):
    """Meta models at 60% at 2L (down from 100% at L), GPT-2 (APE) at the floor there (0%, the majority answer
    50%): the primary 2L claims are reproduced, however much the meta models lost from L, and the length table
    says they keep 60% of their L accuracy."""
    res = _hand_made(study)
    for m in ("meta-rope", "meta-ape"):
        _set(res, m, "list_recall", str(2 * L), [1] * 60 + [0] * 40)
    found = {f.id: f for f in findings(res) if f.id}
    assert found["P5"].verdict == REPRODUCED and found["P5"].ours.startswith("+60.0 [")
    assert found["P6"].verdict == REPRODUCED
    text = render_report(res)
    row = row_of(section(text, "## 3. Length generalisation"), "Meta+RoPE")
    assert "60%" in row, row


def test_a_claim_significant_alone_reads_inconclusive_after_holm(study):
    """P1 with Meta+RoPE right on 20 prompts that GPT-2 misses and wrong on 8 it gets (one seed, 100 prompts):
    its own 95% interval lies above 0 (one-sided p about 0.01), but Holm across the primary claims (the others
    here far from significant) lifts its p past 0.025: inconclusive, and the note says why."""
    res = _hand_made(study)
    meta = [1] * 20 + [0] * 8 + [1] * 40 + [0] * 32  # 60%: above the floor (50%) by more than 5 points
    base = [0] * 20 + [1] * 8 + [1] * 40 + [0] * 32
    _set(res, "meta-rope", "list_recall", str(L), meta)
    _set(res, "gpt2", "list_recall", str(L), base)
    for m in MODELS:  # every other primary claim: no difference at all
        for key in (str(L), str(2 * L)):
            _set(res, m, "list_recall", key, base) if (m, key) != ("meta-rope", str(L)) else None
        _set(res, m, "copying", str(L), base)
    for m in ("meta-rope", "gpt2-rope"):
        for key in (str(SCALES["toy"].yarn.length), str(2 * SCALES["toy"].yarn.length)):
            _set(res, f"{m}+yarn", "list_recall", key, base)
    p1 = next(f for f in findings(res) if f.id == "P1")
    lo, hi = (float(x) for x in re.findall(r"[-+]\d+\.\d", p1.ours)[1:3])
    assert lo > 0, p1.ours  # significant alone
    assert p1.p < 0.025 < p1.p_holm
    assert p1.verdict == INCONCLUSIVE and "not after Holm" in p1.note


def test_a_probe_above_the_no_information_line_learned_nothing_and_gives_no_verdict(study):
    """The meta-token's probe at or above the line in a seed (learned: False): both comparisons that involve it
    read "learned nothing", with no verdict, whatever the curves' gap; with every probe below the line the gap
    is judged."""
    res = _hand_made(study)
    rd = res.seeds[0]["analyze-rate-distortion"].result
    rd["learned"] = {name: {"learned": True} for name in rd["curves"]}
    judged = [f for f in findings(res) if "held-out distortion" in f.claim]
    assert len(judged) == 2 and all(f.verdict != "—" for f in judged)
    rd["learned"]["last_meta"] = {"learned": False}
    rows = [f for f in findings(res) if "held-out distortion" in f.claim]
    assert [f.verdict for f in rows] == ["—", "—"]
    assert all("learned nothing" in f.note and "last_meta" in f.note for f in rows)
    assert "learned nothing" in section(render_report(res), "### Exploratory")


def test_the_yarn_and_attribution_stages_run_end_to_end(study):
    """The YaRN protocol's stage fine-tunes inside a 4x window at L_y and tests at L_y and 2 L_y; the attribution
    control pre-trains the Meta+RoPE architecture with k = 0, then fine-tunes and tests it with meta-tokens."""
    out, text, pipe, _ = study
    y = SCALES["toy"].yarn
    for m in y.models:
        r = stage(out, f"yarn-{m}")
        assert r["window"] == 4 * 256 and r["yarn_scale"] == 4
        assert set(r["list_recall"]["prompts"]) == {str(y.length), str(2 * y.length)}
        assert r["finetune"]["step"] == y.steps
    settings = json.loads((out / "stages" / "seed0" / "pretrain-meta-rope-k0" / "stage.json").read_text())["settings"]
    assert settings["data"]["k"] == 0 and settings["model"]["meta_attention"] is True
    assert stage(out, "evaluate-meta-rope-k0")["list_recall"]["prompts"][str(L)] is not None
    assert "## 3b. YaRN as the paper uses it" in text
    assert "what pre-training with meta-tokens adds (attribution)" in text


def test_pairing_refuses_results_on_different_prompts(study):
    res = _hand_made(study)
    res.seeds[0]["evaluate-gpt2"].result["list_recall"]["prompts"][str(L)]["prompts"] = "other prompts"
    with pytest.raises(ValueError, match="different prompts"):
        findings(res)


def test_a_scale_that_leaves_a_task_out_plans_and_reports_only_its_tasks(study, tmp_path):
    """tiny leaves Segment Counting out (its prompts do not fit L = 96): its fine-tunes, evaluations and
    ablations name only its tasks, and the report says which task is missing and why, with no column,
    panel or Findings row for it."""
    tiny = Pipeline(tmp_path, "tiny", seeds=1, progress=False)
    plan = {s.name: s for s in tiny.plan(0)}
    kept = ",".join(SCALES["tiny"].tasks)
    assert "segment_counting" not in kept and SCALES["tiny"].tasks_note
    assert f"--task {kept} --task-weights 10,1,2 --max-len 96" in plan["finetune-meta-rope"].command
    assert f"--task {kept} --lengths 96" in plan["ablate-meta-rope"].command
    with pytest.raises(ValueError, match="says why"):
        dataclasses.replace(SCALES["toy"], tasks=("list_recall", "copying"), ft_weights=(1, 1))
    with pytest.raises(ValueError, match="ft_weights"):
        dataclasses.replace(SCALES["toy"], tasks=("list_recall", "copying"), ft_weights=(1, 1, 1), tasks_note="x")
    with pytest.raises(ValueError, match="in that order"):
        dataclasses.replace(SCALES["toy"], tasks=("copying", "list_recall"), ft_weights=(1, 1), tasks_note="x")

    res = _hand_made(study)
    three = ("list_recall", "parity", "copying")
    res.scale = dataclasses.replace(res.scale, tasks=three, ft_weights=(10, 1, 2), tasks_note="it does not fit.")
    text = render_report(res)
    assert "Segment Counting is left out at this scale: it does not fit." in text
    acc = section(text, "## 2. Task accuracy")
    header = next(line for line in acc.splitlines() if line.startswith("| model |"))
    assert header.count(" ours |") == 3 and "Segment Counting" not in header
    assert "mixture of the three tasks" in acc and "costs a third of three" in acc
    assert "Segment Counting" not in section(text, "### Controls")
    assert all("Segment Counting" not in f.claim for f in findings(res))
    assert "accuracy-segment_counting" not in text and "accuracy-copying" in text


def test_a_figure_copied_from_one_seed_says_which_when_the_report_holds_several(study):
    """Ablation, entropy, residual and rate-distortion figures are drawn by one seed's stage while the
    report (its ablation table, for one) covers every seed: with two seeds each figure says, visibly,
    that it is seed 0's; with one seed nothing is added."""
    res = _hand_made(study)
    one = render_report(res)
    assert "figure above is seed" not in one
    res.seeds[1] = copy.deepcopy(res.seeds[0])
    res.requested_seeds = 2
    two = render_report(res)
    alts = re.findall(r"!\[([^\]]*)\]\(figures/seed0-(?:ablate|analyze)-[^)]+\)", two)
    assert len(alts) == 4 and all(a.endswith(", seed 0") for a in alts)
    assert two.count("*The figure above is seed 0's, one of 2.*") == 4


def test_a_seed_reused_without_its_figures_passes_them_to_the_next_seed(study, tmp_path):
    """Seed 0's stage results reused from elsewhere (stage.json only, as committed): the ablation and analysis
    figures come from seed 1's stages, are named and captioned as seed 1's, and a later re-render from
    stage.json alone (the stage folders' figures gone) still finds those copies."""
    src_out = study[0]
    res = _hand_made(study)
    res.seeds[1] = copy.deepcopy(res.seeds[0])
    res.requested_seeds = 2
    res.out = tmp_path
    rels = ["ablate-meta-rope/ablate.png", "analyze-entropy/entropy.png", "analyze-residual/residual.png",
            "analyze-rate-distortion/rate_distortion.png"]
    for rel in rels:
        (tmp_path / "stages" / "seed1" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_out / "stages" / "seed0" / rel, tmp_path / "stages" / "seed1" / rel)
    (tmp_path / "stages" / "seed0").mkdir(parents=True)
    text = render_report(res)
    linked = re.findall(r"!\[([^\]]*)\]\(figures/([^)]+)\)", text)
    mine = [(alt, name) for alt, name in linked if "ablate" in name or "analyze" in name]
    assert sorted(name for _, name in mine) == sorted("seed1-" + rel.replace("/", "-") for rel in rels)
    assert all(alt.endswith(", seed 1") for alt, _ in mine)
    assert text.count("*The figure above is seed 1's, one of 2.*") == 4 and "missing" not in text
    shutil.rmtree(tmp_path / "stages" / "seed1")
    again = render_report(res)
    assert re.sub(r"written [^.]*\.", "", again) == re.sub(r"written [^.]*\.", "", text)


def test_learning_curves_title_sits_just_above_the_panels(study, monkeypatch):
    """The committed 3-seed figure had a blank band of about half an inch between its two-line title and
    the panels (the title's room reserved twice: by the layout rectangle and by tight_layout, which lays out
    the suptitle itself). Measured on the drawn figure: title bottom to the panels' titles' top."""
    import metatokens.study.figures as study_figures
    from metatokens.study.figures import learning_curves_figure

    figures = []
    monkeypatch.setattr(study_figures, "save_figure", lambda fig, path, **kw: figures.append(fig) or Path(path))
    learning_curves_figure(_hand_made(study))
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    panels_top = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes if ax.get_title())
    gap = (title_bottom - panels_top) / fig.dpi
    assert 0 <= gap < 0.25, gap  # nothing overlaps, and no blank band


def _stage_processes(pid: int) -> list[int]:
    """The `reproduce --stage` processes whose parent is `pid` (Linux: read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
            args = (stat.parent / "cmdline").read_bytes().split(b"\0")
            # a stage still at work: not one that has ended and waits to be reaped (a signal to it does nothing),
            # and a pre-training (the toy fine-tunes can end within the test's 1.5 s)
            stage = (int(parent) == pid and state != "Z" and b"--stage" in args
                     and any(b"/pretrain-" in a for a in args))
        except (OSError, IndexError, ValueError):
            continue
        if stage:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the stage processes in /proc (Linux)")
def test_a_ctrl_c_that_stops_a_stage_process_ends_reproduce_with_130_and_one_line(tmp_path):
    """SIGINT to one `reproduce --stage` process only (as when reproduce itself ignores SIGINT, started in
    the background by a script): reproduce stops the other stage too and exits 130 with one line."""
    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "metatokens", "reproduce", "--scale", "toy", "--out", str(out),
                             "--jobs", "2", "--no-progress"], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            stages = _stage_processes(proc.pid)
            if stages:
                time.sleep(1.5)  # into the stage's work
                try:
                    os.kill(stages[0], signal.SIGINT)
                    break
                except ProcessLookupError:  # it ended meanwhile: the next one
                    continue
            time.sleep(0.1)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert re.fullmatch(r"metatokens reproduce: interrupted: seed0/[a-z0-9-]+ was stopped by SIGINT; the stages that "
                        r"finished are kept, and the same command continues from there\n", err), err
    assert not [p for p in out.rglob(".lock") if (p.parent / "run.json").is_file() or p.parent.name == "run"]


def test_the_tuning_run_chooses_each_models_rate_on_dev_prompts_only(tmp_path):
    """`--tune` at toy size: every tuned model fine-tuned at every rate of the grid and scored on dev prompts
    only; the report's choice per model is the rate with the highest mean dev exact match at L (ties to the
    smaller), recomputed here from the stages."""
    from metatokens.study.tuning import choose_rates

    out = tmp_path / "tune"
    pipe = Pipeline(out, "toy", progress=False, tune=True, log=lambda s: None)
    text = pipe.run().read_text()
    sc = SCALES["toy"]
    assert "## The grid (dev exact match %, at L and 2L)" in text and "## The YaRN protocol, tried on dev" in text
    for spec in pipe.plan(0):
        settings = json.loads((out / "stages" / "seed0" / spec.name / "stage.json").read_text())["settings"]
        assert settings.get("split", "dev") == "dev" and settings.get("curve_split", "dev") == "dev"
        assert settings.get("seed", sc.tune_seed) == sc.tune_seed
    res = StudyResults(out=out, scale_name="toy", scale=sc, seeds=pipe.complete_seeds(), requested_seeds=1)
    chosen = choose_rates(res)
    assert set(chosen) == set(design.TUNED_MODELS)
    for m, info in chosen.items():
        scores = {}
        for lr in sc.lr_grid:
            ev = stage(out, f"evaluate-{m}-lr{lr:g}")
            scores[lr] = np.mean([ev[t]["prompts"][str(L)]["exact_match"] for t in sc.tasks])
        best = max(scores.values())
        assert info["chosen"] == min(lr for lr, v in scores.items() if v == best)
        rows = [x for x in section(text, "## The grid").splitlines() if x.startswith(f"| {MODELS[m].label} | ")]
        assert len(rows) == len(sc.lr_grid) and sum("**yes**" in x for x in rows) == 1


def test_the_demo_reports_the_markers_effect_with_its_interval(tmp_path, monkeypatch):
    """The demo at a few steps: both copies train from scratch (each its own tokenizer, the same one), are
    scored on the same test prompts, and the report leads with their paired difference, every seed's values
    and what the demo does not measure."""
    demo = dataclasses.replace(SCALES["demo"], ft_steps=3, eval_n=4, ft_curve_points=1, ft_curve_n=2, ft_warmup=1)
    monkeypatch.setitem(SCALES, "demo", demo)
    out = tmp_path / "demo"
    text = Pipeline(out, "demo", seeds=1, progress=False, log=lambda s: None).run().read_text()
    assert text.startswith("# metatokens demo")
    a = np.array(stage(out, "evaluate-scratch-meta")["copying"]["prompts"]["96"]["exact_per_example"])
    b = np.array(stage(out, "evaluate-scratch-plain")["copying"]["prompts"]["96"]["exact_per_example"])
    assert f"difference {100 * (a - b).mean():+.1f} [" in text
    assert "## What this does not measure" in text and "metatokens reproduce --scale tiny --seeds 5" in text
    assert re.search(r"!\[[^\]]*\]\(figures/learning-curves\.png\)", text)
    assert not (out / "stages" / "seed0" / "pretrain-meta-rope").exists()  # nothing is pre-trained
    assert "yarn_scale" not in stage(out, "evaluate-scratch-meta")  # the demo reads L alone: no YaRN row to pay for
    curve = stage(out, "finetune-scratch-meta")["curves"]["copying"]  # one task: its curve is logged unsuffixed
    assert curve and curve[-1][0] == demo.ft_steps
