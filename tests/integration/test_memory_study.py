"""`metatokens reproduce --memory` at the toy scale: the study's own base stages, each arm trained and tested
as design.MEMORY_ARMS says, the test-time window of arm (d) against a direct evaluation, the claims recomputed
from the stage files on the far prompts, and the command's refusals."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from metatokens.evaluation.loading import apply_settings, load_model
from metatokens.evaluation.tasks import evaluate_task
from metatokens.study.design import MEMORY_ARMS, SCALES, memory_claims
from metatokens.study.runner import Pipeline

SEEDS = 2


@pytest.fixture(scope="module")
def memory(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory") / "study"
    pipe = Pipeline(out, "toy", seeds=SEEDS, progress=False, memory=True, log=lambda s: None)
    return out, pipe.run().read_text(), pipe


def stage(out: Path, name: str, seed: int = 0) -> dict:
    return json.loads((out / "stages" / f"seed{seed}" / name / "stage.json").read_text())


def test_the_base_stages_are_the_studys_own(memory):
    """Pre-training and fine-tuning of both models have the study's keys: the same computations, so a study
    folder's stages could stand in for them."""
    out, _, pipe = memory
    study = {s.name: s.key for s in Pipeline(out, "toy", seeds=SEEDS).plan(0)}
    mine = {s.name: s.key for s in pipe.plan(0)}
    for name in ("pretrain-meta-rope", "pretrain-gpt2-rope", "finetune-meta-rope", "finetune-gpt2-rope"):
        assert mine[name] == study[name] == stage(out, name)["key"]


def test_each_arm_is_trained_and_tested_as_the_design_says(memory):
    out, _, _ = memory
    mp = SCALES["toy"].memory
    for arm, (_, model, meta, windowed, sinks) in MEMORY_ARMS.items():
        for w in mp.windows if windowed else [None]:
            name = f"window-{arm}" + (f"-w{w}" if w else "")
            result = stage(out, name)["result"]
            run = out / result["finetune"]["run"]
            info = json.loads((run / "run.json").read_text())
            assert Path(info["finetune"]["init"]).resolve() == (out / "stages/seed0" / f"finetune-{model}" / "run").resolve()
            assert info["finetune"]["meta"] is meta and info["finetune"]["tasks"] == list(mp.tasks)
            assert (info["model"]["attn_window"], info["model"]["attn_sinks"]) == (w, mp.sinks if sinks else 0)
            assert (result["window"], result["meta"]) == (w, meta)
            assert all(r["in_test"] == 0 and r["in_dev"] == 0 for r in info["training_prompts"].values())
            for task in mp.tasks:
                n = len(result[task]["prompts"][str(SCALES["toy"].ft_len)]["exact_per_example"])
                assert n == len(result["gap"][task]) == len(result["kv"][task]["prompts"]) == mp.eval_n
            assert result["gap"] == stage(out, "window-full")["result"]["gap"]  # the same prompts in every arm


def test_the_test_time_window_is_the_full_arm_evaluated_with_the_window(memory):
    """Arm (d) against an evaluation of the full arm's checkpoint with the window set here, per prompt."""
    out, _, _ = memory
    sc = SCALES["toy"]
    result = stage(out, "window-full")["result"]
    loaded = load_model(out / result["finetune"]["run"])
    w = sc.memory.windows[0]
    apply_settings(loaded, {"attn_window": w})
    direct = evaluate_task([loaded], "copying", [sc.ft_len], n=sc.memory.eval_n, seed=sc.seed_base, progress=False)
    kept = result["copying"][f"test-time-w{w}"][str(sc.ft_len)]
    assert kept["exact_per_example"] == direct["models"][0]["results"][0]["exact_per_example"]
    assert kept["answer_loss"] == pytest.approx(direct["models"][0]["results"][0]["answer_loss"], abs=1e-9)
    plain = result["copying"]["prompts"][str(sc.ft_len)]
    assert plain["answer_loss"] != pytest.approx(kept["answer_loss"], abs=1e-6)  # the window changed the scores


def test_every_claim_recomputes_from_the_stage_files(memory):
    """Each claim's difference is the mean over seeds of meta minus its rival on the prompts with gap > W, and
    its far-prompt count is theirs."""
    out, text, _ = memory
    sc = SCALES["toy"]
    L = str(sc.ft_len)
    claims = memory_claims(sc.memory)
    assert len(claims) == 2 * len(sc.memory.windows) * len(sc.memory.tasks)
    for cid, task, rival, w in claims:
        row = next(x for x in text.splitlines() if x.startswith(f"| {cid} |"))
        diffs, n = [], 0
        for s in range(SEEDS):
            gap = np.array(stage(out, "window-full", s)["result"]["gap"][task])
            a = np.array(stage(out, f"window-meta-w{w}", s)["result"][task]["prompts"][L]["exact_per_example"])
            b = np.array(stage(out, f"window-{rival}-w{w}", s)["result"][task]["prompts"][L]["exact_per_example"])
            far = gap > w
            n += int(far.sum())
            diffs.append((a[far] - b[far]).mean())
        cells = [c.strip() for c in row.split("|")]
        assert cells[3] == str(n)
        assert cells[4].startswith(f"{100 * np.mean(diffs):+.1f} [")
        assert re.search(r"\*\*(reproduced|not reproduced|inconclusive)\*\*", row)
    assert (out / "figures" / "memory-accuracy.png").is_file()
    assert "(a) full" in text and "## Memory" in text


def test_the_command_refuses_what_it_cannot_run(tmp_path):
    code, err = run_cli("reproduce", "--scale", "toy", "--memory", "--tune", "--out", str(tmp_path / "a"))
    assert code == 2 and err.count("\n") == 1 and "two different runs" in err
    code, err = run_cli("reproduce", "--scale", "demo", "--memory", "--out", str(tmp_path / "b"))
    assert code == 2 and err.count("\n") == 1 and "has no memory measurement" in err and "toy" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_memory_folder_is_not_continued_as_the_study(memory, tmp_path):
    """The folder records the run's kind: the study refuses to continue in it (its stages would be mixed)."""
    out, _, _ = memory
    before = sorted(p.name for p in (out / "stages" / "seed0").iterdir())
    code, err = run_cli("reproduce", "--scale", "toy", "--out", str(out), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "holds a study at scale toy-memory" in err, err
    assert sorted(p.name for p in (out / "stages" / "seed0").iterdir()) == before
