"""The study's stages: their records (`StageSpec`, `StageRecord`) and what each stage does (the plan
of a seed is `metatokens.study.plan`). Pre-training and fine-tuning go through `run_pretrain` / `run_finetune` (and so the run
folder's one lifecycle); evaluations, ablations and analyses write their results into stage.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import analysis as an
from ..analysis.ablate import ablation_study, markdown_table, plot_ablation
from ..analysis.common import load_for_analysis, write_json
from ..evaluation.loading import apply_settings, load_model
from ..evaluation.report import write_report
from ..evaluation.scoring import answer_baselines
from ..evaluation.tasks import evaluate_task
from ..fileio import atomic_write_text
from ..model.yarn import apply_yarn
from ..runs.folder import read_metrics
from ..tasks.registry import make_examples
from ..training.finetune import make_train_config, run_finetune
from ..training.pretrain import run_pretrain
from ..training.task_batches import TaskSpec
from .design import EVAL_METRICS, MEMORY_ARMS


@dataclass
class StageRecord:
    name: str  # seed<S>/<stage>
    key: str
    result: dict[str, Any]
    wall_s: float
    command: str
    cached: bool = False


@dataclass
class StageSpec:
    seed: int
    name: str
    settings: dict[str, Any]
    inputs: list[str]  # stages of the same seed whose results this one reads
    command: str
    body: Callable[[Path, bool, dict[str, StageRecord]], dict[str, Any]]
    key: str = ""

    @property
    def full_name(self) -> str:
        return f"seed{self.seed}/{self.name}"


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


class Stages:
    """What each stage of the study does (pre-train, fine-tune, evaluate, ablate, analyse); `plan.Plan`
    lists the stages of a seed and `runner.Pipeline` schedules them, caches their results and writes the
    report. Uses the pipeline's `out`, `scale`, `device`, `progress`, `seeds` and `log`."""

    def _pretrain(self, cfg, folder: Path, resume: bool) -> dict[str, Any]:
        gpus = torch.cuda.device_count() if self.device in ("auto", "cuda") else 0
        run = folder / "run"
        if gpus > 1 and "WORLD_SIZE" not in os.environ:
            cfg_file = folder / "config.yaml"
            atomic_write_text(cfg_file, yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "name"}))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "-m", "metatokens", "pretrain", "--config", str(cfg_file), "--out", str(run)]
            subprocess.run(cmd + (["--resume"] if resume else []), check=True)
            rows = read_metrics(run, missing_ok=True)
            summary = {k: v for r in rows for k, v in r.items()}
        else:
            summary = run_pretrain(cfg, run, resume=resume, progress=self.progress)
        info = json.loads((run / "run.json").read_text())
        rows = read_metrics(run, missing_ok=True)
        return {"run": self._rel(run), "params": info["params"], "step": summary.get("step"),
                "val_loss": summary.get("val_loss"), "val_bpb": summary.get("val_bpb"),
                "train_tokens": info["data"]["train_tokens"],  # the corpus's training split, in tokens
                # positions the model was trained on (steps x sequences x window; meta-tokens take positions too)
                "positions": (summary.get("step") or 0) * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size,
                "curve": {"train": [[r["step"], r["train_loss"]] for r in rows if "train_loss" in r],
                          "val": [[r["step"], r["val_loss"]] for r in rows if "val_loss" in r]}}

    def _finetune(self, m: str, sv: int, lr: float, folder: Path, resume: bool,
                  inputs: dict[str, StageRecord]) -> dict[str, Any]:
        sc, ms = self.scale, self.scale.models[m]
        spec = TaskSpec(task=",".join(sc.tasks), weights=list(sc.ft_weights), max_len=sc.ft_len, difficulty=sc.difficulty,
                        seed=sv, eval_n=sc.ft_curve_n, meta="on" if ms.meta else "off")
        train = make_train_config(max_steps=sc.ft_steps, batch_size=sc.ft_batch, lr=lr, min_lr=lr * sc.ft_min_lr_ratio,
                                  warmup_steps=min(sc.ft_warmup, sc.ft_steps),
                                  eval_interval=max(1, sc.ft_steps // sc.ft_curve_points),
                                  ckpt_interval=max(1, sc.ft_steps // 4), seed=sv, device=self.device, dtype=self._dtype(),
                                  log_interval=max(1, sc.ft_steps // 40))
        run = folder / "run"
        source = next(iter(inputs.values()), None)  # the pre-training, or the one whose tokenizer it takes
        if ms.pretrained:
            kwargs: dict[str, Any] = {"init": None if resume else str(self.run_path(source))}
        else:
            model_overrides = [o for o in (*self.scale.pretrain_overrides, *ms.overrides) if o.startswith("model.")]
            kwargs = {"from_scratch": None if resume else ms.preset, "model_overrides": None if resume else model_overrides,
                      "tokenizer_path": None if source is None else str(self.run_path(source) / "tokenizer.json")}
        summary = run_finetune(spec, train, run, resume=resume, progress=self.progress, **kwargs)
        return self._finetune_record(run, summary, sc.tasks)

    def _finetune_record(self, run: Path, summary: dict[str, Any], tasks) -> dict[str, Any]:
        """What a fine-tuning stage keeps: its dev-prompt learning curves, its training loss, and the record of
        the prompts it trained on (how many, how many distinct, and how many of them fall in the test or dev
        split: none may)."""
        info = json.loads((run / "run.json").read_text())
        rows = read_metrics(run, missing_ok=True)
        # a mixture logs each task's curve under "<metric>/<task>"; a run of one task logs it plain
        suffix = {task: f"/{task}" if len(tasks) > 1 else "" for task in tasks}
        curves = {task: [[r["step"], r[f"val_exact_match{x}"], r[f"val_token_accuracy{x}"], r[f"val_loss{x}"]]
                         for r in rows if f"val_exact_match{x}" in r] for task, x in suffix.items()}
        return {"run": self._rel(run), "params": info["params"], "train_loss": summary.get("train_loss"),
                "step": summary.get("step"), "curves": curves,
                "training_prompts": info.get("training_prompts"),  # run_finetune writes it into run.json
                "train_curve": [[r["step"], r["train_loss"]] for r in rows if "train_loss" in r]}

    def _rel(self, path: Path) -> str:
        """A run folder as stage results keep it: relative to the study folder, so that committed
        stage results name no machine's paths."""
        return str(Path(os.path.relpath(path, self.out)))

    def run_path(self, rec: StageRecord) -> Path:
        return self.out / rec.result["run"]

    def _device(self) -> str:
        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device

    def _dtype(self) -> str:
        """The precision every training stage asks for: fp32 on a CPU, even one with AMX tiles, where
        `train.dtype=auto` now picks bf16 (issue 31): bf16 is not measured against the study's numbers
        yet, and the committed seeds trained in fp32. Elsewhere auto (bf16 on a CUDA device with native
        bf16). This is what auto meant when those seeds ran, so a stage key holds it as "auto"."""
        return "fp32" if self._device() == "cpu" else "auto"

    def _evaluate(self, m: str, sv: int, folder: Path, source: StageRecord, split: str, lengths: list[int],
                  test_time_yarn: float | None) -> dict[str, Any]:
        sc, ms = self.scale, self.scale.models[m]
        loaded = load_model(self.run_path(source), device=self._device())
        loaded.name = ms.label
        variants = [("prompts", "on" if ms.meta else "off")] + ([("no_meta", "off")] if ms.meta else [])
        out: dict[str, Any] = {}
        for task in sc.tasks:
            for variant, meta in variants:
                result = evaluate_task([loaded], task, lengths, n=sc.eval_n, seed=sv, difficulty=sc.difficulty,
                                       meta=meta, skip_unfit=True, split=split, device=self._device(),
                                       progress=self.progress)
                if variant == "prompts":
                    write_report(result, folder, stem=task)
                _keep(out, result, task, variant)
        yarn_len = [4 * sc.ft_len] if test_time_yarn is not None else []
        out["baselines"] = self._baselines(loaded.tokenizer, sc.tasks, lengths + yarn_len, sv, split)
        if test_time_yarn is not None:  # exploratory: YaRN switched on at test time only, beyond the window
            if test_time_yarn > 1:
                apply_yarn(loaded.model, test_time_yarn)
            out["yarn_scale"] = test_time_yarn
            for task in sc.tasks:
                result = evaluate_task([loaded], task, yarn_len, n=sc.eval_n, seed=sv, difficulty=sc.difficulty,
                                       meta="on" if ms.meta else "off", split=split, device=self._device(),
                                       progress=self.progress)
                _keep(out, result, task, "prompts", "+yarn")
        return out

    def _baselines(self, tokenizer, tasks, lengths: list[int], sv: int, split: str) -> dict[str, Any]:
        """The majority and chance answers' exact match on the very prompts the models are scored on."""
        return {task: {str(n): answer_baselines(make_examples(task, tokenizer, length=n, difficulty=self.scale.difficulty,
                                                              n=self.scale.eval_n, seed=sv, split=split))
                       for n in lengths} for task in tasks}

    def _yarn(self, m: str, sv: int, folder: Path, resume: bool, source: StageRecord, split: str) -> dict[str, Any]:
        """The paper's YaRN protocol: YaRN on at scale s, fine-tuned at L_y past the pre-training window (from
        the model fine-tuned at L), then tested at L_y and 2 L_y, inside the YaRN window."""
        sc, ms, y = self.scale, self.scale.models[m], self.scale.yarn
        spec = TaskSpec(task=",".join(y.tasks), weights=list(y.weights), max_len=y.length, difficulty=sc.difficulty,
                        seed=sv, eval_n=sc.ft_curve_n, meta="on" if ms.meta else "off", yarn_scale=y.scale)
        train = make_train_config(max_steps=y.steps, batch_size=y.batch, lr=y.lr, min_lr=y.lr * sc.ft_min_lr_ratio,
                                  warmup_steps=min(y.warmup, y.steps), eval_interval=max(1, y.steps // 4),
                                  ckpt_interval=max(1, y.steps // 2), seed=sv, device=self.device, dtype=self._dtype(),
                                  log_interval=max(1, y.steps // 20))
        run = folder / "run"
        summary = run_finetune(spec, train, run, resume=resume, progress=self.progress,
                               init=None if resume else str(self.run_path(source)))
        loaded = load_model(run, device=self._device())
        loaded.name = ms.label + " + YaRN"
        lengths = [y.length, 2 * y.length]
        out: dict[str, Any] = {"finetune": self._finetune_record(run, summary, y.tasks), "yarn_scale": y.scale,
                               "window": loaded.model.config.block_size}
        for task in y.tasks:
            result = evaluate_task([loaded], task, lengths, n=sc.eval_n, seed=sv, difficulty=sc.difficulty,
                                   meta="on" if ms.meta else "off", skip_unfit=True, split=split,
                                   device=self._device(), progress=self.progress)
            write_report(result, folder, stem=task)
            _keep(out, result, task, "prompts")
        out["baselines"] = self._baselines(loaded.tokenizer, y.tasks, lengths, sv, split)
        return out

    def _window(self, arm: str, window: int | None, sv: int, folder: Path, resume: bool,
                source: StageRecord) -> dict[str, Any]:
        """One arm of the memory measurement (design.MEMORY_ARMS): continue a fine-tuned model with its arm's
        window, sinks and prompts, then score it on the test prompts of each task at L (the full-attention arm
        also with each window switched on at test time). Kept per prompt beside the scores: how far before the
        answer the queried list or span ends (`gap`, tokens of the prompt without meta-tokens), and how many
        K/V entries per layer a bounded cache holds when the answer starts (`kv`)."""
        sc, mp, L = self.scale, self.scale.memory, self.scale.ft_len
        meta, sinks = MEMORY_ARMS[arm][2], mp.sinks if MEMORY_ARMS[arm][4] else 0
        spec = TaskSpec(task=",".join(mp.tasks), weights=list(mp.weights), max_len=L, difficulty=sc.difficulty,
                        seed=sv, eval_n=sc.ft_curve_n, meta="on" if meta else "off")
        train = make_train_config(max_steps=mp.steps, batch_size=mp.batch, lr=mp.lr, min_lr=mp.lr * sc.ft_min_lr_ratio,
                                  warmup_steps=min(mp.warmup, mp.steps),
                                  eval_interval=max(1, mp.steps // sc.ft_curve_points),
                                  ckpt_interval=max(1, mp.steps // 4), seed=sv, device=self.device, dtype=self._dtype(),
                                  log_interval=max(1, mp.steps // 40))
        overrides = ([f"model.attn_window={window}"] if window else []) + ([f"model.attn_sinks={sinks}"] if sinks else [])
        run = folder / "run"
        summary = run_finetune(spec, train, run, resume=resume, progress=self.progress,
                               init=None if resume else str(self.run_path(source)),
                               model_overrides=None if resume else overrides)
        loaded = load_model(run, self._device())
        cfg = loaded.model.config
        if (cfg.attn_window, cfg.attn_sinks) != (window, sinks):  # what was trained is what is tested
            raise RuntimeError(f"{run}: trained with window {cfg.attn_window} and {cfg.attn_sinks} sinks, "
                               f"expected {window} and {sinks}")
        out: dict[str, Any] = {"finetune": self._finetune_record(run, summary, mp.tasks), "arm": arm,
                               "window": window, "sinks": sinks, "meta": meta, "gap": {}, "kv": {}}
        tested = [None] + (list(mp.windows) if arm == "full" else [])
        for task in mp.tasks:
            with_meta = make_examples(task, loaded.tokenizer, length=L, difficulty=sc.difficulty, n=mp.eval_n,
                                      seed=sv, split="test", meta=True)
            scored = with_meta if meta else make_examples(task, loaded.tokenizer, length=L, difficulty=sc.difficulty,
                                                          n=mp.eval_n, seed=sv, split="test", meta=False)
            out["gap"][task] = [answer_gap(e) for e in with_meta]
            for w in tested:  # None: as trained; W: the full-attention arm with the window at test time (d)
                if w is not None:
                    apply_settings(loaded, {"attn_window": w})
                result = evaluate_task([loaded], task, [L], n=mp.eval_n, seed=sv, difficulty=sc.difficulty,
                                       meta="on" if meta else "off", split="test", device=self._device(),
                                       progress=self.progress)
                _keep(out, result, task, "prompts" if w is None else f"test-time-w{w}")
                if w is None:  # the floors of these prompts: the same whatever the window
                    out.setdefault("baselines", {})[task] = result["models"][0]["results"][0]["baselines"]
                held = window if w is None else w
                out["kv"].setdefault(task, {})["prompts" if w is None else f"test-time-w{w}"] = [
                    kv_entries(e, held, sinks) for e in scored]
            apply_settings(loaded, {"attn_window": window})
        return out

    def _ablate(self, m: str, sv: int, folder: Path, inputs: dict[str, StageRecord]) -> dict[str, Any]:
        model, tok, _ = load_for_analysis(self.run_path(inputs[f"finetune-{m}"]), self._device())
        result = ablation_study(model, tok, list(self.scale.tasks), [self.scale.ft_len], n=self.scale.eval_n, seed=sv,
                                difficulty=self.scale.difficulty, progress=self.progress)
        write_json(folder / "ablate.json", result)
        atomic_write_text(folder / "ablate.md", markdown_table(result))
        plot_ablation(result, folder / "ablate.png", title=f"{self.scale.models[m].label}: ablations at meta positions")
        return {row["task"]: {name: {**{k: row[name].get(k) for k in EVAL_METRICS},
                                     "exact_per_example": row[name]["exact_per_example"]}
                              for name in result["variants"]} for row in result["rows"]}

    def _analyze(self, analysis: str, sv: int, folder: Path, inputs: dict[str, StageRecord]) -> dict[str, Any]:
        sc = self.scale
        model, tok, _ = load_for_analysis(self.run_path(inputs["finetune-meta-rope"]), self._device())

        def examples(n: int, split: str = "test"):
            return make_examples("list_recall", tok, length=sc.ft_len, difficulty=sc.difficulty, n=n, seed=sv,
                                 split=split)

        if analysis == "entropy":
            result = an.entropy_analysis(model, examples(sc.analysis_n), progress=self.progress)
            an.plot_entropy(result, folder / "entropy.png", title="Meta+RoPE, List Recall")
            headline = {k: result.get(k) for k in ("entropy_difference", "entropy_difference_nearby", "max_logit_boost",
                                                    "entropy_meta", "entropy_non_meta")}
        elif analysis == "residual":
            result = an.residual_analysis(model, tok, examples(sc.analysis_n), progress=self.progress)
            an.plot_residual(result, folder / "residual.png", title="Meta+RoPE, List Recall")
            headline = {k: result.get(k) for k in ("layers", "distance_bins", "cosine_meta_binned",
                                                    "cosine_control_binned", "near_far")}
        else:
            result = an.rate_distortion_analysis(model, examples(sc.analysis_n, "train"), examples(sc.analysis_n),
                                                 epochs=sc.rd_epochs, seed=sv, progress=self.progress)
            an.plot_rate_distortion(result, folder / "rate_distortion.png", title="VIB probe, Meta+RoPE, List Recall")
            headline = {k: result.get(k) for k in ("no_information_train", "no_information_test", "n_train", "n_test",
                                                    "n_classes", "learned")}
            # the curves without their per-example lists (those stay in rate-distortion.json)
            headline["curves"] = {name: [{k: v for k, v in point.items() if not k.endswith("per_example")}
                                         for point in points] for name, points in result["curves"].items()}
        write_json(folder / f"{analysis}.json", result)
        return headline


def _keep(out: dict[str, Any], result: dict[str, Any], task: str, variant: str, suffix: str = "") -> None:
    """Store one evaluation's cells under out[task][variant][length + suffix] (None where skipped)."""
    for r in result["models"][0]["results"]:
        cell = out.setdefault(task, {}).setdefault(variant, {})
        cell[f"{r['length']}{suffix}"] = None if r.get("skipped") else {
            **{k: r.get(k) for k in EVAL_METRICS}, "n": r["n"], "exact_per_example": r["exact_per_example"],
            "prompts": r["prompts_sha256"]}


def answer_gap(example) -> int:
    """How far before the answer the queried list or span ends, in tokens of the prompt without meta-tokens:
    the prompt's length minus the index of the span's last token (the one before the last meta-token). The
    query that predicts the answer's first token sees that token through a window of W iff gap <= W."""
    last = max(example.meta_positions)
    text_before = len(example.prompt_ids) - len(example.meta_positions)  # the prompt without meta-tokens
    return text_before - (last - 1 - (len(example.meta_positions) - 1))


def kv_entries(example, window: int | None, sinks: int = 0) -> int:
    """K/V entries per layer that a cache holds once the prompt is read: every position with full attention;
    with a window, the last W - 1 positions and, before them, every meta-token and the first `sinks` positions
    (model.window's bounded cache)."""
    n = len(example.prompt_ids)
    if window is None:
        return n
    recent = min(n, window - 1)
    meta = set(example.meta_positions)
    return recent + sum(1 for j in range(n - recent) if j in meta or j < sinks)
