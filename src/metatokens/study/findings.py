"""Findings: one verdict per claim of the paper (reproduced / not reproduced / inconclusive), read from a
paired interval and a smallest effect of interest, and the controls that isolate one cause each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    contrast,
    corrected_verdict,
    holm,
    p_value,
    single,
    verdict,
)
from .design import (
    PAPER_ACCURACY,
    PAPER_ENTROPY_DIFF,
    PAPER_LOGIT_BOOST,
    PRIMARY_CLAIMS,
    SESOI,
    TASK_LABELS,
    Claim,
)
from .results import (
    StudyResults,
    _ci,
    _learned,
    ablation_contrast,
    compare,
    mean_std,
    min_gap_at_equal_rate,
    per_example_contrast,
    per_seed_examples,
    per_seed_interval,
)

# An accuracy effect smaller than this (percentage points) is not what the paper claims: an interval
# entirely below it rules the claimed effect out ("not reproduced").
RULE_OUT_POINTS = SESOI["accuracy_points"]
NOT_A_VERDICT = "—"  # a row that describes but cannot judge the paper's claim


@dataclass
class Finding:
    claim: str
    paper: str
    ours: str
    verdict: str
    note: str = ""
    id: str = ""  # P1, P2, ... for a pre-registered primary claim; "" for an exploratory row
    per_seed: list[float] | None = None  # each seed's own value of the quantity (in the unit of `ours`)
    p: float | None = None  # one-sided bootstrap p of "no effect on the claimed side" (primary claims)
    p_holm: float | None = None  # the same, Holm-adjusted across the primary claims


def _acc_verdict(c: dict[str, Any] | None, direction: int = 1, floor: str = "") -> str:
    """An accuracy claim's verdict; a comparison where no model learned the task (`floor` says so)
    cannot test the claim, so it is inconclusive whatever its interval."""
    if c is None or floor:
        return INCONCLUSIVE
    return verdict(c["ci95"], direction=direction, rule_out=RULE_OUT_POINTS / 100)


def _trivial_note(c: dict[str, Any] | None, v: str) -> str:
    """Where an accuracy effect is shown on the paper's side but lies wholly below the smallest effect of interest."""
    if v == NOT_REPRODUCED and c is not None and c["ci95"][0] > 0:
        return f"an effect on the paper's side, but smaller than the smallest of interest ({RULE_OUT_POINTS:g} points)"
    return ""


def _size_note(c: dict[str, Any] | None, v: str, paper_points: float) -> str:
    """Where the direction is reproduced but the effect is clearly smaller than the paper's (or too small to count)."""
    if v == REPRODUCED and c is not None and 100 * c["ci95"][1] < paper_points:
        return f"direction reproduced; the effect is smaller than the paper's {paper_points:+.1f}"
    return _trivial_note(c, v)


def _points(c: dict[str, Any] | None) -> list[float] | None:
    """Each seed's own value of an accuracy contrast, in points."""
    return None if c is None else [100 * x for x in c["per_seed"]]


def length_key(res: StudyResults, length: str) -> str:
    """A claim's length ("L", "2L", "Ly", "2Ly") as the key of the evaluation cells."""
    L, y = res.scale.ft_len, res.scale.yarn
    table = {"L": L, "2L": 2 * L}
    if y is not None:
        table.update({"Ly": y.length, "2Ly": 2 * y.length})
    return str(table[length])


def _claim_available(res: StudyResults, claim: Claim) -> bool:
    models = res.scale.models
    if any(m.removesuffix("+yarn") not in models for m in (claim.a, claim.b)):
        return False
    return not (claim.length.endswith("Ly") and res.scale.yarn is None)


def primary_findings(res: StudyResults) -> list[Finding]:
    """The pre-registered primary claims (design.PRIMARY_CLAIMS), each a paired difference of exact match on
    the same test prompts, judged after Holm's correction across them (stats.corrected_verdict)."""
    rows, tests = [], {}
    for claim in [c for c in PRIMARY_CLAIMS if _claim_available(res, c)]:
        key = length_key(res, claim.length)
        c = compare(res, (claim.a, claim.task, key, "prompts"), (claim.b, claim.task, key, "prompts"))
        floor = _floor_note(res, claim.task, [claim.a, claim.b], key)
        rows.append((claim, key, c, floor))
        if c is not None:
            tests[claim.id] = (p_value(c, 0.0), p_value(c, RULE_OUT_POINTS / 100, direction=-1))
    effect = holm({k: v[0] for k, v in tests.items()})
    rule_out = holm({k: v[1] for k, v in tests.items()})
    out = []
    for claim, key, c, floor in rows:
        if c is None:
            v = INCONCLUSIVE
        else:
            v = INCONCLUSIVE if floor else corrected_verdict(effect[claim.id], rule_out[claim.id])
        note = floor or _trivial_note(c, v)
        if c is not None and not floor and v == INCONCLUSIVE and c["ci95"][0] > 0:
            note = "the interval alone excludes 0, but not after Holm's correction across the primary claims"
        out.append(Finding(f"{claim.text} (exact match at {key}, points)", claim.paper, _ci(c), v, note, id=claim.id,
                           per_seed=_points(c),
                           p=None if c is None else tests[claim.id][0],
                           p_holm=None if c is None else effect[claim.id]))
    return out


