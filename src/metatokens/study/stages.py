"""The study's stages: their records (`StageSpec`, `StageRecord`), the plan of one seed, and what each
stage does. Pre-training and fine-tuning go through `run_pretrain` / `run_finetune` (and so the run
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
from ..evaluation.loading import load_model
from ..evaluation.report import write_report
from ..evaluation.scoring import answer_baselines
from ..evaluation.tasks import evaluate_task
from ..fileio import atomic_write_text, json_sha256
from ..model.yarn import apply_yarn
from ..runs.folder import read_metrics
from ..tasks.registry import make_examples
from ..training.config import load_run_config
from ..training.finetune import make_train_config, run_finetune
from ..training.pretrain import run_pretrain
from ..training.task_batches import TaskSpec
from .design import EVAL_METRICS, PAPER_MODELS, RESULT_FORMAT


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
    """What each stage of the study does (pre-train, fine-tune, evaluate, ablate, analyse) and the plan
    of one seed's stages; `runner.Pipeline` schedules them, caches their results and writes the report.
    Uses the pipeline's `out`, `scale`, `device`, `progress`, `seeds` and `log`."""

    def plan(self, seed: int) -> list[StageSpec]:
        """Every stage of one seed, in an order that starts the long ones first; keys filled in."""
        sc, L = self.scale, self.scale.ft_len
        models = sc.models
        specs: list[StageSpec] = []
        windows: dict[str, int] = {}
        positions: dict[str, str] = {}
        for m, ms in models.items():
            overrides = [*sc.pretrain_overrides, *ms.overrides, f"train.seed={1337 + seed}", f"train.device={self.device}"]
            cfg = load_run_config(ms.preset, overrides)
            windows[m], positions[m] = cfg.model.block_size, cfg.model.pos_encoding
            if not ms.pretrained:
                continue
            command = (f"metatokens pretrain --config {ms.preset} --out stages/seed{seed}/pretrain-{m}/run "
                       + " ".join(f"--set {o}" for o in overrides))
            settings = cfg.to_dict()
            settings["train"]["device"] = "auto"  # where a stage runs does not change what it measures
            specs.append(StageSpec(seed, f"pretrain-{m}", settings, [], command,
                                   lambda f, r, inp, cfg=cfg: self._pretrain(cfg, f, r)))
        tokenizer_from = next(m for m, ms in models.items() if ms.pretrained and ms.meta)
        fine = [m for m in models if not models[m].pretrained] + [m for m in models if models[m].pretrained]
        for m in fine:
            ms = models[m]
            settings = {"tasks": list(sc.tasks), "weights": list(sc.ft_weights), "len": L, "steps": sc.ft_steps,
                        "batch": sc.ft_batch, "lr": sc.ft_lr, "min_lr_ratio": sc.ft_min_lr_ratio, "warmup": sc.ft_warmup,
                        "curve": [sc.ft_curve_points, sc.ft_curve_n], "seed": seed, "difficulty": sc.difficulty,
                        "meta": ms.meta}
            inputs = [f"pretrain-{m}"] if ms.pretrained else [f"pretrain-{tokenizer_from}"]
            if not ms.pretrained:
                settings["from_scratch"] = {"preset": ms.preset, "overrides": [*sc.pretrain_overrides, *ms.overrides]}
            source = (f"--init stages/seed{seed}/pretrain-{m}/run" if ms.pretrained else
                      f"--from-scratch {ms.preset} --tokenizer stages/seed{seed}/pretrain-{tokenizer_from}/run/tokenizer.json"
                      + "".join(f" --set {o}" for o in [*sc.pretrain_overrides, *ms.overrides] if o.startswith("model.")))
            command = (f"metatokens finetune {source} --task {','.join(sc.tasks)} "
                       f"--task-weights {','.join(map(str, sc.ft_weights))} --max-len {L} --difficulty {sc.difficulty} "
                       f"--meta {'on' if ms.meta else 'off'} --steps {sc.ft_steps} --batch-size {sc.ft_batch} "
                       f"--lr {sc.ft_lr:g} --seed {seed} --out stages/seed{seed}/finetune-{m}/run")
            specs.append(StageSpec(seed, f"finetune-{m}", settings, inputs, command,
                                   lambda f, r, inp, m=m: self._finetune(m, seed, f, r, inp)))
        for m, ms in models.items():
            rope = positions[m] == "rope"
            lengths = [L, 2 * L]
            yarn = 4 * L / windows[m] if rope else None
            settings = {"lengths": lengths, "n": sc.eval_n, "seed": seed, "yarn_len": 4 * L if rope else None,
                        "no_meta": ms.meta, "difficulty": sc.difficulty, "format": RESULT_FORMAT}
            run = f"stages/seed{seed}/finetune-{m}/run"
            command = (f"metatokens evaluate --checkpoint {run} --task T --lengths {L},{2 * L} --n {sc.eval_n} "
                       f"--seed {seed} --skip-unfit, for each task T"
                       + ("; and --meta off" if ms.meta else "")
                       + (f"; and --lengths {4 * L} --yarn-scale {yarn:g}" if rope else ""))
            specs.append(StageSpec(seed, f"evaluate-{m}", settings, [f"finetune-{m}"], command,
                                   lambda f, r, inp, m=m, yarn=yarn: self._evaluate(m, seed, f, inp, yarn)))
        for m in PAPER_MODELS:
            if m in models and models[m].meta:
                settings = {"length": L, "n": sc.eval_n, "seed": seed, "difficulty": sc.difficulty, "format": RESULT_FORMAT}
                command = (f"metatokens analyze ablate --checkpoint stages/seed{seed}/finetune-{m}/run "
                           f"--task {','.join(sc.tasks)} --lengths {L} --n {sc.eval_n} --seed {seed}")
                specs.append(StageSpec(seed, f"ablate-{m}", settings, [f"finetune-{m}"], command,
                                       lambda f, r, inp, m=m: self._ablate(m, seed, f, inp)))
        for analysis in ("entropy", "residual", "rate-distortion"):
            settings = {"analysis": analysis, "length": L, "n": sc.analysis_n, "seed": seed, "epochs": sc.rd_epochs,
                        "format": RESULT_FORMAT}
            command = (f"metatokens analyze {analysis} --checkpoint stages/seed{seed}/finetune-meta-rope/run "
                       f"--task list_recall --length {L} --n {sc.analysis_n} --seed {seed}")
            specs.append(StageSpec(seed, f"analyze-{analysis}", settings, ["finetune-meta-rope"], command,
                                   lambda f, r, inp, a=analysis: self._analyze(a, seed, f, inp)))
        keys: dict[str, str] = {}
        for spec in specs:
            spec.key = json_sha256({"settings": spec.settings, "inputs": [keys[i] for i in spec.inputs]})[:16]
            keys[spec.name] = spec.key
        return specs

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
                "train_tokens": info["data"]["train_tokens"],
                "curve": {"train": [[r["step"], r["train_loss"]] for r in rows if "train_loss" in r],
                          "val": [[r["step"], r["val_loss"]] for r in rows if "val_loss" in r]}}

    def _finetune(self, m: str, seed: int, folder: Path, resume: bool, inputs: dict[str, StageRecord]) -> dict[str, Any]:
        sc, ms = self.scale, self.scale.models[m]
        spec = TaskSpec(task=",".join(sc.tasks), weights=list(sc.ft_weights), max_len=sc.ft_len, difficulty=sc.difficulty,
                        seed=seed, eval_n=sc.ft_curve_n, meta="on" if ms.meta else "off")
        every = max(1, sc.ft_steps // sc.ft_curve_points)
        train = make_train_config(max_steps=sc.ft_steps, batch_size=sc.ft_batch, lr=sc.ft_lr,
                                  min_lr=sc.ft_lr * sc.ft_min_lr_ratio, warmup_steps=min(sc.ft_warmup, sc.ft_steps),
                                  eval_interval=every, ckpt_interval=max(1, sc.ft_steps // 4), seed=seed,
                                  device=self.device, log_interval=max(1, sc.ft_steps // 40))
        run = folder / "run"
        (source,) = inputs.values()
        if ms.pretrained:
            kwargs: dict[str, Any] = {"init": None if resume else str(self.run_path(source))}
        else:
            model_overrides = [o for o in (*self.scale.pretrain_overrides, *ms.overrides) if o.startswith("model.")]
            kwargs = {"from_scratch": None if resume else ms.preset, "model_overrides": None if resume else model_overrides,
                      "tokenizer_path": str(self.run_path(source) / "tokenizer.json")}
        summary = run_finetune(spec, train, run, resume=resume, progress=self.progress, **kwargs)
        info = json.loads((run / "run.json").read_text())
        rows = read_metrics(run, missing_ok=True)
        curves = {task: [[r["step"], r[f"val_exact_match/{task}"], r[f"val_token_accuracy/{task}"], r[f"val_loss/{task}"]]
                         for r in rows if f"val_exact_match/{task}" in r] for task in sc.tasks}
        return {"run": self._rel(run), "params": info["params"], "train_loss": summary.get("train_loss"),
                "step": summary.get("step"), "curves": curves,
                "train_curve": [[r["step"], r["train_loss"]] for r in rows if "train_loss" in r]}

    def _rel(self, path: Path) -> str:
        """A run folder as stage results keep it: relative to the study folder, so that committed
        stage results name no machine's paths."""
        return str(Path(os.path.relpath(path, self.out)))

    def run_path(self, rec: StageRecord) -> Path:
        return self.out / rec.result["run"]

    def _device(self) -> str:
        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device

    def _evaluate(self, m: str, seed: int, folder: Path, inputs: dict[str, StageRecord],
                  yarn: float | None) -> dict[str, Any]:

        sc, ms, L = self.scale, self.scale.models[m], self.scale.ft_len
        loaded = load_model(self.run_path(inputs[f"finetune-{m}"]), device=self._device())
        loaded.name = ms.label
        variants = [("prompts", "on" if ms.meta else "off")] + ([("no_meta", "off")] if ms.meta else [])
        out: dict[str, Any] = {}

        def keep(result: dict[str, Any], task: str, variant: str, suffix: str = "") -> None:
            for r in result["models"][0]["results"]:
                cell = out.setdefault(task, {}).setdefault(variant, {})
                cell[f"{r['length']}{suffix}"] = None if r.get("skipped") else {
                    **{k: r.get(k) for k in EVAL_METRICS}, "n": r["n"], "exact_per_example": r["exact_per_example"],
                    "prompts": r["prompts_sha256"]}

        for task in sc.tasks:
            for variant, meta in variants:
                result = evaluate_task([loaded], task, [L, 2 * L], n=sc.eval_n, seed=seed, difficulty=sc.difficulty,
                                       meta=meta, skip_unfit=True, device=self._device(), progress=self.progress)
                if variant == "prompts":
                    write_report(result, folder, stem=task)
                keep(result, task, variant)

        lengths = [L, 2 * L] + ([4 * L] if yarn is not None else [])
        out["baselines"] = {task: {str(n): answer_baselines(make_examples(
            task, loaded.tokenizer, length=n, difficulty=sc.difficulty, n=sc.eval_n, seed=seed, split="test"))
            for n in lengths} for task in sc.tasks}
        if yarn is not None:  # beyond the pre-training window: YaRN, applied once, in place
            if yarn > 1:
                apply_yarn(loaded.model, yarn)
            out["yarn_scale"] = yarn
            for task in sc.tasks:
                result = evaluate_task([loaded], task, [4 * L], n=sc.eval_n, seed=seed, difficulty=sc.difficulty,
                                       meta="on" if ms.meta else "off", device=self._device(), progress=self.progress)
                keep(result, task, "prompts", "+yarn")
        return out

    def _ablate(self, m: str, seed: int, folder: Path, inputs: dict[str, StageRecord]) -> dict[str, Any]:
        model, tok, _ = load_for_analysis(self.run_path(inputs[f"finetune-{m}"]), self._device())
        result = ablation_study(model, tok, list(self.scale.tasks), [self.scale.ft_len], n=self.scale.eval_n, seed=seed,
                                difficulty=self.scale.difficulty, progress=self.progress)
        write_json(folder / "ablate.json", result)
        atomic_write_text(folder / "ablate.md", markdown_table(result))
        plot_ablation(result, folder / "ablate.png", title=f"{self.scale.models[m].label}: ablations at meta positions")
        return {row["task"]: {name: {**{k: row[name].get(k) for k in EVAL_METRICS},
                                     "exact_per_example": row[name]["exact_per_example"]}
                              for name in result["variants"]} for row in result["rows"]}

    def _analyze(self, analysis: str, seed: int, folder: Path, inputs: dict[str, StageRecord]) -> dict[str, Any]:
        sc = self.scale
        model, tok, _ = load_for_analysis(self.run_path(inputs["finetune-meta-rope"]), self._device())

        def examples(n: int, split: str = "test"):
            return make_examples("list_recall", tok, length=sc.ft_len, difficulty=sc.difficulty, n=n, seed=seed,
                                 split=split)

        if analysis == "entropy":
            result = an.entropy_analysis(model, examples(sc.analysis_n), progress=self.progress)
            an.plot_entropy(result, folder / "entropy.png", title="Meta+RoPE, List Recall")
            headline = {k: result.get(k) for k in ("entropy_difference", "entropy_difference_nearby", "max_logit_boost",
                                                    "entropy_meta", "entropy_non_meta")}
        elif analysis == "residual":
            result = an.residual_analysis(model, tok, examples(sc.analysis_n), progress=self.progress)
            an.plot_residual(result, folder / "residual.png", title="Meta+RoPE, List Recall")
            headline = {k: result[k] for k in ("layers", "distance_bins", "cosine_meta_binned", "cosine_control_binned")}
        else:
            result = an.rate_distortion_analysis(model, examples(sc.analysis_n, "train"), examples(sc.analysis_n),
                                                 epochs=sc.rd_epochs, seed=seed, progress=self.progress)
            an.plot_rate_distortion(result, folder / "rate_distortion.png", title="VIB probe, Meta+RoPE, List Recall")
            headline = {k: result.get(k) for k in ("curves", "no_information_train", "no_information_test",
                                                    "n_train", "n_test", "n_classes")}
        write_json(folder / f"{analysis}.json", result)
        return headline
