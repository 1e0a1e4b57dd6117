"""`metatokens reproduce`: the whole study, from corpus to REPORT.md beside the paper's numbers.

Stages of one seed (`metatokens.study.plan`; the models are in `metatokens.study.design`):

1. ``pretrain-M``: pre-train each pre-trained model M on the built-in corpus;
2. ``finetune-M``: one fine-tune per model on a mixture of the tasks at length L, at the model's
   frozen learning rate (the same examples for every model; learning curves on dev prompts).
   Models not pre-trained start from a random initialisation with the pre-trained models' tokenizer;
3. ``yarn-M`` for Meta+RoPE and GPT-2 (RoPE): the paper's YaRN protocol (YaRN on, fine-tuned at
   L_y past the pre-training window, tested at L_y and 2 L_y);
4. ``evaluate-M``: the tasks at L, 1.5L, 2L, ... (where they fit the window), and 4L with YaRN
   switched on at test time only for RoPE models (exploratory), on the same test prompts for every
   model; meta models also with their meta-tokens removed from the prompts. Per-prompt results
   are kept, so that models can be compared prompt by prompt (`metatokens.stats`);
5. ``ablate-M`` for the paper's meta models: the meta-token's position or embedding zeroed;
6. ``analyze-*``: attention entropy, residual stream and rate-distortion of Meta+RoPE on List Recall.

With ``--tune`` the same machinery runs the learning-rate grid on dev prompts instead
(`plan.plan_tuning`) and writes the grid's report (`metatokens.study.tuning`).

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

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import StudyError
from ..fileio import atomic_write_text
from .demo import render_demo
from .memory import render_memory
from .design import SCALES, Scale
from .plan import Plan
from .report import render_report
from .results import StudyResults, environment
from .stages import StageRecord, Stages, StageSpec, _last_line
from .tuning import render_tuning


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
                      and item[1].name.removeprefix("finetune-") in scale.models
                      and not scale.models[item[1].name.removeprefix("finetune-")].pretrained), None)
        if early is not None:
            first = next(i for i, item in enumerate(order) if item[1].seed == seed)
            order.remove(early)
            order.insert(first, early)
    return order


def ended_by_sigint(returncode: int | None) -> bool:
    """Whether a stage process ended because of SIGINT: killed by it (-2), or it caught the Ctrl-C and
    exited 130 as `metatokens` does (a training stage after saving a checkpoint)."""
    return returncode in (-signal.SIGINT, 128 + signal.SIGINT)


def default_jobs(device: str) -> int:
    """Parallel stage processes: 2 on a CPU with two or more cores (two one-thread processes beat one
    two-thread process on small models), 1 on a GPU."""
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu else max(1, min(2, usable_cpus()))


@dataclass
class Pipeline(Plan, Stages):
    out: Path
    scale_name: str
    seeds: int = 1
    device: str = "auto"
    progress: bool = True
    jobs: int = 1
    log: Callable[[str], None] = print
    records: list[StageRecord] = field(default_factory=list)
    tune: bool = False  # the learning-rate grid on dev prompts (plan.plan_tuning) instead of the study
    memory: bool = False  # the windowed-attention memory measurement (plan.plan_memory) instead of the study

    @property
    def scale(self) -> Scale:
        return SCALES[self.scale_name]

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
        interrupted = False
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
                                   "--no-progress", "--stage", spec.full_name] + (["--tune"] if self.tune else []) + (
                                       ["--memory"] if self.memory else [])
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
                    if ended_by_sigint(proc.returncode):  # a Ctrl-C reached the stage: this command stops too
                        raise KeyboardInterrupt(f"interrupted: {name} was stopped by SIGINT; the stages that finished "
                                                "are kept, and the same command continues from there")
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
        except KeyboardInterrupt:
            # The stages still running most likely had the same Ctrl-C: a few seconds to save and end by
            # themselves (a second signal would stop a training stage at once), then a SIGINT of their own.
            interrupted = True
            deadline = time.monotonic() + 5
            for proc, *_ in running.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            raise
        finally:
            for proc, *_ in running.values():  # stop the stages still running, and wait for them
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT if interrupted else signal.SIGTERM)
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
        seeds = self.complete_seeds()
        if not seeds:
            raise StudyError(f"no seed of the study has finished all its stages in {self.out}; nothing to report")
        run_now = {r.name for r in self.records if not r.cached}
        for records in seeds.values():
            for rec in records.values():
                rec.cached = rec.name not in run_now
        results = StudyResults(out=self.out, scale_name=self.scale_name, scale=self.scale, seeds=seeds,
                               requested_seeds=self.seeds, seed_values={s: self.seed_value(s) for s in seeds})
        path = self.out / "REPORT.md"
        render = (render_tuning if self.tune else render_memory if self.memory else render_demo if self.scale.demo
                  else render_report)
        atomic_write_text(path, render(results))
        return path