def findings(res: StudyResults) -> list[Finding]:
    """The primary claims, then one exploratory row per other claim of the paper (docs/method.md sections 6-7)
    that the study tests, each with its verdict from its own 95% interval (no correction)."""
    return primary_findings(res) + exploratory_findings(res)


def exploratory_findings(res: StudyResults) -> list[Finding]:
    L = res.scale.ft_len
    out: list[Finding] = []
    models = res.scale.models
    primary = {(c.a, c.b, c.task, length_key(res, c.length)) for c in PRIMARY_CLAIMS if _claim_available(res, c)}
    for task in [t for t in ("list_recall", "parity", "copying") if t in res.scale.tasks]:
        for m in ("meta-ape", "meta-rope"):
            for key in (str(L), str(2 * L)):
                if m not in models or "gpt2" not in models or (m, "gpt2", task, key) in primary:
                    continue
                c = compare(res, (m, task, key, "prompts"), ("gpt2", task, key, "prompts"))
                paper = PAPER_ACCURACY[task][m] - PAPER_ACCURACY[task]["gpt2"] if key == str(L) else None
                floor = _floor_note(res, task, [m, "gpt2"], key)
                v = _acc_verdict(c, floor=floor)
                where = "L" if key == str(L) else "2L"
                out.append(Finding(f"{TASK_LABELS[task]}: {models[m].label} beats GPT-2 (APE) at {where} (exact match, "
                                   "points)", f"{paper:+.1f} (at 512)" if paper is not None else "—", _ci(c), v,
                                   floor or (_size_note(c, v, paper) if paper is not None else _trivial_note(c, v)),
                                   per_seed=_points(c)))
    if "meta-rope" in models:
        for task in ("list_recall", "copying"):
            xs_long = per_seed_examples(res, "meta-rope", task, f"{4 * L}+yarn")
            xs_short = per_seed_examples(res, "meta-rope", task, str(L))
            if xs_long is None or xs_short is None:
                continue
            c = contrast([single(xs_long[0]), single(xs_short[0], -1.0)])
            out.append(Finding(f"{TASK_LABELS[task]}: Meta+RoPE with YaRN switched on at test time only, 4L minus L "
                               "(points)", "not claimed", _ci(c), NOT_A_VERDICT,
                               "a labelled extra, not the paper's protocol (which fine-tunes inside the YaRN window: "
                               "the primary YaRN claim)", per_seed=_points(c)))
    out += _ablation_rows(res) + _analysis_rows(res) + _perplexity_rows(res)
    return out


def _ablation_rows(res: StudyResults) -> list[Finding]:
    out, L, models = [], res.scale.ft_len, res.scale.models
    for m in ("meta-ape", "meta-rope"):
        if m not in models or not res.has(f"ablate-{m}"):
            continue
        floor = _floor_note(res, "list_recall", [m], str(L))
        c = ablation_contrast(res, m, "list_recall", "zero_meta_pos")
        # the paper: the zeroed model "matches or beats" the full one: judged as no worse by 5 points or more
        v = INCONCLUSIVE if c is None or floor else verdict([x + RULE_OUT_POINTS / 100 for x in c["ci95"]])
        out.append(Finding(f"List Recall: zeroing {models[m].label}'s meta positional encoding matches or beats the "
                           f"full model (points; matches = no more than {RULE_OUT_POINTS:g} worse)",
                           "+11 to +39", _ci(c), v, floor, per_seed=_points(c)))
        c = ablation_contrast(res, m, "list_recall", "zero_meta_embed")
        out.append(Finding(f"List Recall: zeroing {models[m].label}'s meta embedding lowers exact match (points)",
                           "large drop", _ci(c), _acc_verdict(c, direction=-1, floor=floor), floor,
                           per_seed=_points(c)))
    return out


