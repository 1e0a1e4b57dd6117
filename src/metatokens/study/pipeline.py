"""`metatokens reproduce`: the whole study, from corpus to REPORT.md beside the paper's numbers.

Stages of one seed (see `metatokens.study.design` for the models):

1. ``pretrain-M``: pre-train each pre-trained model M on the built-in corpus;
2. ``finetune-M``: one fine-tune per model on a mixture of the four tasks at length L (the same
   examples for every model; held-out learning curves per task). Models not pre-trained start
   from a random initialisation with the pre-trained models' tokenizer;
3. ``evaluate-M``: the four tasks at L and 2L (and 4L with YaRN for RoPE models, beyond the
   pre-training window), on the same test prompts for every model; meta models also with their
   meta-tokens removed from the prompts. Per-prompt results are kept, so that models can be
   compared prompt by prompt (`metatokens.study.stats`);
4. ``ablate-M`` for the paper's meta models: the meta-token's position or embedding zeroed;
5. ``analyze-*``: attention entropy, residual stream and rate-distortion of Meta+RoPE on List Recall.

Every stage is cached in OUT/stages/seed<S>/<name>/stage.json with a key hashed from its
settings and from its inputs' keys: a re-run skips finished stages, continues an interrupted
training stage from its last checkpoint, and re-runs only what a changed setting reaches. The
report is rendered from the stage.json files alone, so those small files are the study's whole
evidence: a later invocation (``--seed 2``, say, on another day) adds a seed, and the report
merges every seed that is complete.

With ``--jobs N`` (default: 2 on a CPU with two or more cores) independent stages run in parallel
processes, each with its share of the cores (`metatokens reproduce --stage` runs one stage).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text, json_sha256
from .design import EVAL_METRICS, PAPER_MODELS, RESULT_FORMAT, SCALES, Scale
from ..errors import StudyError


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


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def early_first(todo: list[tuple[int, StageSpec]], scale: Scale) -> list[tuple[int, StageSpec]]:
    """The order in which parallel stages are taken: the plan's, except that each seed's first fine-tune of
    a model that is not pre-trained goes before the pre-trainings (it starts as soon as its tokenizer
    exists). With two workers this ends them closer together: replaying tiny seed 0's stage times,
    58.1 minutes instead of 60.2, and 58.2 against 60.4 on average with every time jittered by 10%
    (docs/study.md). Which stage runs when changes no result."""
    order = list(todo)
    for seed in dict.fromkeys(spec.seed for _, spec in todo):
        early = next((item for item in order if item[1].seed == seed and item[1].name.startswith("finetune-")
                      and not scale.models[item[1].name.removeprefix("finetune-")].pretrained), None)
        if early is not None:
            first = next(i for i, item in enumerate(order) if item[1].seed == seed)
            order.remove(early)
            order.insert(first, early)
    return order


def default_jobs(device: str) -> int:
    """Parallel stage processes: 2 on a CPU with two or more cores (two one-thread processes beat one
    two-thread process on small models), 1 on a GPU."""
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu else max(1, min(2, usable_cpus()))


@dataclass
class Pipeline:
    out: Path
    scale_name: str
    seeds: int = 1
    device: str = "auto"
    progress: bool = True
    jobs: int = 1
    log: Callable[[str], None] = print
    records: list[StageRecord] = field(default_factory=list)

    @property
    def scale(self) -> Scale:
        return SCALES[self.scale_name]

    # ------------------------------------------------------------------------- the plan

    def plan(self, seed: int) -> list[StageSpec]:
        """Every stage of one seed, in an order that starts the long ones first; keys filled in."""
        from ..runconfig import load_run_config

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

    # ------------------------------------------------------------------------- running stages

    def folder(self, spec: StageSpec) -> Path:
        return self.out / "stages" / f"seed{spec.seed}" / spec.name

    def finished(self, spec: StageSpec) -> StageRecord | None:
        """The stage's record if it has finished with the current key."""
        marker = self.folder(spec) / "stage.json"
        if not marker.is_file():
            return None
        try:
            saved = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if saved.get("key") != spec.key:
            return None
        return StageRecord(spec.full_name, spec.key, saved["result"], saved["wall_s"], spec.command, cached=True)

    def execute(self, spec: StageSpec, done: dict[str, StageRecord]) -> StageRecord:
        """Run one stage here (its inputs must have finished) and record it."""
        missing = [i for i in spec.inputs if i not in done]
        if missing:
            raise StudyError(f"{spec.full_name} needs {', '.join(missing)} first")
        folder = self.folder(spec)
        resume = False
        if folder.exists():
            previous = folder / "key"
            if previous.is_file() and previous.read_text().strip() == spec.key:
                resume = (folder / "run" / "checkpoints" / "LATEST").is_file()  # interrupted: continue
            else:
                shutil.rmtree(folder)  # this stage's own folder, from other settings: start over
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "key", spec.key + "\n")
        t0 = time.perf_counter()
        result = spec.body(folder, resume, {i: done[i] for i in spec.inputs})
        wall = time.perf_counter() - t0
        atomic_write_text(folder / "stage.json", json.dumps(
            {"key": spec.key, "settings": spec.settings, "result": result, "wall_s": wall, "command": spec.command},
            indent=1, default=str) + "\n")
        return StageRecord(spec.full_name, spec.key, result, wall, spec.command)

    def run(self, only_seeds: list[int] | None = None) -> Path:
        """Run the stages of `only_seeds` (default: every seed of the study), then write the report
        from every seed whose stages have all finished."""
        seeds = list(range(self.seeds)) if only_seeds is None else only_seeds
        bad = [s for s in seeds if not 0 <= s < self.seeds]
        if bad:
            raise StudyError(f"seed {bad[0]} is outside the study's seeds 0..{self.seeds - 1} (raise --seeds)")
        specs = [s for seed in seeds for s in self.plan(seed)]
        t0 = time.perf_counter()
        self._run_specs(specs)
        wall = time.perf_counter() - t0
        self._log_invocation(seeds, wall)
        return self.write_report()

    def _log_invocation(self, seeds: list[int], wall: float) -> None:
        """Append this invocation's wall-clock time (and machine) to stages/seed<S>/seed.json of every
        seed that had a stage run now; the report shows each seed's invocations."""
        from .report import environment

        ran = {}
        for r in self.records:
            if not r.cached:
                ran.setdefault(int(r.name.split("/")[0].removeprefix("seed")), []).append(r.name)
        for seed in seeds:
            if seed not in ran:
                continue
            path = self.out / "stages" / f"seed{seed}" / "seed.json"
            try:
                log = json.loads(path.read_text()) if path.is_file() else {}
            except json.JSONDecodeError:
                log = {}
            log.setdefault("invocations", []).append(
                {"wall_s": wall, "seeds_run_together": [s for s in seeds if s in ran], "stages_run": len(ran[seed]),
                 "jobs": self.jobs, "cpus": usable_cpus(), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "environment": environment()})
            atomic_write_text(path, json.dumps(log, indent=1) + "\n")

    def _run_specs(self, specs: list[StageSpec]) -> None:
        done: dict[tuple[int, str], StageRecord] = {}
        todo = []
        for i, spec in enumerate(specs, 1):
            rec = self.finished(spec)
            if rec is not None:
                done[spec.seed, spec.name] = rec
                self.records.append(rec)
                self.log(f"[{i}/{len(specs)}] {spec.full_name}: cached ({rec.wall_s:.0f} s when run)")
            else:
                todo.append((i, spec))
        if self.jobs <= 1:
            for i, spec in todo:
                self.log(f"[{i}/{len(specs)}] {spec.full_name}: running: {spec.command}")
                rec = self.execute(spec, {n: r for (s, n), r in done.items() if s == spec.seed})
                done[spec.seed, spec.name] = rec
                self.records.append(rec)
                self.log(f"[{i}/{len(specs)}] {spec.full_name}: done in {rec.wall_s:.0f} s")
            return
        self._run_parallel(todo, done, len(specs))

    def _run_parallel(self, todo: list[tuple[int, StageSpec]], done: dict, total: int) -> None:
        """Up to `jobs` stages at once, each in its own `metatokens reproduce --stage` process."""
        threads = max(1, usable_cpus() // self.jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        running: dict[str, tuple[subprocess.Popen, int, StageSpec, float, Any]] = {}
        failed: list[str] = []
        pending = early_first(todo, self.scale)
        try:
            while pending or running:
                if not failed:
                    for item in list(pending):
                        if len(running) >= self.jobs:
                            break
                        i, spec = item
                        if all((spec.seed, n) in done for n in spec.inputs):
                            pending.remove(item)
                            folder = self.folder(spec)
                            folder.parent.mkdir(parents=True, exist_ok=True)
                            log_path = folder.parent / f"{spec.name}.log"
                            log_file = open(log_path, "w")
                            cmd = [sys.executable, "-m", "metatokens", "reproduce", "--scale", self.scale_name,
                                   "--out", str(self.out), "--seeds", str(self.seeds), "--device", self.device,
                                   "--no-progress", "--stage", spec.full_name]
                            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                                    stdin=subprocess.DEVNULL)
                            running[spec.full_name] = (proc, i, spec, time.perf_counter(), log_file)
                            self.log(f"[{i}/{total}] {spec.full_name}: running ({threads} thread(s), log {log_path}): "
                                     f"{spec.command}")
                elif not running:
                    break
                if not running:
                    if pending:
                        raise StudyError(f"{pending[0][1].full_name} waits for a stage that is not in this run")
                    break
                time.sleep(0.5)
                for name, (proc, i, spec, t0, log_file) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log_file.close()
                    del running[name]
                    rec = self.finished(spec)
                    if proc.returncode != 0 or rec is None:
                        tail = _last_line(Path(log_file.name))
                        failed.append(f"{name} failed (exit {proc.returncode}): {tail} (log {log_file.name})")
                        self.log(f"[{i}/{total}] {failed[-1]}")
                        continue
                    rec.cached = False
                    done[spec.seed, spec.name] = rec
                    self.records.append(rec)
                    self.log(f"[{i}/{total}] {name}: done in {rec.wall_s:.0f} s")
        finally:
            for proc, *_ in running.values():  # interrupted: stop the stages still running, and wait for them
                proc.terminate()
            for proc, *_ in running.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if failed:
            raise StudyError(failed[0] + (f"; {len(failed) - 1} more failed" if len(failed) > 1 else ""))

    def run_stage(self, full_name: str) -> StageRecord:
        """`metatokens reproduce --stage seed<S>/<name>`: one stage, in this process; its inputs must
        have finished."""
        seed_part, _, name = full_name.partition("/")
        try:
            seed = int(seed_part.removeprefix("seed"))
        except ValueError:
            raise StudyError(f"--stage must look like seed0/finetune-meta-rope, got {full_name!r}") from None
        specs = {s.name: s for s in self.plan(seed)}
        if name not in specs:
            raise StudyError(f"no stage {name!r} in seed {seed}; stages: {', '.join(specs)}")
        done = {}
        for dep in specs[name].inputs:
            rec = self.finished(specs[dep])
            if rec is None:
                raise StudyError(f"{full_name} needs seed{seed}/{dep} to have finished first")
            done[dep] = rec
        rec = self.finished(specs[name])
        return rec if rec is not None else self.execute(specs[name], done)

    # ------------------------------------------------------------------------- stage bodies

    def _pretrain(self, cfg, folder: Path, resume: bool) -> dict[str, Any]:
        import torch

        gpus = torch.cuda.device_count() if self.device in ("auto", "cuda") else 0
        run = folder / "run"
        if gpus > 1 and "WORLD_SIZE" not in os.environ:
            import yaml

            cfg_file = folder / "config.yaml"
            atomic_write_text(cfg_file, yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "name"}))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "-m", "metatokens", "pretrain", "--config", str(cfg_file), "--out", str(run)]
            subprocess.run(cmd + (["--resume"] if resume else []), check=True)
            rows = _metrics(run)
            summary = {k: v for r in rows for k, v in r.items()}
        else:
            from ..pretrain import run_pretrain

            summary = run_pretrain(cfg, run, resume=resume, progress=self.progress)
        info = json.loads((run / "run.json").read_text())
        rows = _metrics(run)
        return {"run": self._rel(run), "params": info["params"], "step": summary.get("step"),
                "val_loss": summary.get("val_loss"), "val_bpb": summary.get("val_bpb"),
                "train_tokens": info["data"]["train_tokens"],
                "curve": {"train": [[r["step"], r["train_loss"]] for r in rows if "train_loss" in r],
                          "val": [[r["step"], r["val_loss"]] for r in rows if "val_loss" in r]}}

    def _finetune(self, m: str, seed: int, folder: Path, resume: bool, inputs: dict[str, StageRecord]) -> dict[str, Any]:
        from ..finetune import TaskSpec, make_train_config, run_finetune

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
        rows = _metrics(run)
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
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device

    def _evaluate(self, m: str, seed: int, folder: Path, inputs: dict[str, StageRecord],
                  yarn: float | None) -> dict[str, Any]:
        from ..evaluate import answer_baselines, evaluate_task, write_report
        from ..loading import load_model
        from ..model.yarn import apply_yarn

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
        from ..tasks.registry import make_examples

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
        from ..analysis.ablate import ablation_study, markdown_table, plot_ablation
        from ..analysis.common import load_for_analysis, write_json

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
        from .. import analysis as an
        from ..analysis.common import load_for_analysis, write_json
        from ..tasks.registry import make_examples

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

    # ------------------------------------------------------------------------- the report

    def complete_seeds(self) -> dict[int, dict[str, StageRecord]]:
        """Every seed of 0..seeds-1 whose stages have all finished, with its records by stage name."""
        out = {}
        for seed in range(self.seeds):
            records = {}
            for spec in self.plan(seed):
                rec = self.finished(spec)
                if rec is None:
                    break
                records[spec.name] = rec
            else:
                out[seed] = records
        return out

    def write_report(self) -> Path:
        from .report import StudyResults, render_report

        seeds = self.complete_seeds()
        if not seeds:
            raise StudyError(f"no seed of the study has finished all its stages in {self.out}; nothing to report")
        run_now = {r.name for r in self.records if not r.cached}
        for records in seeds.values():
            for rec in records.values():
                rec.cached = rec.name not in run_now
        results = StudyResults(out=self.out, scale_name=self.scale_name, scale=self.scale, seeds=seeds,
                               requested_seeds=self.seeds)
        path = self.out / "REPORT.md"
        atomic_write_text(path, render_report(results))
        return path


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
    return rows


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
