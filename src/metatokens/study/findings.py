"""Findings: one verdict per claim of the paper (reproduced / not reproduced / inconclusive), read from a
paired interval and a smallest effect of interest, and the controls that isolate one cause each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, contrast, single, verdict
from .design import (
    PAPER_ACCURACY,
    PAPER_ENTROPY_DIFF,
    PAPER_LENGTH_GAIN,
    PAPER_LOGIT_BOOST,
    TASK_LABELS,
)
from .results import (
    StudyResults,
    _ci,
    _learned,
    ablation_contrast,
    cell,
    compare,
    gain_contrast,
    mean_std,
    min_gap_at_equal_rate,
    near_minus_far,
    per_seed_examples,
    per_seed_interval,
)

# An accuracy effect smaller than this (percentage points) is not what the paper claims: an interval
# entirely below it rules the claimed effect out ("not reproduced").
RULE_OUT_POINTS = 5.0


YARN_KEEP_POINTS = 15.0  # "keeps its accuracy" with YaRN: a drop from L to 4L of at most this many points


@dataclass
class Finding:
    claim: str
    paper: str
    ours: str
    verdict: str
    note: str = ""


def _acc_verdict(c: dict[str, Any] | None, direction: int = 1, floor: str = "") -> str:
    """An accuracy claim's verdict; a comparison where no model learned the task (`floor` says so)
    cannot test the claim, so it is inconclusive whatever its interval."""
    if c is None or floor:
        return INCONCLUSIVE
    return verdict(c["ci95"], direction=direction, rule_out=RULE_OUT_POINTS / 100)


def _size_note(c: dict[str, Any] | None, v: str, paper_points: float) -> str:
    """Where the direction is reproduced but the effect is clearly smaller than the paper's."""
    if v == REPRODUCED and c is not None and 100 * c["ci95"][1] < paper_points:
        return f"direction reproduced; the effect is smaller than the paper's {paper_points:+.1f}"
    return ""


def _gain_note(res: StudyResults, m: str, c: dict[str, Any] | None, short: str, long: str) -> str:
    """For an L-to-2L contrast whose interval lies below 0: say that it is contrary, and what a baseline
    that has little to lose does to it (a model at the floor at L cannot drop much)."""
    if c is None or not c.get("ci95") or c["ci95"][1] >= 0:
        return ""
    label = res.scale.models[m].label
    note = f"contrary: {label} loses more than GPT-2 (APE) from L to 2L"
    if not _learned(res, "gpt2", "list_recall", short):
        at_l = mean_std([(cell(res, s, "gpt2", "list_recall", short) or {}).get("exact_match") for s in res.seed_list])[0]
        lead = compare(res, (m, "list_recall", long, "prompts"), ("gpt2", "list_recall", long, "prompts"))
        note += f"; GPT-2 (APE) is at {100 * at_l:.1f}% at L, at the floor, so it has little to lose"
        if lead is not None and lead.get("ci95"):
            where = ("still leads it" if lead["ci95"][0] > 0 else "trails it" if lead["ci95"][1] < 0 else
                     "is level with it (the interval holds 0)")
            note += f"; at 2L {label} {where}: {_ci(lead)}"
    return note