def _analysis_verdict(c: dict[str, Any] | None, sesoi: float, direction: int = 1) -> str:
    return INCONCLUSIVE if c is None or c.get("ci95") is None else verdict(c["ci95"], direction=direction,
                                                                             rule_out=sesoi)


def _sesoi_note(c: dict[str, Any] | None, sesoi: float, direction: int = 1, unit: str = "") -> str:
    """The smallest effect of interest, and what the interval says about it."""
    note = f"smallest effect of interest {sesoi:g}{unit}"
    if c is None or c.get("ci95") is None:
        return note
    lo, hi = sorted(direction * v for v in c["ci95"])
    if hi < sesoi:
        note += ("; an effect on the paper's side, but smaller than that" if lo > 0 else
                 "; the interval lies below it" + (": the sign is the opposite of the paper's" if hi < 0 else ""))
    return note


def _analysis_rows(res: StudyResults) -> list[Finding]:
    out = []
    if res.has("analyze-entropy"):
        ent = [res.result(s, "analyze-entropy") for s in res.seed_list]
        for key, paper, what, sesoi in (
                ("entropy_difference", PAPER_ENTROPY_DIFF,
                 "attention entropy is lower at meta-token queries (non-meta minus meta, nats)", SESOI["entropy_nats"]),
                ("max_logit_boost", PAPER_LOGIT_BOOST,
                 "the meta embedding raises the max attention logit (real minus zeroed)", SESOI["logit"])):
            c = per_example_contrast([(e.get(key) or {}).get("per_example") for e in ent])
            v = _analysis_verdict(c, sesoi)
            note = _sesoi_note(c, sesoi)
            out.append(Finding(f"Meta+RoPE, List Recall: {what}", f"{paper:+.2f}", _ci(c, 1.0, 3), v, note,
                               per_seed=None if c is None else c["per_seed"]))
    if res.has("analyze-residual"):
        out += _residual_rows(res)
    if res.has("analyze-rate-distortion"):
        out += _rate_distortion_rows(res)
    return out


def _residual_rows(res: StudyResults) -> list[Finding]:
    """The meta-token's own decay (near minus far centred cosine at meta queries, last layer), and, as a
    secondary row, how much more it decays than at text queries (the same examples, paired)."""
    out, sesoi = [], SESOI["cosine"]
    per = [res.result(s, "analyze-residual").get("near_far") for s in res.seed_list]
    if any(p is None for p in per):
        return out
    meta = [[v for v in p["meta"][-1] if v is not None and math.isfinite(v)] for p in per]  # no far pair: None
    c = per_example_contrast(meta)
    v = _analysis_verdict(c, sesoi)
    near, far = per[0]["near"], per[0]["far"]
    what = f"distances {near[0]}-{near[1]} minus {far[0]}+"
    out.append(Finding(f"Meta+RoPE: a meta-token's last-layer state is more similar to nearby than to far tokens "
                       f"(centred cosine, {what})", "high near, fading with distance", _ci(c, 1.0, 3), v,
                       _sesoi_note(c, sesoi), per_seed=None if c is None else c["per_seed"]))
    diff = [[a - b for a, b in zip(p["meta"][-1], p["control"][-1])
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)] for p in per]
    c = per_example_contrast(diff)
    out.append(Finding("Meta+RoPE: that decay is larger at meta-token queries than at text queries (meta minus text, "
                       "secondary)", "—", _ci(c, 1.0, 3), _analysis_verdict(c, sesoi), _sesoi_note(c, sesoi),
                       per_seed=None if c is None else c["per_seed"]))
    return out


def _rate_distortion_rows(res: StudyResults) -> list[Finding]:
    out, sesoi = [], SESOI["distortion_nats"]
    rds = [res.result(s, "analyze-rate-distortion") for s in res.seed_list]
    for a, b, what in (("last_token", "last_meta", "the meta-token's probe has lower held-out distortion than the "
                        "last token's at every rate both reach (smallest margin, nats)"),
                       ("last_meta", "last_meta_zero_pos", "zeroing the meta-token's position lowers its held-out "
                        "distortion further, at every rate (smallest margin, nats)")):
        idle = sorted({n for r in rds for n in (a, b) if not ((r.get("learned") or {}).get(n) or {}).get("learned", True)})
        vals = [min_gap_at_equal_rate(r["curves"][a], r["curves"][b]) for r in rds]
        c = per_seed_interval(vals)
        if idle:
            out.append(Finding(f"Meta+RoPE, List Recall: {what}", "lower at every rate", _ci(c, 1.0, 3), NOT_A_VERDICT,
                               f"learned nothing: the probe of {', '.join(idle)} is not below the no-information line "
                               "in every seed, so the comparison cannot test the claim"))
            continue
        note = "the two probes' rates do not overlap" if c is None else _sesoi_note(c, sesoi, unit=" nats")
        out.append(Finding(f"Meta+RoPE, List Recall: {what}", "lower at every rate", _ci(c, 1.0, 3),
                           _analysis_verdict(c, sesoi), note, per_seed=None if c is None else c.get("per_seed")))
    return out


