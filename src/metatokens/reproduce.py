"""`metatokens reproduce`: the whole study, from corpus to REPORT.md beside the paper's numbers.

Stages (per seed): pre-train three models (GPT-2 with APE and no meta-tokens, Meta+APE,
Meta+RoPE); fine-tune each on the four tasks at length L; evaluate at L and 2L (and at 4L with
YaRN for RoPE, beyond the pre-training window); ablations at meta positions; attention entropy,
residual-stream caching and rate-distortion on List Recall; then the report.

Every stage is cached in OUT/stages/<seed>/<name>/stage.json with a key hashed from its settings
and from its inputs' keys: a re-run skips finished stages, continues an interrupted training
stage from its last checkpoint, and re-runs only what a changed setting reaches.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .fileio import atomic_write_text, json_sha256

MODELS = {  # name -> (label in the report, pre-training preset family)
    "gpt2": "GPT-2 (APE, no meta)",
    "meta-ape": "Meta+APE",
    "meta-rope": "Meta+RoPE",
}
TASKS = ("list_recall", "segment_counting", "parity", "copying")

# SPEC section 6: fine-tuned at 512, evaluated at 512 (Fig. 1); None where the paper gives no number.
PAPER_ACCURACY = {
    "list_recall": {"gpt2": 3.6, "meta-ape": 98.7, "meta-rope": 99.3, "gpt-neo": 49.2},
    "segment_counting": {"gpt2": None, "meta-ape": None, "meta-rope": None, "gpt-neo": None},
    "parity": {"gpt2": 60.0, "meta-ape": 100.0, "meta-rope": 100.0, "gpt-neo": 64.8},
    "copying": {"gpt2": 7.8, "meta-ape": 98.5, "meta-rope": 98.9, "gpt-neo": 16.9},
}
PAPER_LENGTH_GAIN = {"gpt2": 3.5, "meta-ape": 28.6, "meta-rope": 10.7}  # train 256 -> eval 512, points
PAPER_ENTROPY_DIFF, PAPER_LOGIT_BOOST = 1.40, 1.26  # SPEC section 7
PAPER_ABLATION = "zeroing the meta positional encoding: +11 to +39 points on List Recall; zeroing the meta embedding hurts badly"


@dataclass
class Scale:
    """Sizes of one study. Presets per model; overrides apply to all pre-training runs."""

    presets: dict[str, str]
    pretrain_overrides: list[str]
    ft_len: int  # fine-tuning prompt length L (evaluated at L, 2L, and 4L with YaRN for RoPE); 2L plus the
    # answer must fit the pre-training window, so that APE models can be read at 2L too
    ft_steps: int
    ft_batch: int
    ft_lr: float
    eval_n: int
    analysis_n: int
    rd_epochs: int
    difficulty: str = "medium"
    budget: str = ""  # what the scale is meant to take, for the report


TINY_PRESETS = {"gpt2": "tiny-baseline", "meta-ape": "tiny-ape", "meta-rope": "tiny"}
# What the evaluate and ablate stages keep of each measurement. Exact match is the paper's metric; token
# accuracy and answer loss (nats per answer token) still separate models that are all at the exact-match floor.
EVAL_METRICS = ("exact_match", "token_accuracy", "answer_loss")
RESULT_FORMAT = 3  # part of those stages' cache keys: bump when their stage.json results change shape

SCALES: dict[str, Scale] = {
    # only for tests: seconds
    "toy": Scale(TINY_PRESETS, ["model.base=toy", "model.block_size=256", "data.vocab_size=1024",
                                "data.max_documents=120", "train.max_steps=6", "train.batch_size=4",
                                "train.eval_interval=0", "train.eval_batches=2", "train.ckpt_interval=0"],
                 ft_len=120, ft_steps=4, ft_batch=4, ft_lr=1e-3, eval_n=4, analysis_n=4, rd_epochs=1,
                 budget="under a minute"),
    "demo": Scale(TINY_PRESETS, ["model.block_size=256", "model.n_layer=2", "train.max_steps=200",
                                 "train.eval_interval=0", "train.ckpt_interval=100"],
                  ft_len=120, ft_steps=30, ft_batch=8, ft_lr=1e-3, eval_n=24, analysis_n=16, rd_epochs=3,
                  budget="10 minutes on 2 CPU cores"),
    "tiny": Scale(TINY_PRESETS, ["train.max_steps=700", "train.eval_interval=350", "train.ckpt_interval=350"],
                  ft_len=120, ft_steps=400, ft_batch=16, ft_lr=1e-3, eval_n=100, analysis_n=50, rd_epochs=5,
                  budget="45 minutes on 2 CPU cores"),
    "small": Scale(TINY_PRESETS, ["model.base=small", "data.vocab_size=8192", "train.max_steps=5000",
                                  "train.batch_size=32", "train.eval_interval=500", "train.ckpt_interval=1000"],
                   ft_len=240, ft_steps=1500, ft_batch=32, ft_lr=5e-4, eval_n=500, analysis_n=50, rd_epochs=5,
                   budget="hours on one GPU"),
    "paper": Scale({"gpt2": "gpt2-small", "meta-ape": "gpt2-small-meta-ape", "meta-rope": "gpt2-small-meta"}, [],
                   ft_len=480, ft_steps=5000, ft_batch=16, ft_lr=1e-4, eval_n=1000, analysis_n=50, rd_epochs=5,
                   budget="days on 4 A100s (SPEC section 4)"),
}


@dataclass
class StageRecord:
    name: str
    key: str
    result: dict[str, Any]
    wall_s: float
    command: str
    cached: bool = False


@dataclass
class Pipeline:
    out: Path
    scale_name: str
    seeds: int = 1
    device: str = "auto"
    progress: bool = True
    records: list[StageRecord] = field(default_factory=list)
    log: Callable[[str], None] = print

    @property
    def scale(self) -> Scale:
        return SCALES[self.scale_name]

    # ------------------------------------------------------------------------- stage cache

    def stage(self, seed: int, name: str, settings: dict, inputs: list[StageRecord], command: str,
              fn: Callable[[Path, bool], dict[str, Any]], index: tuple[int, int]) -> StageRecord:
        """Run `fn(folder, resume)` unless a finished stage with the same key exists."""
        key = json_sha256({"settings": settings, "inputs": [r.key for r in inputs]})[:16]
        folder = self.out / "stages" / f"seed{seed}" / name
        marker = folder / "stage.json"
        label = f"[{index[0]}/{index[1]}] seed {seed} {name}"
        if marker.is_file():
            saved = json.loads(marker.read_text())
            if saved.get("key") == key:
                self.log(f"{label}: cached ({saved['wall_s']:.0f} s when run)")
                rec = StageRecord(f"seed{seed}/{name}", key, saved["result"], saved["wall_s"], command, cached=True)
                self.records.append(rec)
                return rec
        resume = False
        if folder.exists():
            previous = folder / "key"
            if previous.is_file() and previous.read_text().strip() == key:
                resume = (folder / "run" / "checkpoints" / "LATEST").is_file()  # interrupted: continue
            else:
                shutil.rmtree(folder)  # settings changed: start over
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "key", key + "\n")
        self.log(f"{label}: {'resuming' if resume else 'running'}: {command}")
        t0 = time.perf_counter()
        result = fn(folder, resume)
        wall = time.perf_counter() - t0
        atomic_write_text(marker, json.dumps({"key": key, "settings": settings, "result": result, "wall_s": wall,
                                              "command": command}, indent=1, default=str) + "\n")
        self.log(f"{label}: done in {wall:.0f} s")
        rec = StageRecord(f"seed{seed}/{name}", key, result, wall, command)
        self.records.append(rec)
        return rec

    # ------------------------------------------------------------------------- the study

    def run(self) -> Path:
        from .runconfig import load_run_config

        sc = self.scale
        per_seed = len(MODELS) * (1 + 2 * len(TASKS)) + 2 * len(TASKS) + 3
        total, i = per_seed * self.seeds, 0
        results: list[dict[str, Any]] = []
        for seed in range(self.seeds):
            res: dict[str, Any] = {"pretrain": {}, "eval": {}, "ablate": {}, "analysis": {}}
            pre: dict[str, StageRecord] = {}
            windows: dict[str, int] = {}
            for m in MODELS:
                overrides = [*sc.pretrain_overrides, f"train.seed={1337 + seed}", f"train.device={self.device}"]
                cfg = load_run_config(sc.presets[m], overrides)
                windows[m] = cfg.model.block_size
                i += 1
                command = (f"metatokens pretrain --config {sc.presets[m]} --out {{stage}}/run "
                           + " ".join(f"--set {o}" for o in overrides))
                pre[m] = self.stage(seed, f"pretrain-{m}", cfg.to_dict(), [], command,
                                    lambda f, r, cfg=cfg: self._pretrain(cfg, f, r), (i, total))
                res["pretrain"][m] = pre[m].result
            for task in TASKS:
                fts: dict[str, StageRecord] = {}
                for m in MODELS:
                    i += 1
                    settings = {"task": task, "len": sc.ft_len, "steps": sc.ft_steps, "batch": sc.ft_batch,
                                "lr": sc.ft_lr, "seed": seed, "difficulty": sc.difficulty}
                    command = (f"metatokens finetune --init {{pretrain-{m}}}/run --task {task} --max-len {sc.ft_len} "
                               f"--steps {sc.ft_steps} --batch-size {sc.ft_batch} --lr {sc.ft_lr} --seed {seed} "
                               f"--out {{stage}}/run")
                    fts[m] = self.stage(seed, f"finetune-{m}-{task}", settings, [pre[m]], command,
                                        lambda f, r, m=m, task=task: self._finetune(pre[m], task, seed, f, r), (i, total))
                for m in MODELS:
                    i += 1
                    lengths = [sc.ft_len, 2 * sc.ft_len]
                    settings = {"lengths": lengths, "n": sc.eval_n, "seed": seed, "yarn_len": 4 * sc.ft_len,
                                "format": RESULT_FORMAT}
                    command = (f"metatokens evaluate --checkpoint {{finetune-{m}-{task}}}/run --task {task} "
                               f"--lengths {','.join(map(str, lengths))} --n {sc.eval_n} --seed {seed} --skip-unfit"
                               + (f"; and --lengths {4 * sc.ft_len} --yarn-scale {4 * sc.ft_len / windows[m]:g}"
                                  if m == "meta-rope" else ""))
                    res["eval"][(m, task)] = self.stage(
                        seed, f"evaluate-{m}-{task}", settings, [fts[m]], command,
                        lambda f, r, m=m, task=task: self._evaluate(fts[m], m, task, seed, f), (i, total)).result
                for m in ("meta-ape", "meta-rope"):
                    i += 1
                    settings = {"length": sc.ft_len, "n": sc.eval_n, "seed": seed, "format": RESULT_FORMAT}
                    command = (f"metatokens analyze ablate --checkpoint {{finetune-{m}-{task}}}/run --task {task} "
                               f"--lengths {sc.ft_len} --n {sc.eval_n} --seed {seed}")
                    res["ablate"][(m, task)] = self.stage(
                        seed, f"ablate-{m}-{task}", settings, [fts[m]], command,
                        lambda f, r, m=m, task=task: self._ablate(fts[m], task, seed, f), (i, total)).result
                if task == "list_recall":
                    ft_lr = fts["meta-rope"]
                    for analysis in ("entropy", "residual", "rate-distortion"):
                        i += 1
                        settings = {"analysis": analysis, "length": sc.ft_len, "n": sc.analysis_n, "seed": seed,
                                    "epochs": sc.rd_epochs}
                        command = (f"metatokens analyze {analysis} --checkpoint {{finetune-meta-rope-list_recall}}/run "
                                   f"--task list_recall --length {sc.ft_len} --n {sc.analysis_n} --seed {seed}")
                        res["analysis"][analysis] = self.stage(
                            seed, f"analyze-{analysis}", settings, [ft_lr], command,
                            lambda f, r, a=analysis: self._analyze(ft_lr, a, seed, f), (i, total)).result
            results.append(res)
        return self.write_report(results)

    # ------------------------------------------------------------------------- stage bodies

    def _pretrain(self, cfg, folder: Path, resume: bool) -> dict[str, Any]:
        import torch

        gpus = torch.cuda.device_count() if self.device in ("auto", "cuda") else 0
        run = folder / "run"
        if gpus > 1 and "WORLD_SIZE" not in os.environ:
            cfg_file = folder / "config.yaml"
            import yaml

            atomic_write_text(cfg_file, yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "name"}))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "-m", "metatokens", "pretrain", "--config", str(cfg_file), "--out", str(run)]
            subprocess.run(cmd + (["--resume"] if resume else []), check=True)
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            summary = {k: v for r in rows for k, v in r.items()}
        else:
            from .pretrain import run_pretrain

            summary = run_pretrain(cfg, run, resume=resume, progress=self.progress)
        info = json.loads((run / "run.json").read_text())
        return {"run": str(run), "params": info["params"], "step": summary.get("step"),
                "val_loss": summary.get("val_loss"), "val_bpb": summary.get("val_bpb"),
                "train_tokens": info["data"]["train_tokens"]}

    def _finetune(self, pre: StageRecord, task: str, seed: int, folder: Path, resume: bool) -> dict[str, Any]:
        from .finetune import TaskSpec, make_train_config, run_finetune

        sc = self.scale
        spec = TaskSpec(task=task, max_len=sc.ft_len, difficulty=sc.difficulty, seed=seed,
                        eval_n=min(16, sc.eval_n))  # the run's own held-out check; the evaluate stage is the real one
        train = make_train_config(max_steps=sc.ft_steps, batch_size=sc.ft_batch, lr=sc.ft_lr, min_lr=sc.ft_lr / 10,
                                  warmup_steps=max(1, sc.ft_steps // 10), eval_interval=0,
                                  ckpt_interval=max(1, sc.ft_steps // 3), seed=seed, device=self.device,
                                  log_interval=max(1, sc.ft_steps // 20))
        summary = run_finetune(spec, train, folder / "run", init=None if resume else pre.result["run"],
                               resume=resume, progress=self.progress)
        return {"run": str(folder / "run"), "train_loss": summary.get("train_loss")}

    def _load(self, ft: StageRecord):
        from .evaluate import load_model

        return load_model(ft.result["run"], device=self._device())

    def _device(self) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device

    def _evaluate(self, ft: StageRecord, m: str, task: str, seed: int, folder: Path) -> dict[str, Any]:
        from .evaluate import evaluate_task, write_report

        sc = self.scale
        loaded = self._load(ft)
        loaded.name = MODELS[m]
        result = evaluate_task([loaded], task, [sc.ft_len, 2 * sc.ft_len], n=sc.eval_n, seed=seed, skip_unfit=True,
                               device=self._device(), progress=self.progress)
        write_report(result, folder, stem=task)
        rows = {str(r["length"]): r for r in result["models"][0]["results"]}
        out = {metric: {k: r.get(metric) for k, r in rows.items()} for metric in EVAL_METRICS}
        out["files"] = [f"{task}.md", f"{task}.png"]
        if m == "meta-rope":  # beyond the pre-training window: YaRN (applied in place), as the paper does at 4k -> 8k
            scale = 4 * sc.ft_len / loaded.model.config.block_size  # 4L over the pre-training window
            loaded.name = MODELS[m] + (f" + YaRN x{scale:g}" if scale > 1 else f" at {4 * sc.ft_len} (fits, no YaRN)")
            yarn = evaluate_task([loaded], task, [4 * sc.ft_len], n=sc.eval_n, seed=seed,
                                 yarn_scale=scale if scale > 1 else None, device=self._device(), progress=self.progress)
            write_report(yarn, folder, stem=f"{task}-yarn")
            for metric in EVAL_METRICS:
                out[metric][f"{4 * sc.ft_len}+yarn"] = yarn["models"][0]["results"][0].get(metric)
            out["yarn_scale"] = yarn["yarn_scale"]
        return out

    def _ablate(self, ft: StageRecord, task: str, seed: int, folder: Path) -> dict[str, Any]:
        from .analysis import ablation_study, markdown_table, plot_ablation
        from .analysis.common import load_for_analysis, write_json

        model, tok, _ = load_for_analysis(ft.result["run"], self._device())  # as `metatokens analyze` loads
        result = ablation_study(model, tok, [task], [self.scale.ft_len], n=self.scale.eval_n,
                                seed=seed, difficulty=self.scale.difficulty, progress=self.progress)
        write_json(folder / "ablate.json", result)
        atomic_write_text(folder / "ablate.md", markdown_table(result))
        plot_ablation(result, folder / "ablate.png", title=f"{task}")
        row = result["rows"][0]
        return {name: {metric: row[name].get(metric) for metric in EVAL_METRICS} for name in result["variants"]}

    def _analyze(self, ft: StageRecord, analysis: str, seed: int, folder: Path) -> dict[str, Any]:
        from . import analysis as an
        from .analysis.common import load_for_analysis, write_json
        from .tasks import make_examples

        sc = self.scale
        model, tok, _ = load_for_analysis(ft.result["run"], self._device())  # as `metatokens analyze` loads

        def examples(n: int, split: str = "test", s: int = seed):
            return make_examples("list_recall", tok, length=sc.ft_len, difficulty=sc.difficulty, n=n, seed=s, split=split)

        if analysis == "entropy":
            result = an.entropy_analysis(model, examples(sc.analysis_n), progress=self.progress)
            an.plot_entropy(result, folder / "entropy.png", title="Meta+RoPE, list recall")
            headline = {"entropy_difference": result["entropy_difference"], "max_logit_boost": result["max_logit_boost"]}
        elif analysis == "residual":
            result = an.residual_analysis(model, tok, examples(sc.analysis_n), progress=self.progress)
            an.plot_residual(result, folder / "residual.png", title="Meta+RoPE, list recall")
            headline = {}
        else:
            result = an.rate_distortion_analysis(model, examples(sc.analysis_n, "train"), examples(sc.analysis_n),
                                                 epochs=sc.rd_epochs, seed=seed, progress=self.progress)
            an.plot_rate_distortion(result, folder / "rate_distortion.png", title="VIB probe, list recall")
            headline = {"curves": result["curves"]}
        write_json(folder / f"{analysis}.json", result)
        return headline

    # ------------------------------------------------------------------------- the report

    def write_report(self, results: list[dict[str, Any]]) -> Path:
        from .report import render_report

        text = render_report(self, results)
        path = self.out / "REPORT.md"
        atomic_write_text(path, text)
        return path


def environment() -> dict[str, str]:
    import numpy
    import torch

    env = {"metatokens": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform(), "cpus": str(os.cpu_count())}
    for name in ("tokenizers", "transformers", "safetensors"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        env["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return env

