"""The memory measurement's per-prompt quantities (study.stages): the gap between the queried span and the
answer, read against the prompt's own text, and the K/V entries of a bounded cache, against a windowed
model's real cache."""

import numpy as np
import pytest
import torch
from conftest import task_model

from metatokens.model.cache import KVCache
from metatokens.study.stages import answer_gap, kv_entries
from metatokens.tasks.registry import make_examples


@pytest.mark.parametrize("task,length", [("list_recall", 120), ("copying", 200)])
def test_the_gap_ends_where_the_queried_list_or_span_ends(sentence_tokenizer, task, length):
    """Up to the gap the prompt without meta-tokens reads exactly through the queried list's last item (List
    Recall) or the asked span's closing bracket (Copying); what follows is the rest of the prompt."""
    kw = {"length": length, "difficulty": "medium", "n": 12, "seed": 3, "split": "test"}
    with_meta = make_examples(task, sentence_tokenizer, meta=True, **kw)
    plain = make_examples(task, sentence_tokenizer, meta=False, **kw)
    gaps = set()
    for e, p in zip(with_meta, plain):
        gap = answer_gap(e)
        gaps.add(gap)
        head = sentence_tokenizer.decode(p.prompt_ids[: len(p.prompt_ids) - gap + 1])
        info = e.info
        if task == "list_recall":
            assert head.endswith(info["lists"][info["target"]][-1]), head[-80:]
            assert head.count("List ") == info["target"] + 1  # the queried list is the last one read
        else:
            assert head.endswith(info["spans"][info["target"]] + " ]"), head[-80:]
            assert head.count("[") == info["target"] + 1
        assert 0 < gap < len(p.prompt_ids)
    assert len(gaps) > 3  # the queried span sits at different distances


@pytest.mark.parametrize("window,sinks", [(None, 0), (1, 0), (8, 0), (8, 3), (40, 2), (500, 0)])
def test_kv_entries_are_what_a_windowed_model_caches_after_the_prompt(task_tokenizer, window, sinks):
    """The count against the bounded cache itself: a model with that window and those sinks reads each prompt
    into a cache, whose held positions are counted (full attention: the cache's length)."""
    model = task_model(task_tokenizer, attn_window=window, attn_sinks=sinks)
    for e in make_examples("list_recall", task_tokenizer, length=64, n=6, seed=1, split="test"):
        cache = KVCache.empty(model.config.n_layer)
        with torch.no_grad():
            model(torch.tensor([e.prompt_ids]), cache=cache)
        held = cache.length if window is None else len(cache.window.held_positions(cache.length)[0])
        assert kv_entries(e, window, sinks) == held


def synthetic_memory(tmp_path, rates: dict[str, float], seeds: int = 3, n: int = 60):
    """StudyResults of the toy memory measurement with made-up per-prompt results: each arm right with its own
    rate (arm "test" is the full arm with the window at test time), every prompt at a random gap."""
    from metatokens.study.design import MEMORY_ARMS, SCALES
    from metatokens.study.results import StudyResults
    from metatokens.study.stages import StageRecord

    sc = SCALES["toy"]
    L = str(sc.ft_len)
    rng = np.random.default_rng(0)
    records = {}
    for s in range(seeds):
        gap = {t: rng.integers(10, 110, size=n).tolist() for t in sc.memory.tasks}

        def cell(rate, t, s=s):
            return {"exact_per_example": (rng.random(n) < rate).astype(int).tolist(), "prompts": f"{t}-{s}"}

        stages = {}
        for arm, (_, _, _, windowed, _) in MEMORY_ARMS.items():
            for w in sc.memory.windows if windowed else [None]:
                name = f"window-{arm}" + (f"-w{w}" if w else "")
                result = {"gap": gap, "baselines": {t: {"majority": 0.02, "chance": 0.1} for t in sc.memory.tasks},
                          "kv": {t: {"prompts": [w or 100] * n} for t in sc.memory.tasks}}
                for t in sc.memory.tasks:
                    result[t] = {"prompts": {L: cell(rates[arm], t)}}
                    if arm == "full":
                        for ww in sc.memory.windows:
                            result[t][f"test-time-w{ww}"] = {L: cell(rates["test"], t)}
                            result["kv"][t][f"test-time-w{ww}"] = [ww] * n
                stages[name] = StageRecord(f"seed{s}/{name}", "k", result, 1.0, "cmd")
        records[s] = stages
    return StudyResults(out=tmp_path, scale_name="toy", scale=sc, seeds=records, requested_seeds=seeds,
                        seed_values={s: s for s in range(seeds)})


def test_each_claim_is_meta_minus_its_rival_on_the_far_prompts(tmp_path):
    """claim_rows against numpy on made-up results: the difference, the far-prompt count, and verdicts that
    follow the effect (meta far above both rivals: reproduced)."""
    from metatokens.study.memory import claim_rows

    res = synthetic_memory(tmp_path, {"full": 0.95, "meta": 0.8, "plain": 0.1, "sinks": 0.3, "test": 0.2})
    L = str(res.scale.ft_len)
    for row in claim_rows(res):
        diffs, n = [], 0
        for s in res.seed_list:
            gap = np.array(res.result(s, "window-full")["gap"][row["task"]])
            far = gap > row["w"]
            a = np.array(res.result(s, f"window-meta-w{row['w']}")[row["task"]]["prompts"][L]["exact_per_example"])
            b = np.array(res.result(s, f"window-{row['rival']}-w{row['w']}")[row["task"]]["prompts"][L]["exact_per_example"])
            diffs.append((a[far] - b[far]).mean())
            n += int(far.sum())
        assert row["c"]["diff"] == pytest.approx(np.mean(diffs), abs=1e-12) and row["n"] == n
        assert row["verdict"] == "reproduced" and row["p_holm"] >= row["p"]


def test_a_claim_the_full_model_cannot_answer_is_inconclusive_and_the_report_renders(tmp_path):
    """With full attention at the floor the probe cannot work: every claim inconclusive, whatever meta minus its
    rival is. The report renders its tables and figure from the same numbers."""
    from metatokens.study.memory import claim_rows, render_memory

    res = synthetic_memory(tmp_path, {"full": 0.05, "meta": 0.8, "plain": 0.1, "sinks": 0.1, "test": 0.1})
    rows = claim_rows(res)
    assert all(r["verdict"] == "inconclusive" and r["unlearned"] and r["c"]["ci95"][0] > 0 for r in rows)
    text = render_memory(res)
    assert text.count("(not learned with full attention)") == len(rows)
    assert (tmp_path / "figures" / "memory-accuracy.png").is_file()
    assert "Scale `toy-memory`" in text