def _perplexity_rows(res: StudyResults) -> list[Finding]:
    """Validation loss per text token after pre-training, Meta+RoPE minus a baseline, paired by seed: GPT-2
    (APE), the paper's comparison, then GPT-2 (RoPE, no meta), which tells the meta-tokens from RoPE."""
    baselines = [
        ("pretrain-gpt2", "GPT-2 (APE)", "14.79 vs 16.13 perplexity on PG19 (-0.087 nats)", ""),
        ("pretrain-gpt2-rope", "GPT-2 (RoPE, no meta)", "—",
         "the same position encoding without meta-tokens, so the difference is the meta-tokens' own (a control "
         "the paper does not report; this row was added after seeds 0-2 had run); "),
    ]
    out = []
    if not res.has("pretrain-meta-rope"):
        return out
    meta = [res.result(s, "pretrain-meta-rope")["val_loss"] for s in res.seed_list]
    sesoi = SESOI["loss_nats"]
    for stage, name, paper, lead in baselines:
        if not res.has(stage):
            continue
        base = [res.result(s, stage)["val_loss"] for s in res.seed_list]
        c = per_seed_interval([a - b for a, b in zip(meta, base)])
        out.append(Finding(
            f"Pre-training: Meta+RoPE has lower validation loss per text token than {name} (nats, Meta+RoPE minus "
            f"{name.split(' (')[0]})", paper, _ci(c, 1.0, 3), _analysis_verdict(c, sesoi, direction=-1),
            f"{lead}perplexity {math.exp(mean_std(meta)[0]):.1f} vs {math.exp(mean_std(base)[0]):.1f} on the built-in "
            f"corpus's held-out text; {_sesoi_note(c, sesoi, -1, ' nats')}; interval over seeds only (one value per "
            "seed)", per_seed=None if c is None else c.get("per_seed")))
    return out


def controls(res: StudyResults) -> list[tuple[str, str, dict[str, Any] | None, str, bool]]:
    """(question, task, paired difference at L in exact match, verdict, whether no model of the two
    learned the task) for each control."""
    L, models = str(res.scale.ft_len), res.scale.models
    rows = []
    pairs = [
        ("meta-rope", "prompts", "gpt2-rope", "prompts", "Meta+RoPE vs GPT-2 (RoPE, no meta): the meta-tokens alone"),
        ("meta-rope", "prompts", "gpt2-rope-wide", "prompts",
         "Meta+RoPE vs GPT-2 (RoPE, wide): meta-attention, not its extra parameters"),
        ("meta-rope", "prompts", "meta-rope", "no_meta", "Meta+RoPE with vs without meta-tokens in the test prompts"),
        ("meta-ape", "prompts", "meta-ape", "no_meta", "Meta+APE with vs without meta-tokens in the test prompts"),
        ("scratch-meta", "prompts", "scratch-plain", "prompts",
         "not pre-trained, with vs without meta-tokens: the marker alone"),
        ("meta-rope", "prompts", "scratch-meta", "prompts", "Meta+RoPE pre-trained vs not: what pre-training adds"),
        ("meta-rope", "prompts", "meta-rope-k0", "prompts",
         "Meta+RoPE vs the same pre-trained with k = 0: what pre-training with meta-tokens adds (attribution)"),
    ]
    for a, va, b, vb, question in pairs:
        if a not in models or b not in models:
            continue
        for task in res.scale.tasks:
            c = compare(res, (a, task, L, va), (b, task, L, vb))
            floor = _floor_note(res, task, [a, b], L)
            rows.append((question, task, c, _acc_verdict(c, floor=floor), bool(floor)))
    return rows


def _floor_note(res: StudyResults, task: str, models: list[str], key: str) -> str:
    idle = [m for m in models if not _learned(res, m, task, key)]
    if len(idle) == len(models):
        return "no model here clears the majority answer and chance by 5 points: the task is not learned at this scale"
    return ""