def findings(res: StudyResults) -> list[Finding]:
    """One row per claim of the paper (docs/method.md sections 6-7) that the study tests, with its verdict."""
    L = res.scale.ft_len
    out: list[Finding] = []
    models = res.scale.models
    for task in [t for t in ("list_recall", "parity", "copying") if t in res.scale.tasks]:
        for m in ("meta-ape", "meta-rope"):
            if m not in models or "gpt2" not in models:
                continue
            c = compare(res, (m, task, str(L), "prompts"), ("gpt2", task, str(L), "prompts"))
            paper = PAPER_ACCURACY[task][m] - PAPER_ACCURACY[task]["gpt2"]
            floor = _floor_note(res, task, [m, "gpt2"], str(L))
            v = _acc_verdict(c, floor=floor)
            out.append(Finding(f"{TASK_LABELS[task]}: {models[m].label} beats GPT-2 (APE) at L (exact match, points)",
                               f"{paper:+.1f} (at 512)", _ci(c), v, floor or _size_note(c, v, paper)))
    for m in ("meta-ape", "meta-rope"):
        if m not in models:
            continue
        c = gain_contrast(res, m, "gpt2", "list_recall", str(L), str(2 * L))
        paper = PAPER_LENGTH_GAIN[m] - PAPER_LENGTH_GAIN["gpt2"]
        floor = _floor_note(res, "list_recall", [m, "gpt2"], str(L))
        v = _acc_verdict(c, floor=floor)
        note = floor or _size_note(c, v, paper) or _gain_note(res, m, c, str(L), str(2 * L))
        out.append(Finding(f"List Recall: {models[m].label} gains more than GPT-2 (APE) from L to 2L (points)",
                           f"{paper:+.1f} (256 -> 512)", _ci(c), v, note))
    if "meta-rope" in models:
        for task in ("list_recall", "copying"):
            xs_long = per_seed_examples(res, "meta-rope", task, f"{4 * L}+yarn")
            xs_short = per_seed_examples(res, "meta-rope", task, str(L))
            c = None if xs_long is None or xs_short is None else contrast([single(xs_long[0]), single(xs_short[0], -1.0)])
            learned = _learned(res, "meta-rope", task, str(L))
            v = INCONCLUSIVE if c is None or not learned else verdict(
                [x * 100 + YARN_KEEP_POINTS for x in c["ci95"]], rule_out=0.0)
            note = ("" if learned else "Meta+RoPE does not do this task at L, so there is no accuracy to keep; ") + (
                "adapted: the paper fine-tunes inside the YaRN window and tests at 2x; here YaRN is applied at test "
                "time only, to a model fine-tuned at L")
            out.append(Finding(f"{TASK_LABELS[task]}: Meta+RoPE with YaRN keeps its accuracy at 4L, beyond its window "
                               f"(4L minus L, points; kept = drop under {YARN_KEEP_POINTS:g})",
                               "85-98% up to 2x the window", _ci(c), v, note))
    for m in ("meta-ape", "meta-rope"):
        if m not in models or not res.has(f"ablate-{m}"):
            continue
        floor = _floor_note(res, "list_recall", [m], str(L))
        c = ablation_contrast(res, m, "list_recall", "zero_meta_pos")
        # the paper: the zeroed model "matches or beats" the full one: judged as no worse by 5 points or more
        v = INCONCLUSIVE if c is None or floor else verdict([x + RULE_OUT_POINTS / 100 for x in c["ci95"]])
        out.append(Finding(f"List Recall: zeroing {models[m].label}'s meta positional encoding matches or beats the "
                           f"full model (points; matches = no more than {RULE_OUT_POINTS:g} worse)",
                           "+11 to +39", _ci(c), v, floor))
        c = ablation_contrast(res, m, "list_recall", "zero_meta_embed")
        out.append(Finding(f"List Recall: zeroing {models[m].label}'s meta embedding lowers exact match (points)",
                           "large drop", _ci(c), _acc_verdict(c, direction=-1, floor=floor), floor))
    if res.has("analyze-entropy"):
        ent = [res.result(s, "analyze-entropy") for s in res.seed_list]
        for key, paper, what in (("entropy_difference", PAPER_ENTROPY_DIFF,
                                  "attention entropy is lower at meta-token queries (non-meta minus meta, nats)"),
                                 ("max_logit_boost", PAPER_LOGIT_BOOST,
                                  "the meta embedding raises the max attention logit (real minus zeroed)")):
            vals = [e[key]["mean"] if e.get(key) else None for e in ent]
            c = per_seed_interval(vals, ent[0][key]["ci95"] if ent[0].get(key) else None)
            v = INCONCLUSIVE if c is None else verdict(c["ci95"], rule_out=0.0)
            note = "contrary: the sign is the opposite of the paper's" if v == NOT_REPRODUCED else ""
            out.append(Finding(f"Meta+RoPE, List Recall: {what}", f"{paper:+.2f}", _ci(c, 1.0, 3), v, note))
    if res.has("analyze-residual"):
        vals = []
        for s in res.seed_list:
            r = res.result(s, "analyze-residual")
            vals.append(near_minus_far(r["cosine_meta_binned"][-1], r["cosine_control_binned"][-1]))
        c = per_seed_interval(vals, None)
        v = INCONCLUSIVE if c is None or c["ci95"] is None else verdict(c["ci95"], rule_out=0.0)
        note = ("one value per seed: an interval needs two seeds or more" if c and c["ci95"] is None else
                "contrary: a meta-token's state is less tied to nearby tokens than a text token's"
                if v == NOT_REPRODUCED else "")
        out.append(Finding("Meta+RoPE: a meta-token's last-layer state is more similar to nearby than to far tokens, "
                           "more so than a text token's (near minus far cosine, meta minus text)",
                           "high near, fading with distance", _ci(c, 1.0, 3), v, note))
    if res.has("analyze-rate-distortion"):
        for a, b, what in (("last_token", "last_meta", "the meta-token's probe has lower held-out distortion than the "
                            "last token's at every rate both reach (smallest margin, nats)"),
                           ("last_meta", "last_meta_zero_pos", "zeroing the meta-token's position lowers its held-out "
                            "distortion further, at every rate (smallest margin, nats)")):
            vals = []
            for s in res.seed_list:
                curves = res.result(s, "analyze-rate-distortion")["curves"]
                vals.append(min_gap_at_equal_rate(curves[a], curves[b]))
            c = per_seed_interval(vals, None)
            v = INCONCLUSIVE if c is None or c["ci95"] is None else verdict(c["ci95"], rule_out=0.0)
            note = ("one value per seed: an interval needs two seeds or more" if c and c["ci95"] is None else
                    "contrary: the order is the opposite of the paper's" if v == NOT_REPRODUCED else "")
            if c and c["ci95"] is None and c["diff"] < 0:
                note = "contrary in every seed measured (no interval with one seed)"
            if c is None:
                note = "the two probes' rates do not overlap, so they cannot be compared at equal rate"
            out.append(Finding(f"Meta+RoPE, List Recall: {what}", "lower at every rate", _ci(c, 1.0, 3), v, note))
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
    idle = [res.scale.models[m].label for m in models if not _learned(res, m, task, key)]
    if len(idle) == len(models):
        return "no model here clears the majority answer and chance by 5 points: the task is not learned at this scale"
    return ""
